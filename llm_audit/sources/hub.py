"""Hugging Face Hub ids, resolved through `huggingface_hub` (its cache, revisions, offline mode).

Only the weights (`*.safetensors`, and `*.bin` when the user opted in to pickles), their index and
`config.json` are fetched: never tokenizers, never code. The resolved commit is recorded.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from llm_audit.errors import ConfigError, LlmAuditError, SourceNotFoundError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
SAFE_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "adapter_config.json",
]
PICKLE_PATTERNS = ["*.bin", "pytorch_model.bin.index.json"]
# huggingface_hub resumes a dropped download itself, but answers a 5xx on a file at once; we retry
# the whole snapshot on those statuses. Completed files stay cached, so a retry resumes.
TRIES = 4
BACKOFF_S = 0.5  # waits 0.5, 1, 2 s between the tries
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A server that drips one byte a second never trips the client's read timeout (10 s between
# bytes, HF_HUB_DOWNLOAD_TIMEOUT): each download (a snapshot or a file, all its tries) must end
# within this many seconds, LLM_AUDIT_HUB_DEADLINE to change it; a 10 GB shard at 10 MB/s
# takes 17 minutes.
DEADLINE_ENV = "LLM_AUDIT_HUB_DEADLINE"
DEFAULT_DEADLINE_S = 3600.0
# Set when a download was abandoned at its deadline: the client's own worker threads, which the
# interpreter joins at exit, are still waiting on the server, so the CLI ends the process at once.
abandoned = False


def looks_like_hub_id(spec: str) -> bool:
    """`org/name` as the Hub names repos: parts of at most 96 characters, no `..` or `--`, none
    starting or ending with `.` or `-` (what huggingface_hub would otherwise refuse with a
    traceback-shaped error)."""
    parts = spec.split("/")
    return (
        bool(HUB_ID.match(spec))
        and not spec.endswith((".safetensors", ".bin", ".json"))
        and all(
            len(p) <= 96
            and ".." not in p
            and "--" not in p
            and not p.endswith((".", "-"))
            and not p.startswith((".", "-"))
            for p in parts
        )
    )


def download(repo_id: str, *, revision: str | None, allow_pickle: bool) -> tuple[Path, str]:
    """The local snapshot folder of `repo_id` at `revision`, and the commit it resolved to.

    Transient failures are retried `TRIES` times with exponential backoff; then, as for a missing
    repo or revision, `SourceNotFoundError` is raised with a one-line reason.
    """
    from huggingface_hub import snapshot_download

    patterns = SAFE_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    with hub_errors(repo_id, revision):
        folder = Path(
            _within_deadline(
                repo_id,
                lambda: _retrying(
                    lambda: snapshot_download(
                        repo_id, revision=revision, allow_patterns=patterns, repo_type="model"
                    )
                ),
            )
        )
    return folder, folder.name


def download_file(repo_id: str, filename: str, *, revision: str) -> str:
    """One file of a Hub repo through the cache (retried like `download`), its local path."""
    from huggingface_hub import hf_hub_download

    with hub_errors(repo_id, revision):
        fetch = lambda: hf_hub_download(repo_id, filename, revision=revision)  # noqa: E731
        return _within_deadline(repo_id, lambda: _retrying(fetch))


def deadline_s() -> float:
    """The deadline of one download, from `LLM_AUDIT_HUB_DEADLINE` (seconds), else the default."""
    text = os.environ.get(DEADLINE_ENV, "")
    try:
        value = float(text) if text else DEFAULT_DEADLINE_S
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{DEADLINE_ENV}={text!r} is not a number of seconds above 0")
    return value


def _within_deadline(repo_id: str, call: Callable[[], str]) -> str:
    """`call()`, on a thread of its own, given `deadline_s()` seconds: past them the download is
    abandoned (the thread dies with the process), its `.incomplete` files are removed, and
    `SourceNotFoundError` says so."""
    seconds = deadline_s()
    done: list[str] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(call())
        except BaseException as exc:  # raised again on the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=run, name="llm-audit-hub", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        global abandoned
        abandoned = True
        remove_incomplete(repo_id)
        raise SourceNotFoundError(
            f"the Hub did not deliver within {seconds:g} s (the server is too slow or stalled); "
            f"try again later, or give it longer with {DEADLINE_ENV}=SECONDS",
            path=repo_id,
        )
    if failed:
        remove_incomplete(repo_id)
        raise failed[0]
    return done[0]


def remove_incomplete(repo_id: str) -> None:
    """Delete the partial downloads (`blobs/*.incomplete`) of `repo_id` in the Hub cache."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    blobs = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    for partial in (blobs / "blobs").glob("*.incomplete"):
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line `SourceNotFoundError`s naming the repo."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except LlmAuditError:  # ours already (a deadline): one line as it is
        raise
    except HFValidationError:
        raise SourceNotFoundError(
            "not a valid Hub id or revision (org/name, at most 96 characters each); check it",
            path=repo_id[:300],
        ) from None
    except RevisionNotFoundError:
        raise SourceNotFoundError(
            f"revision {revision!r} does not exist; check the branch, tag or commit", path=repo_id
        ) from None
    except RepositoryNotFoundError:
        raise SourceNotFoundError(
            "no such local path, and no such model on the Hub (if private, set HF_TOKEN); "
            "check the name",
            path=repo_id,
        ) from None
    except LocalEntryNotFoundError as exc:
        raise SourceNotFoundError(_not_reached(exc), path=repo_id) from None
    except EntryNotFoundError as exc:
        raise SourceNotFoundError(f"file not found in the repo ({exc})", path=repo_id) from None
    except ValueError as exc:  # the client's refusal of a repo file name such as ../../x
        if "Invalid filename" not in str(exc):
            raise
        raise SourceNotFoundError(
            "the repository lists a file whose name would leave the download folder (an "
            "absolute path or '..'), which the Hub client refuses; do not use this repository",
            path=repo_id,
        ) from None
    except Exception as exc:  # HTTP and transport errors of huggingface_hub's client, OSError
        if not _is_network_error(exc):
            raise
        raise SourceNotFoundError(
            f"cannot fetch from the Hub after {TRIES} tries ({_reason(exc)}); check the "
            "connection and run again (files already fetched stay in the cache)",
            path=repo_id,
        ) from None


