"""Hugging Face Hub ids, resolved through `huggingface_hub` (its cache, revisions, offline mode).

Only the weights (`*.safetensors`, and `*.bin` when the user opted in to pickles), their index and
`config.json` are fetched: never tokenizers, never code. The resolved commit is recorded.
"""

from __future__ import annotations

import re
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


def looks_like_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not spec.endswith((".safetensors", ".bin", ".json"))


def download(repo_id: str, *, revision: str | None, allow_pickle: bool) -> tuple[Path, str]:
    """The local snapshot folder of `repo_id` at `revision`, and the commit it resolved to."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = SAFE_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns, repo_type="model"
            )
        )
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
    except (HfHubHTTPError, OSError) as exc:
        raise SourceNotFoundError(f"cannot fetch from the Hub ({exc})", path=repo_id) from None
    return folder, folder.name
