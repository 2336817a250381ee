"""Hub ids through the real huggingface_hub: a local Hub-compatible server, then the offline cache.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported, so each scan runs the real CLI
in a fresh process with those variables set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import llama_tensors, run_cli_process, write_shards
from tests.hub_server import HubServer

pytestmark = pytest.mark.slow  # spawns processes

REPO = "acme/tiny-llama"


@pytest.fixture
def hub_repo(tmp_path: Path) -> dict[str, Path]:
    main = write_shards(
        tmp_path / "main",
        llama_tensors(seed=1),
        shards=2,
        config={"model_type": "llama", "tie_word_embeddings": False},
    )
    torch.save({"x": torch.zeros(2)}, main / "pytorch_model.bin")
    (main / "tokenizer.json").write_text("{}")
    v1 = write_shards(
        tmp_path / "v1", llama_tensors(blocks=2, seed=2), config={"model_type": "llama"}
    )
    return {"main": main, "v1": v1}


def _env(hub: HubServer, cache: Path, offline: bool = False) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(cache.parent / "home"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def test_scan_from_hub_fetches_only_weights_and_records_the_commit(
    hub_repo: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with HubServer({REPO: hub_repo}) as hub:
        code, _, err = run_cli_process(
            "scan",
            REPO,
            "--out",
            str(tmp_path / "r"),
            "--no-traps",
            "--no-progress",
            env=_env(hub, cache),
        )
        assert code == 0, err
        fetched = set(hub.requested_files())
        commit = hub.commit(REPO)
        code_v1, _, err_v1 = run_cli_process(
            "scan",
            REPO,
            "--revision",
            "v1",
            "--out",
            str(tmp_path / "r1"),
            "--no-traps",
            "--no-progress",
            env=_env(hub, cache),
        )
        assert code_v1 == 0, err_v1
        commit_v1 = hub.commit(REPO, "v1")
    assert fetched == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
    }
    audit = json.loads((tmp_path / "r" / "audit.json").read_text())
    assert audit["model"]["id"] == REPO and audit["model"]["source"] == "hub"
    assert audit["model"]["revision"] == commit
    assert audit["summary"]["num_layers"] == 3 * 7 + 2
    audit_v1 = json.loads((tmp_path / "r1" / "audit.json").read_text())
    assert audit_v1["model"]["revision"] == commit_v1 != commit
    assert audit_v1["summary"]["num_layers"] == 2 * 7 + 2

    # The server is gone: offline, the same scan comes from the cache with the same numbers.
    code, _, err = run_cli_process(
        "scan",
        REPO,
        "--out",
        str(tmp_path / "r2"),
        "--no-traps",
        "--no-progress",
        env=_env(hub, cache, offline=True),
    )
    assert code == 0, err
    offline = json.loads((tmp_path / "r2" / "audit.json").read_text())
    assert offline["model"]["revision"] == commit
    assert [r["alpha"] for r in offline["layers"]] == [r["alpha"] for r in audit["layers"]]


def test_unknown_repo_and_revision_are_one_line_errors(
    hub_repo: dict[str, Path], tmp_path: Path
) -> None:
    with HubServer({REPO: hub_repo}) as hub:
        env = _env(hub, tmp_path / "cache")
        code, _, err = run_cli_process(
            "scan", "acme/nothing", "--out", str(tmp_path / "a"), env=env
        )
        assert code == 2 and err.count("\n") == 1 and "no such model on the Hub" in err
        code, _, err = run_cli_process(
            "scan", REPO, "--revision", "nope", "--out", str(tmp_path / "b"), env=env
        )
        assert code == 2 and err.count("\n") == 1 and "revision 'nope' does not exist" in err
        code, _, err = run_cli_process(
            "scan", "acme/nothing", "--stream", "--out", str(tmp_path / "c"), env=env
        )
        assert code == 2 and err.count("\n") == 1 and "no such model on the Hub" in err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_stream_scans_shard_by_shard_and_deletes_what_it_downloaded(tmp_path: Path) -> None:
    """--stream: the same audit as a normal scan, each shard deleted after use, at most two on disk.

    The scan runs in a child process while this one watches the cache's blobs every few ms."""
    import subprocess
    import sys
    import time

    folder = write_shards(
        tmp_path / "m",
        llama_tensors(blocks=6, hidden=64, inter=128, seed=3),
        shards=6,
        config={"model_type": "llama", "tie_word_embeddings": False},
    )
    cache = tmp_path / "cache"
    with HubServer({REPO: folder}) as hub:
        env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **_env(hub, cache)}
        args = [
            sys.executable,
            "-m",
            "llm_audit",
            "scan",
            REPO,
            "--stream",
            "--no-progress",
            "--out",
            str(tmp_path / "s"),
            "--format",
            "json",
        ]
        child = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        most = 0
        while child.poll() is None:
            most = max(most, len(list(cache.glob("models--*/blobs/*"))) - 2)  # - config, index
            time.sleep(0.005)
        assert child.returncode == 0, child.stderr.read() if child.stderr else ""
        code, _, err = run_cli_process(
            "scan",
            REPO,
            "--no-progress",
            "--out",
            str(tmp_path / "n"),
            "--format",
            "json",
            env=_env(hub, tmp_path / "cache2"),
        )
        assert code == 0, err
    assert most <= 2
    assert not list(cache.glob("models--*/snapshots/*/*.safetensors"))  # all deleted again
    streamed = json.loads((tmp_path / "s" / "audit.json").read_text())
    normal = json.loads((tmp_path / "n" / "audit.json").read_text())
    assert streamed["model"]["source"] == "hub-stream"
    assert streamed["model"]["revision"] == normal["model"]["revision"]
    keys = ("name", "alpha", "D", "num_traps", "rand_num_spikes")
    assert [[r.get(k) for k in keys] for r in streamed["layers"]] == [
        [r.get(k) for k in keys] for r in normal["layers"]
    ]