def _not_reached(exc: BaseException) -> str:
    """Why the Hub gave nothing and the cache had nothing: offline by setting, a server error,
    or no network. The client raises the same exception for the three; its cause tells them
    apart."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return (
            "not in the Hugging Face cache, and the Hub is not asked because HF_HUB_OFFLINE is "
            "set; unset it to download the model, or check the name"
        )
    cause = _cause(exc)
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 500:
        return (
            f"the Hub answered HTTP {status} (a server error) and the model is not in the "
            "cache; try again later"
        )
    return (
        f"cannot reach the Hub ({_reason(cause)}) and the model is not in the cache; check the "
        "network connection (or HF_ENDPOINT), then run again"
    )


def _cause(exc: BaseException) -> BaseException:
    """The first error behind `exc` (its `__cause__`/`__context__` chain), else `exc`."""
    seen = exc
    while (nxt := seen.__cause__ or seen.__context__) is not None and nxt is not seen:
        seen = nxt
    return seen


def _reason(exc: BaseException) -> str:
    return str(exc).strip().split("\n")[0][:200] or type(exc).__name__


def _retrying(call: Callable[[], str]) -> str:
    for attempt in range(TRIES):
        try:
            return call()
        except Exception as exc:
            if attempt == TRIES - 1 or not _is_transient(exc):
                raise
            time.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


def _is_network_error(exc: Exception) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.HTTPError, OSError))


def _is_transient(exc: Exception) -> bool:
    import httpx2

    response = getattr(exc, "response", None)
    return isinstance(exc, httpx2.HTTPError) and getattr(response, "status_code", 0) in (
        TRANSIENT_STATUS
    )
