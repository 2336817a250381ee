"""Hugging Face Hub ids, resolved through `huggingface_hub` (its cache, revisions, offline mode).

Only the weights (`*.safetensors`, and `*.bin` when the user opted in to pickles), their index and
`config.json` are fetched: never tokenizers, never code. The resolved commit is recorded.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from llm_audit.errors import SourceNotFoundError

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
            _retrying(
                lambda: snapshot_download(
                    repo_id, revision=revision, allow_patterns=patterns, repo_type="model"
                )
            )
        )
    return folder, folder.name


def download_file(repo_id: str, filename: str, *, revision: str) -> str:
    """One file of a Hub repo through the cache (retried like `download`), its local path."""
    from huggingface_hub import hf_hub_download

    with hub_errors(repo_id, revision):
        return _retrying(lambda: hf_hub_download(repo_id, filename, revision=revision))


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
    except LocalEntryNotFoundError:
        raise SourceNotFoundError(
            "no such local path, and not in the Hugging Face cache while offline; "
            "check the name, or download the model first (unset HF_HUB_OFFLINE)",
            path=repo_id,
        ) from None
    except EntryNotFoundError as exc:
        raise SourceNotFoundError(f"file not found in the repo ({exc})", path=repo_id) from None
    except Exception as exc:  # HTTP and transport errors of huggingface_hub's client, OSError
        if not _is_network_error(exc):
            raise
        reason = str(exc).strip().split("\n")[0] or type(exc).__name__
        raise SourceNotFoundError(
            f"cannot fetch from the Hub after {TRIES} tries ({reason}); check the connection and "
            "run again (files already fetched stay in the cache)",
            path=repo_id,
        ) from None


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
