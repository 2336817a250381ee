"""The one job path: a compare sharded over two ranks, or killed and resumed, equals one run.

compare builds base, other and ΔW jobs and hands them to the same runner as scan, so what the
scan tests show for scans (test_distributed.py, test_resume.py) must hold for compares too. Runs
pin `--device cpu` (on a GPU machine `auto` is CUDA). Also: the journal is written off the
reading thread, in order, and its errors still surface.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import llm_audit
from llm_audit.analysis import Outcome
from llm_audit.config import load_config
from llm_audit.errors import ConfigError, OutputError
from llm_audit.jobs import Job
from llm_audit.journal import background_writer
from llm_audit.layers import plan_layers
from llm_audit.runner import budget, longest_first
from llm_audit.scheduler import schedule
from llm_audit.sources import TensorInfo
from tests.conftest import llama_tensors, write_shards
from tests.test_distributed import sharded_model, torchrun_two_ranks
from tests.test_resume import journaled_names, kill_after


def fine_tune(base: Path, folder: Path, *, scale: float = 0.05) -> Path:
    """The base's tensors with a seeded perturbation of every block matrix."""
    g = torch.Generator().manual_seed(7)
    tensors = llama_tensors(blocks=4, hidden=64, inter=160, vocab=300)
    tensors = {
        k: v + scale * torch.randn(v.shape, generator=g) if "layers" in k else v
        for k, v in tensors.items()
    }
    config = {"model_type": "llama", "tie_word_embeddings": False}
    return write_shards(folder, tensors, shards=2, config=config)


def layer_results(folder: Path) -> list[dict]:
    return json.loads((folder / "compare.json").read_text())["layers"]


def compare_args(base: Path, other: Path, out: Path, *, device: str | None = "cpu") -> list[str]:
    """`compare` on the CPU: on a GPU machine `auto` would compare a CPU run with a GPU one."""
    pin = ["--device", device] if device else []
    return ["compare", str(base), str(other), "--out", str(out), "--no-progress", *pin]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base = sharded_model(tmp_path / "base")
    return base, fine_tune(base, tmp_path / "tuned")


