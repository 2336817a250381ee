"""The real ``huggingface_hub`` client against :class:`hub_server.HubServer`.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` when it is
imported, so the client side of every test runs in a fresh interpreter (``run_client``).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tests.hub_server import HubServer

pytestmark = pytest.mark.slow  # spawns processes

REPO = "acme/tiny-llama"
SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
ALLOWED = sorted([*SHARDS, "model.safetensors.index.json", "config.json"])
PATTERNS = ["*.safetensors", "*.json"]

_PRELUDE = """
import json
from pathlib import Path
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

def error(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except Exception as exc:
        return f"{type(exc).__module__}.{type(exc).__qualname__}"
    return None

def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())

"""


def run_client(code: str, hub: HubServer, cache: Path, *, offline: bool = False) -> Any:
    """Run ``code`` against ``hub`` in a fresh interpreter; return the JSON of its ``out``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(cache.parent / "hf_home"),
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )
    script = _PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    main = tmp_path_factory.mktemp("main")
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(SHARDS):
        tensors = {f"layers.{i}.weight": torch.full((8, 4), float(i + 1))}
        save_file(tensors, str(main / shard))
        weight_map |= dict.fromkeys(tensors, shard)
    index = {"metadata": {"total_size": 256}, "weight_map": weight_map}
    (main / "model.safetensors.index.json").write_text(json.dumps(index))
    (main / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4}))
    torch.save({"w": torch.zeros(2)}, main / "pytorch_model.bin")
    (main / "README.md").write_text("# tiny llama\n")

    v1 = tmp_path_factory.mktemp("v1")
    save_file({"w": torch.ones(3, 3)}, str(v1 / "model.safetensors"))
    (v1 / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 3}))
    return {"main": main, "v1": v1}


@pytest.fixture
def hub(folders: dict[str, Path]) -> Iterator[HubServer]:
    with HubServer({REPO: folders}) as server:
        yield server