def test_stream_keeps_shards_that_were_already_cached(
    hub_repo: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with HubServer({REPO: hub_repo}) as hub:
        code, _, err = run_cli_process(
            "scan",
            REPO,
            "--no-traps",
            "--no-progress",
            "--format",
            "json",
            "--out",
            str(tmp_path / "a"),
            env=_env(hub, cache),
        )
        assert code == 0, err
        code, _, err = run_cli_process(
            "scan",
            REPO,
            "--stream",
            "--no-traps",
            "--no-progress",
            "--format",
            "json",
            "--out",
            str(tmp_path / "b"),
            env=_env(hub, cache),
        )
        assert code == 0, err
    assert len(list(cache.glob("models--*/snapshots/*/*.safetensors"))) == 2


def test_stream_of_a_local_folder_is_refused(cli, tiny_llama: Path, tmp_path: Path) -> None:
    code, _, err = cli("scan", tiny_llama, "--stream", "--out", tmp_path / "x")
    assert code == 2 and "--stream applies to Hub ids only" in err


@pytest.mark.parametrize(("announced_rows", "real_rows"), [(16, 64), (64, 16)])
def test_stream_refuses_a_file_whose_header_is_not_the_announced_one(
    announced_rows: int, real_rows: int, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    name = "model.layers.0.mlp.up_proj.weight"
    real = write_shards(tmp_path / "real", {name: torch.randn(real_rows, 64, generator=g)})
    lie = tmp_path / "lie.safetensors"
    save_file({name: torch.randn(announced_rows, 64, generator=g)}, str(lie))
    out = tmp_path / "out"
    with HubServer({REPO: real}) as hub:
        hub.ranges_from["model.safetensors"] = lie
        code, _, err = run_cli_process(
            "scan", REPO, "--stream", "--no-progress", "--out", str(out),
            env=_env(hub, tmp_path / "cache"), timeout=120,
        )  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert "differs from the one the Hub announced" in err and "Traceback" not in err
    assert not out.exists()
    assert not list((tmp_path / "cache").glob("models--*/snapshots/*/model.safetensors"))


def test_a_server_error_is_not_blamed_on_offline_mode(
    hub_repo: dict[str, Path], tmp_path: Path
) -> None:
    with HubServer({REPO: hub_repo}) as hub:
        hub.fail("/api/models/*", status=500)
        code, _, err = run_cli_process(
            "scan", REPO, "--no-progress", "--out", str(tmp_path / "out"),
            env=_env(hub, tmp_path / "cache"), timeout=120,
        )  # fmt: skip
    assert code == 2, err
    last = err.splitlines()[-1]
    assert "HTTP 500" in last and "server error" in last and "HF_HUB_OFFLINE" not in last, err


def test_a_stalled_download_ends_at_the_deadline_and_leaves_no_partial_file(
    hub_repo: dict[str, Path], tmp_path: Path
) -> None:
    with HubServer({REPO: hub_repo}) as hub:
        hub.fail("/cdn/*.safetensors", delay=600)  # headers never come
        code, _, err = run_cli_process(
            "scan", REPO, "--no-progress", "--out", str(tmp_path / "out"),
            env={**_env(hub, tmp_path / "cache"), "LLM_AUDIT_HUB_DEADLINE": "3"}, timeout=120,
        )  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert "did not deliver within 3 s" in err and "LLM_AUDIT_HUB_DEADLINE" in err
    assert not list((tmp_path / "cache").rglob("*.incomplete"))
    assert not (tmp_path / "out").exists()