@pytest.mark.slow
def test_torchrun_compare_equals_one_process(
    tmp_path: Path, pair: tuple[Path, Path], cli: Callable[..., tuple[int, str, str]]
) -> None:
    torchrun, env = torchrun_two_ranks()
    proc = subprocess.run(
        [sys.executable, "-m", *torchrun, "-m", "llm_audit", *compare_args(*pair, tmp_path / "A")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Comparison written to") == 1  # rank 1 prints and writes nothing
    code, _, err = cli(*compare_args(*pair, tmp_path / "B"))
    assert code == 0, err
    assert layer_results(tmp_path / "A") == layer_results(tmp_path / "B")
    assert not list((tmp_path / "A").glob(".journal*"))


@pytest.mark.slow
def test_devices_compare_equals_one_process(
    tmp_path: Path, pair: tuple[Path, Path], cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, err = cli(*compare_args(*pair, tmp_path / "A", device=None), "--devices", "cpu,cpu")
    assert code == 0, err
    assert out.count("Comparison written to") == 1
    code, _, err = cli(*compare_args(*pair, tmp_path / "B"))
    assert code == 0, err
    assert layer_results(tmp_path / "A") == layer_results(tmp_path / "B")
    assert not list((tmp_path / "A").glob(".journal*"))


@pytest.mark.slow
def test_killed_compare_resumes_to_the_uninterrupted_one(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    # 40 square 512 matrices with traps, three jobs each: long enough to kill half way
    g = torch.Generator().manual_seed(3)
    base_tensors = {
        f"model.layers.{i}.mlp.up_proj.weight": torch.randn(512, 512, generator=g)
        for i in range(40)
    }
    tuned = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base_tensors.items()}
    base = write_shards(tmp_path / "base", base_tensors, shards=2)
    other = write_shards(tmp_path / "tuned", tuned, shards=2)
    out = tmp_path / "killed"
    journal = out / ".journal.jsonl"
    first = kill_after([*compare_args(base, other, out), "--traps"], journal, jobs=30)
    assert 30 <= len(first) < 120 and not (out / "compare.json").exists()

    # the API keeps its journal: no job computed twice, the finished ones not recomputed
    api_journal = tmp_path / "api.jsonl"
    api_journal.write_bytes(journal.read_bytes())
    api = llm_audit.compare(base, other, traps=True, device="cpu", journal=api_journal, resume=True)
    keys = journaled_names(api_journal)
    assert len(keys) == len(set(keys)) == 120
    assert keys[: len(first)] == first

    code, _, err = cli(*compare_args(base, other, out), "--traps", "--resume")
    assert code == 0, err
    assert not journal.exists()
    code, _, err = cli(*compare_args(base, other, tmp_path / "whole"), "--traps")
    assert code == 0, err
    assert layer_results(out) == layer_results(tmp_path / "whole")
    api.save(tmp_path / "api")
    assert layer_results(tmp_path / "api") == layer_results(out)


def test_compare_resume_refuses_other_settings(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    journal = tmp_path / "j.jsonl"
    llm_audit.compare(*pair, traps=False, journal=journal)
    with pytest.raises(ConfigError, match="seed changed"):
        llm_audit.compare(*pair, traps=False, seed=5, journal=journal, resume=True)
    with pytest.raises(ConfigError, match="layers changed"):
        llm_audit.compare(*pair, traps=False, layers="mlp", journal=journal, resume=True)


def test_compare_records_what_a_scan_records(pair: tuple[Path, Path]) -> None:
    """The same provenance and settings builder: a compare says as much about its run as a scan."""
    result = llm_audit.compare(*pair, traps=False, seed=3, estimator="median", layers="mlp")
    scanned = llm_audit.scan(pair[0], traps=False, seed=3, estimator="median", layers="mlp")
    assert set(scanned.settings) <= set(result.settings)
    assert result.settings["seed"] == 3 and result.settings["estimator"] == "median"
    assert result.settings["layers"] == "mlp"
    assert {k: v for k, v in result.base.items() if k in scanned.model} == scanned.model
    assert all("mlp" in r["name"] for r in result.records)
    base_alphas = {r["name"]: r["models"]["base"]["alpha"] for r in result.records}
    assert base_alphas == {r["name"]: r["alpha"] for r in scanned.records}


def test_budget_keeps_the_largest_matrices_apart_but_not_the_small_ones() -> None:
    layer = plan_layers([TensorInfo("model.layers.0.mlp.up_proj.weight", (8, 8), "F32")], None)[0][
        0
    ]
    jobs = [Job(str(n), layer, lambda: torch.zeros(8, 8), n, 1) for n in (100, 10, 40, 100)]
    assert budget(jobs) == 150  # 100 + 40 fit together, 100 + 100 do not
    assert budget([]) == 0


def _jobs(sizes: list[int]) -> list[Job]:
    """One job per size: a random size×size up_proj matrix, keyed by its place in the plan."""
    layer = plan_layers([TensorInfo("model.layers.0.mlp.up_proj.weight", (8, 8), "F32")], None)
    out = []
    for i, n in enumerate(sizes):
        W = torch.randn(n, n, generator=torch.Generator().manual_seed(i))
        out.append(Job(f"{i}:{n}", layer[0][0], lambda W=W: W, W.nbytes, n**3))
    return out


def test_jobs_run_longest_first_with_ties_in_plan_order() -> None:
    jobs = _jobs([8, 64, 16, 64, 8])
    assert [job.key for job in longest_first(jobs, ["cpu"])] == [
        "1:64",
        "3:64",
        "2:16",
        "0:8",
        "4:8",
    ]


def test_a_long_job_does_not_hold_back_the_short_ones_behind_it() -> None:
    """Two workers, a long job read first: the other worker goes on reading and finishing the
    short ones (at most `workers + prefetch` in flight) instead of waiting for the long one to
    be collected first."""
    jobs = _jobs([1400] + [8] * 8)
    finished: list[str] = []
    schedule(
        jobs,
        load_config(),
        device=torch.device("cpu"),
        total=len(jobs),
        workers=2,
        on_done=lambda key, _: finished.append(key),
    )
    assert finished[-1] == "0:1400"
    assert sorted(finished) == sorted(job.key for job in jobs)


class SlowJournal:
    """A journal whose every append waits for `release` (a slow fsync), recording its thread."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.release = threading.Event()
        self.written: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def append(self, key: str, outcome: Outcome) -> None:
        assert self.release.wait(10), "the writer was never released"
        if key == self.fail_on:
            raise OutputError("cannot write the resume journal (No space left on device)")
        self.written.append((key, threading.current_thread().name))


def test_journal_writes_in_order_off_the_calling_thread() -> None:
    log = SlowJournal()
    with background_writer(log) as append:  # type: ignore[arg-type]
        assert append is not None
        for key in "abc":
            append(key, Outcome({}))  # returns at once: the fsync waits on the writer
        assert log.written == []
        log.release.set()
    assert [key for key, _ in log.written] == ["a", "b", "c"]  # all written when the block ends
    assert {thread for _, thread in log.written} == {"llm-audit-journal"}
    with background_writer(None) as append:
        assert append is None


def test_journal_write_error_is_raised_as_the_journal_raised_it() -> None:
    log = SlowJournal(fail_on="b")
    log.release.set()
    with pytest.raises(OutputError, match="No space left"), background_writer(log) as append:  # type: ignore[arg-type]
        assert append is not None
        for key in "abcdefgh":
            append(key, Outcome({}))
            time.sleep(0.01)
    assert [key for key, _ in log.written] == ["a"]  # nothing after the failed write


def test_journal_keeps_what_finished_when_the_run_fails() -> None:
    log = SlowJournal()
    with pytest.raises(KeyError), background_writer(log) as append:  # type: ignore[arg-type]
        assert append is not None
        append("a", Outcome({}))
        log.release.set()
        raise KeyError("a shard broke")
    assert [key for key, _ in log.written] == ["a"]