def test_snapshot_download_fetches_only_allowed_files(
    hub: HubServer, folders: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    out = run_client(
        f"path = snapshot_download({REPO!r}, allow_patterns={PATTERNS!r})\n"
        "out = {'path': path, 'files': files(path)}",
        hub,
        cache,
    )
    snapshot = Path(out["path"])
    commit = hub.commit(REPO)
    assert len(commit) == 40
    assert snapshot == cache / "models--acme--tiny-llama" / "snapshots" / commit
    assert (cache / "models--acme--tiny-llama" / "refs" / "main").read_text() == commit
    assert out["files"] == ALLOWED
    for name in ALLOWED:
        assert (snapshot / name).read_bytes() == (folders["main"] / name).read_bytes()
    # LFS blobs are stored under their sha256, i.e. the X-Linked-Etag of the redirect.
    shard = hub.repos[REPO]["main"].files[SHARDS[0]]
    assert (snapshot / SHARDS[0]).resolve().name == shard.sha256

    assert sorted(hub.requested_files("GET")) == ALLOWED
    assert not [path for _, path in hub.requests if path.endswith((".bin", ".md"))]
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub.requests
    assert ("GET", f"/api/models/{REPO}/tree/{commit}") in hub.requests
    assert ("GET", f"/cdn/{REPO}/resolve/{commit}/{SHARDS[0]}") in hub.requests


def test_revision_and_commit_sha(hub: HubServer, folders: dict[str, Path], tmp_path: Path) -> None:
    v1 = hub.commit(REPO, "v1")
    out = run_client(
        f"by_name = snapshot_download({REPO!r}, revision='v1')\n"
        f"by_sha = snapshot_download({REPO!r}, revision={v1!r})\n"
        "out = {'by_name': by_name, 'by_sha': by_sha, 'files': files(by_name)}",
        hub,
        tmp_path / "cache",
    )
    assert Path(out["by_name"]).name == v1 != hub.commit(REPO)
    assert out["by_sha"] == out["by_name"]
    assert out["files"] == ["config.json", "model.safetensors"]
    config = Path(out["by_name"], "config.json").read_bytes()
    assert config == (folders["v1"] / "config.json").read_bytes()


def test_model_info_hf_hub_download_and_safetensors_metadata(
    hub: HubServer, tmp_path: Path
) -> None:
    out = run_client(
        f"""
        api = HfApi()
        info = api.model_info({REPO!r}, files_metadata=True)
        meta = api.get_safetensors_metadata({REPO!r})
        out = {{
            'sha': info.sha,
            'v1_sha': api.model_info({REPO!r}, revision='v1').sha,
            'siblings': {{s.rfilename: s.size for s in info.siblings}},
            'lfs': sorted(s.rfilename for s in info.siblings if s.lfs),
            'config': Path(hf_hub_download({REPO!r}, 'config.json')).read_text(),
            'weight_map': meta.weight_map,
            'shapes': {{
                n: t.shape for f in meta.files_metadata.values() for n, t in f.tensors.items()
            }},
            'exists': [api.file_exists({REPO!r}, 'config.json'), api.file_exists({REPO!r}, 'x')],
        }}
        """,
        hub,
        tmp_path / "cache",
    )
    files = hub.repos[REPO]["main"].files
    assert out["sha"] == hub.commit(REPO)
    assert out["v1_sha"] == hub.commit(REPO, "v1")
    assert out["siblings"] == {name: f.size for name, f in files.items()}
    assert out["lfs"] == [*SHARDS, "pytorch_model.bin"]
    assert json.loads(out["config"])["hidden_size"] == 4
    assert out["weight_map"] == {"layers.0.weight": SHARDS[0], "layers.1.weight": SHARDS[1]}
    assert out["shapes"] == {"layers.0.weight": [8, 4], "layers.1.weight": [8, 4]}
    assert out["exists"] == [True, False]


def test_errors_are_the_library_exceptions(hub: HubServer, tmp_path: Path) -> None:
    out = run_client(
        f"""
        out = {{
            'snapshot_repo': error(snapshot_download, 'acme/missing'),
            'snapshot_revision': error(snapshot_download, {REPO!r}, revision='nope'),
            'info_repo': error(HfApi().model_info, 'acme/missing'),
            'info_revision': error(HfApi().model_info, {REPO!r}, revision='nope'),
            'file_repo': error(hf_hub_download, 'acme/missing', 'config.json'),
            'file_revision': error(hf_hub_download, {REPO!r}, 'config.json', revision='nope'),
            'file_entry': error(hf_hub_download, {REPO!r}, 'missing.json'),
        }}
        """,
        hub,
        tmp_path / "cache",
    )
    errors = "huggingface_hub.errors."
    assert out == {
        "snapshot_repo": errors + "RepositoryNotFoundError",
        "snapshot_revision": errors + "RevisionNotFoundError",
        "info_repo": errors + "RepositoryNotFoundError",
        "info_revision": errors + "RevisionNotFoundError",
        "file_repo": errors + "RepositoryNotFoundError",
        "file_revision": errors + "RevisionNotFoundError",
        "file_entry": errors + "RemoteEntryNotFoundError",
    }


def test_offline_after_server_stops(folders: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    download = f"path = snapshot_download({REPO!r}, allow_patterns={PATTERNS!r})\n"
    with HubServer({REPO: folders}) as hub:
        online = run_client(download + "out = path", hub, cache)
    offline_code = download + textwrap.dedent(
        f"""
        out = {{
            'path': path,
            'config': Path(hf_hub_download({REPO!r}, 'config.json')).exists(),
            'uncached_repo': error(snapshot_download, 'acme/other'),
            'uncached_file': error(hf_hub_download, {REPO!r}, 'README.md'),
            'more_patterns': error(snapshot_download, {REPO!r}, allow_patterns=['*.bin']),
        }}
        """
    )
    offline = run_client(offline_code, hub, cache, offline=True)
    errors = "huggingface_hub.errors."
    assert offline == {
        "path": online,
        "config": True,
        "uncached_repo": errors + "LocalEntryNotFoundError",
        "uncached_file": errors + "LocalEntryNotFoundError",
        "more_patterns": errors + "IncompleteSnapshotError",
    }
    # Not flagged offline, but the server is gone: the client falls back to the cache too.
    assert run_client(download + "out = path", hub, cache) == online


def test_faults_status_and_dropped_connection(hub: HubServer, tmp_path: Path) -> None:
    hub.fail(f"/cdn/*/{SHARDS[0]}", drop_after=100, times=1)
    hub.fail("/api/models/acme/other*", status=500)
    out = run_client(
        f"""
        shard = hf_hub_download({REPO!r}, {SHARDS[0]!r})
        out = {{'shard': shard, 'down': error(snapshot_download, 'acme/other')}}
        """,
        hub,
        tmp_path / "cache",
    )
    # The client retries the dropped body and ends with the full file. (It resumes with a Range
    # request only after a whole 10 MiB chunk has arrived; below that it starts over.)
    shard = hub.repos[REPO]["main"].files[SHARDS[0]]
    assert Path(out["shard"]).read_bytes() == shard.path.read_bytes()
    assert hub.requested_files("GET") == [SHARDS[0], SHARDS[0]]
    assert out["down"] == "huggingface_hub.errors.LocalEntryNotFoundError"


def test_http_contract_redirects_ranges_and_error_codes(hub: HubServer) -> None:
    commit, shard = hub.commit(REPO), hub.repos[REPO]["main"].files[SHARDS[0]]
    data = shard.path.read_bytes()
    conn = http.client.HTTPConnection(hub.endpoint.removeprefix("http://"), timeout=10)

    def call(method: str, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, dict(response.headers), body

    status, headers, _ = call("HEAD", f"/{REPO}/resolve/main/{SHARDS[0]}")
    assert status == 302
    assert headers["X-Repo-Commit"] == commit
    assert headers["X-Linked-Etag"] == f'"{shard.sha256}"'
    assert headers["X-Linked-Size"] == str(len(data))
    assert headers["Location"].startswith(hub.cdn_endpoint + "/cdn/")

    cdn = f"/cdn/{REPO}/resolve/{commit}/{SHARDS[0]}"
    for value, start, end in [("bytes=2-5", 2, 5), ("bytes=-4", len(data) - 4, len(data) - 1)]:
        status, headers, body = call("GET", cdn, Range=value)
        assert (status, body) == (206, data[start : end + 1])
        assert headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert call("GET", cdn, Range="bytes=10-")[2] == data[10:]
    assert call("GET", cdn, Range=f"bytes={len(data)}-")[0] == 416

    status, headers, _ = call("HEAD", f"/{REPO}/resolve/main/config.json")
    assert (status, headers["X-Repo-Commit"]) == (200, commit)
    assert headers["ETag"].strip('"') == hub.repos[REPO]["main"].files["config.json"].git_oid
    for path, code in [
        ("/acme/missing/resolve/main/config.json", "RepoNotFound"),
        (f"/{REPO}/resolve/nope/config.json", "RevisionNotFound"),
        (f"/{REPO}/resolve/main/missing.json", "EntryNotFound"),
    ]:
        status, headers, _ = call("HEAD", path)
        assert (status, headers["X-Error-Code"]) == (404, code)
