"""Calibration tasks, the phase rule, `llm-audit calibrate` and the training monitor."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import llm_audit
import tests.test_report as report_tests
from llm_audit.calibration import run
from llm_audit.calibration.mnist_mlp import MnistConfig, MnistTask
from llm_audit.calibration.monitor import AuditMonitor
from llm_audit.calibration.page import render_page
from llm_audit.calibration.phases import EXPECTED_VERDICTS, find_phases
from llm_audit.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "calibration"
HIDDEN = ("layers.0.weight", "layers.1.weight")
browser = report_tests.browser  # the headless-Chromium fixture of the scan report's tests


def _tiny_config(tmp_path: Path, **changes: object) -> Path:
    """The shipped quick MNIST config shrunk to a few dozen steps, with `changes` applied."""
    text = run.config_path("mnist", "quick").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
    values = dict(ln.split("#")[0].split(":", 1) for ln in lines)
    values |= {"steps": " 30", "num_checkpoints": " 5", "monitor_every": " 10"}
    values |= {k: f" {v}" for k, v in changes.items()}
    path = tmp_path / "tiny.yaml"
    path.write_text("".join(f"{k}:{v}\n" for k, v in values.items() if v.strip() != "DROP"))
    return path


# --- the phase rule, on synthetic curves with known answers -------------------------------------


def test_phases_memorize_grok_collapse() -> None:
    steps = [1, 10, 100, 1000, 10_000, 100_000]
    train = [0.1, 0.5, 1.0, 1.0, 1.0, 1.0]
    test = [0.1, 0.2, 0.4, 0.90, 0.88, 0.70]
    ph = find_phases(steps, train, test)
    assert (ph.memorized_step, ph.grokked_step, ph.peak_step) == (100, 1000, 1000)
    assert ph.collapse_step == 100_000 and ph.peak_test_acc == 0.90
    assert ph.labels == ("pre-grokking",) * 3 + ("grokked",) * 2 + ("collapse",)


def test_phases_no_collapse_when_train_accuracy_also_falls() -> None:
    # test accuracy falls, but so does train accuracy: divergence, not anti-grokking
    ph = find_phases([1, 2, 3], [1.0, 1.0, 0.5], [0.5, 0.9, 0.3])
    assert ph.collapse_step is None and ph.labels == ("pre-grokking", "grokked", "grokked")


def test_phases_reject_bad_curves() -> None:
    with pytest.raises(ValueError):
        find_phases([1, 2], [1.0], [1.0, 1.0])


def test_checkpoint_schedule_is_log_spaced_and_ends_at_the_last_step() -> None:
    s = run.checkpoint_schedule(100_000, 40)
    assert s[0] == 1 and s[-1] == 100_000 and s == sorted(set(s)) and 30 <= len(s) <= 40


# --- bad input: one line, exit code 2 -------------------------------------------------------------


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI; assert exit code 2 and a single line on stderr; return that line."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors exit from inside the parser
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("llm-audit: error:")
    return err


def test_a_preset_the_task_does_not_ship_names_the_ones_it_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`long64` is MNIST's: for modadd the error names modadd's presets, not a missing file
    inside the package, and no output folder is made."""
    out = tmp_path / "run"
    argv = ["calibrate", "modadd", "--config", "long64", "--out", str(out)]
    err = _one_line_error(capsys, argv)
    assert "modadd has no long64 preset; use quick, paper or a YAML path" in err
    assert not out.exists()


def test_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert "invalid choice" in _one_line_error(capsys, ["calibrate", "cifar"])


def test_config_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _tiny_config(tmp_path, lr="DROP")
    err = _one_line_error(capsys, ["calibrate", "mnist", "--config", str(cfg)])
    assert "missing keys ['lr']" in err


def test_config_negative_learning_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _tiny_config(tmp_path, lr="-0.001")
    err = _one_line_error(capsys, ["calibrate", "mnist", "--config", str(cfg)])
    assert "lr must be positive" in err


def test_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(capsys, ["calibrate", "modadd", "--config", str(tmp_path / "no.yaml")])
    assert "does not exist" in err


def test_output_not_writable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = _tiny_config(tmp_path)
    err = _one_line_error(
        capsys, ["calibrate", "mnist", "--config", str(cfg), "--out", str(blocker)]
    )
    assert "cannot create the folder" in err


def test_shipped_configs_load() -> None:
    for task in ("mnist", "modadd"):
        for preset in ("quick", "paper"):
            assert run.load(task, preset).lr > 0
    assert run.load("mnist", "long").steps == 1_000_000
    long64 = run.load("mnist", "long64")  # the long config in the paper's dtype, nothing else
    assert long64 == dataclasses.replace(run.load("mnist", "long"), dtype="float64")


# --- a tiny end-to-end run ------------------------------------------------------------------------


def test_calibrate_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    cfg = _tiny_config(tmp_path)
    assert (
        main(["calibrate", "mnist", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    )
    assert "peak test accuracy" in capsys.readouterr().out
    steps = run.checkpoint_schedule(30, 5)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "monitor",
        *(f"step-{s:08d}.safetensors" for s in steps),
    ]
    monitored = sorted(p.name for p in (out / "checkpoints" / "monitor").iterdir())
    assert monitored == [f"step-{s:08d}.safetensors" for s in (10, 20, 30)]
    with open(out / "checkpoints.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == steps
    for col in ("phase", "train_acc", "test_acc", "train_loss", "test_loss", "verdict"):
        assert col in rows[0]
    for layer in ("layers.0", "layers.1", "layers.2"):
        assert f"alpha[{layer}]" in rows[0] and f"num_traps[{layer}]" in rows[0]
    data = json.loads((out / "calibration.json").read_text())
    assert data["task"] == "mnist" and len(data["checkpoints"]) == len(steps)
    assert [row["step"] for row in data["monitor"]["history"]] == [10, 20, 30]
    for row in data["checkpoints"]:  # the phase from the curves, the verdict from the spectra
        assert row["agrees"] == (row["verdict"] in EXPECTED_VERDICTS[row["phase"]]), row
    page = (out / "calibration.html").read_text()
    assert page.count('<svg class="chart"') == 4 and "://" not in page  # offline

    # Audited again from its checkpoints alone, at 3 shuffle seeds: the same steps and metrics
    args = ["calibrate", "mnist", "--config", str(cfg), "--out", str(out), "--reaudit"]
    assert main([*args, "--seeds", "3"]) == 0
    again = json.loads((out / "calibration.json").read_text())
    assert [r["step"] for r in again["checkpoints"]] == steps
    for old_row, new_row in zip(data["checkpoints"], again["checkpoints"], strict=True):
        assert new_row["test_acc"] == pytest.approx(old_row["test_acc"])
        assert new_row["alpha[layers.0]"] == pytest.approx(old_row["alpha[layers.0]"])
        assert sum(new_row["seed_verdicts"].values()) == 3
        assert 0 <= new_row["seed_agreement"] <= 1
    assert again["seed_agreement"]["all"]["audits"] == 3 * len(steps)
    # the training time is the run's, kept; the re-audit's own is apart, and the page says both
    assert again["seconds"] == data["seconds"] > 0 and data["reaudit_seconds"] is None
    assert again["reaudit_seconds"] > 0
    page = (out / "calibration.html").read_text()
    assert f"trained in {data['seconds']:,.0f} s, audited again in" in page
    assert [row["step"] for row in again["monitor"]["history"]] == [10, 20, 30]


def _page_data() -> dict:
    """Four checkpoints of two layers, one alpha not finite (the fit failed)."""
    phases = ["pre-grokking", "pre-grokking", "grokked", "collapse"]
    rows = [
        {"step": step, "train_acc": train, "test_acc": test, "alpha[a]": a, "num_traps[a]": ta,
         "alpha[b]": b, "num_traps[b]": tb, "trap_strength[a]": 0.9 + ta / 10,
         "trap_strength[b]": 0.8 + tb / 10, "verdict": "watch", "verdict_reason": "why <b>",
         "phase": phase, "agrees": True, "seed_verdicts": {"watch": seeds},
         "seed_agreement": share}
        for step, train, test, a, ta, b, tb, phase, seeds, share in zip(
            [1, 10, 100, 1000], [0.1, 1.0, 1.0, 1.0], [0.1, 0.2, 0.9, 0.5],
            [3.0, float("nan"), 2.5, 1.5], [0, 0, 0, 2], [4.0, 3.5, 3.0, 1.8], [0, 0, 1, 3],
            phases, [8, 24, 24, 8], [1.0, 23 / 24, 0.5, 0.25], strict=True,
        )
    ]  # fmt: skip
    phase_steps = {"memorized_step": 10, "grokked_step": 100, "peak_step": 100}
    return {
        "task": "toy <x>",
        "config": {"steps": 1000},
        "seconds": 1.0,
        "phases": {**phase_steps, "peak_test_acc": 0.9, "collapse_step": 1000},
        "checkpoints": rows,
    }


def test_page_draws_every_curve_over_the_phases() -> None:
    page = render_page(_page_data())
    assert page.count('<svg class="chart"') == 4 and "://" not in page
    assert "toy &lt;x&gt;" in page and "why <b>" not in page  # escaped
    # one line per series in each chart: train/test, then layers a and b (alpha, traps, strength)
    assert page.count('class="series-line sr0"') == 4 and page.count('class="series-line sr1"') == 4
    assert page.count('class="series-line sr2"') == 0
    # a phase band per checkpoint in each chart; the alpha_low line and the strength's line at 1
    assert page.count('class="ph-pre-grokking"') == 2 * 4 and page.count('class="ph-collapse"') == 4
    assert page.count('class="threshold"') == 2
    # the table: one row per checkpoint; the failed fit shows "–" and sorts last
    assert page.count("<tr title=") == 4
    assert '<td class="num c-k4" data-v="">–</td>' in page


def test_page_table_sorts_in_chromium(browser: report_tests.DevTools, tmp_path: Path) -> None:
    path = tmp_path / "calibration.html"
    path.write_text(render_page(_page_data()))
    browser.call("Page.navigate", url=path.as_uri())
    browser.wait_for("Page.loadEventFired")
    column = (
        "[...document.querySelectorAll('#checkpoints tbody tr')].map(r => r.cells[{}].textContent)"
    )
    browser.js("document.querySelector('th[data-key=k5]').click()")  # alpha b, ascending
    assert browser.js(column.format(5)) == ["1.80", "3.00", "3.50", "4.00"]
    browser.js("document.querySelector('th[data-key=k4]').click()")  # alpha a: the "–" last
    assert browser.js(column.format(4)) == ["1.50", "2.50", "3.00", "–"]
    browser.js("document.querySelector('th[data-key=k12]').click()")  # seeds agreeing: by share
    assert browser.js(column.format(12)) == ["2/8", "12/24", "23/24", "8/8"]
    browser.assert_no_errors_and_only_local_requests()


def test_no_calibration_layer_is_an_embedding() -> None:
    task = MnistTask(MnistConfig(steps=1, downsample=2))
    summary = llm_audit.scan(task.model.state_dict(), traps=False).summary
    assert summary["num_counted"] == 3  # the 196 -> 200 input layer counts in the summary


# --- the committed checkpoints and records of the long run ---------------------------------------
# Made by tests/fixtures/calibration/make_fixtures.py from two recorded runs, each re-audited at 24
# shuffle seeds (`--reaudit`): `llm-audit calibrate mnist --config long` (28x28 inputs, init x8,
# lr 5e-3, seed 0, float32; stopped at 405,000 steps) gives the peak, run.csv and monitor.csv;
# `--config long64` (the same in float64, whose collapse goes deeper; run to 1e6 steps) gives the
# collapsed checkpoint, its last log-spaced one.


FIRST, SECOND = "layers.0.weight", "layers.1.weight"
SEEDS = range(100, 124)  # trap shuffles no threshold was chosen on


def _audit(name: str, seed: int = 0) -> llm_audit.AuditResult:
    state = load_file(str(FIXTURES / f"{name}.safetensors"))
    return llm_audit.scan(state, traps=True, seed=seed)


def _csv(name: str) -> list[dict[str, str]]:
    with open(FIXTURES / name) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_no_trap_at_the_test_accuracy_peak_at_any_seed() -> None:
    """Step 47,639 (the highest test accuracy of the log-spaced checkpoints): train 1.000, test
    0.860; alpha 1.96, 3.30, 3.29 (the first layer just below 2: "watch"). The first layer's
    centred shuffle stands at 0.98 of its trap threshold: near it, so the layer is decided by a
    vote of shuffles, which finds no significant trap at any of 24 seeds. Never "pathological"."""
    for seed in SEEDS:
        result = _audit("peak", seed)
        assert all(r["num_traps"] == 0 for r in result.records)
        assert result.summary["verdict"] == "watch"
        first = next(r for r in result.records if r["name"] == FIRST)
        assert 0.9 < first["trap_strength"] < 1.05


@pytest.mark.slow
def test_traps_and_alpha_below_2_after_the_collapse_at_every_seed() -> None:
    """Step 1,000,000 of the float64 run (its last): train 0.979, test 0.600 (0.247 below its
    peak: the collapse). Alpha 1.76, 2.11, 2.40; at seeds 100-123 the first layer holds 11-19
    traps (its shuffle 2.2x its threshold or more), the second 9-10, structured (the paper: 7.5
    and 1); "pathological" at every seed, the first layer's entries scattered."""
    for seed in SEEDS:
        result = _audit("collapsed", seed)
        layers = {r["name"]: r for r in result.records}
        assert layers[FIRST]["num_traps"] >= 8 and layers[FIRST]["alpha"] < 2.0
        assert layers[FIRST]["trap_kind"] == "scattered" and layers[FIRST]["trap_strength"] > 1.4
        assert result.summary["verdict"] == "pathological"


def _task(config: dict[str, Any]) -> MnistTask:
    """The task of a recorded run's config (as calibration.json writes it)."""
    return MnistTask(MnistConfig(**{k: v for k, v in config.items() if k != "stopped_at"}))


def test_fixture_accuracies_match_the_record() -> None:
    """Each fixture evaluated by its own run's task (float32 for the peak, float64 for the
    collapsed checkpoint) gives the accuracies its run recorded."""
    info = json.loads((FIXTURES / "fixtures.json").read_text())
    for name in ("peak", "collapsed"):
        task = _task(info[name]["config"])
        task.model.load_state_dict(load_file(str(FIXTURES / f"{name}.safetensors")))
        assert task.evaluate()["test_acc"] == pytest.approx(info[name]["test_acc"], abs=1e-6)


# The checkpoint whose verdict (seed 0) does not match the phase the accuracy curves give: 76,095,
# the collapse onset (test 0.805, 0.055 below the peak): alpha 1.80 in the first layer, whose
# shuffle stands right at its threshold (1.00; it traps at 4 of 24 seeds), so "watch" until the
# next checkpoint (96,172), where the trap is clear. The trap the first layer grows while the net
# still generalizes (18,672 to 29,825, 1.05-1.14x its threshold at every seed, alpha 2.4-3.6) reads
# "watch": a trap layer without alpha < 2 in one layer of three is not the signature.
DISAGREEMENTS = {76095: ("collapse", "watch")}


def _verdict_from_row(row: dict[str, str], trap_column: str) -> str:
    """The default verdict rule applied to one run.csv row, traps read from `trap_column`."""
    from llm_audit.config import AuditConfig
    from llm_audit.flags import layer_flags, verdict

    cfg, records = AuditConfig(), []
    for layer in ("layers.0", "layers.1", "layers.2"):
        rec = {"status": "success", "alpha": float(row[f"alpha[{layer}]"])}
        rec["num_traps"] = int(row[f"{trap_column}[{layer}]"])
        records.append(rec | {"flags": layer_flags(rec, cfg.thresholds)})
    return verdict(records, cfg)[0]


def test_every_checkpoint_has_a_phase_and_its_verdict_agrees_except_where_stated() -> None:
    """All 53 checkpoints of the run: the phases come again from the accuracy curves, the verdicts
    again from the recorded per-layer alpha and num_traps by the default rule; all but the one in
    DISAGREEMENTS agree, and over 24 seeds 98% of the (checkpoint, seed) audits agree."""
    from llm_audit.calibration.phases import PHASES, agrees

    rows = _csv("run.csv")
    ph = find_phases(
        [int(r["step"]) for r in rows],
        [float(r["train_acc"]) for r in rows],
        [float(r["test_acc"]) for r in rows],
    )
    assert list(ph.labels) == [r["phase"] for r in rows] and set(ph.labels) == set(PHASES)
    disagree = {}
    for row in rows:
        assert _verdict_from_row(row, "num_traps") == row["verdict"]
        if not agrees(row["phase"], row["verdict"]):
            disagree[int(row["step"])] = (row["phase"], row["verdict"])
    assert disagree == DISAGREEMENTS
    assert [int(r["step"]) for r in rows if r["agrees"] == "False"] == list(DISAGREEMENTS)
    shares = [float(r["seed_agreement"]) for r in rows]
    assert sum(shares) / len(shares) >= 0.95


def test_the_raw_trap_count_would_disagree_more_often() -> None:
    """Why the verdict counts `num_traps` (shuffle of W minus its mean), not WeightWatcher's
    `rand_num_spikes`: every shuffle keeps W's mean, whose rank-one spike WeightWatcher counts as
    a trap; with the raw count 6 of the 53 checkpoints would disagree with their phase (from
    18,672 on, while the net still generalizes), against 1."""
    from llm_audit.calibration.phases import agrees

    rows = _csv("run.csv")
    raw = [r for r in rows if not agrees(r["phase"], _verdict_from_row(r, "rand_num_spikes"))]
    assert len(raw) == 6 and int(raw[0]["step"]) == 18672


def test_monitor_stops_5000_steps_after_the_collapse_onset_and_keeps_the_peak() -> None:
    """The run's AuditMonitor (every 5,000 steps, drop 0.02, 1 trap; stop=False so the run went
    on) replayed from its recorded audits: test accuracy peaks at 0.855 at step 40,000; at 85,000
    it is 0.795 with a trap in the first layer, so the monitor stops there and keeps step 40,000.
    The phase rule on the same audits puts the collapse onset (test <= 0.805) at 80,000: the
    monitor stops one audit after it."""
    info = json.loads((FIXTURES / "fixtures.json").read_text())["monitor"]
    rows = _csv("monitor.csv")
    monitor = AuditMonitor(torch.nn.Linear(2, 2), evaluate=lambda: {}, every=5000)
    stopped = None
    for r in rows:
        metrics = {"train_acc": float(r["train_acc"]), "test_acc": float(r["test_acc"])}
        summary = {"total_traps": int(r["total_traps"]), "mean_alpha": float(r["mean_alpha"])}
        if monitor.observe(int(r["step"]), metrics, summary | {"verdict": r["verdict"]}):
            stopped = int(r["step"])
            break
    assert (stopped, monitor.kept_step, monitor.best_step) == (85_000, 40_000, 40_000)
    assert (info["would_stop_at"], info["kept_step"]) == (85_000, 40_000)
    dense = find_phases(
        [int(r["step"]) for r in rows],
        [float(r["train_acc"]) for r in rows],
        [float(r["test_acc"]) for r in rows],
    )
    assert dense.collapse_step == info["dense_collapse_step"] == 80_000
    assert stopped - dense.collapse_step == info["stop_minus_collapse_onset"] == 5_000


def test_monitor_stops_after_the_peak_and_keeps_the_best_checkpoint() -> None:
    """The two committed checkpoints through a plain loop with real audits: the monitor audits
    each one, sees test accuracy fall from its peak with a trap present, stops, and keeps the
    peak's weights."""
    info = json.loads((FIXTURES / "fixtures.json").read_text())
    task = _task(info["peak"]["config"])
    states = {1: load_file(str(FIXTURES / "peak.safetensors"))}
    states[2] = {
        k: v.float() for k, v in load_file(str(FIXTURES / "collapsed.safetensors")).items()
    }
    monitor = AuditMonitor(task.model, evaluate=task.evaluate, every=1)
    stopped = None
    for step in (1, 2):
        task.model.load_state_dict(states[step])  # stands in for training between audits
        if monitor.check(step):
            stopped = step
            break
    assert stopped == 2 and monitor.stopped_at == 2 and monitor.best_step == 1
    assert monitor.best_state is not None
    assert torch.equal(monitor.best_state["layers.0.weight"], states[1]["layers.0.weight"])
    assert [h["verdict"] for h in monitor.history] == ["watch", "pathological"]


class _TinyClassifier(torch.nn.Module):
    """16 -> 64 -> 4 ReLU net with the (inputs, labels) -> {"loss", "logits"} Trainer contract."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 4)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc2(torch.relu(self.fc1(x)))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def _train_with_callback(tmp_path: Path, *, planted_trap: bool) -> tuple[AuditMonitor, int]:
    """Fine-tune a teacher-fitted net on wrong labels with a real `transformers.Trainer`.

    Test accuracy (true labels) really falls while the net learns the shifted labels. With
    `planted_trap` one fc1 entry is set to 30 (the other entries are ~0.1): a correlation trap
    in the element-shuffled spectrum of fc1 from the start, as in a collapsed model.
    """
    transformers = pytest.importorskip("transformers")
    from llm_audit.calibration.monitor import trainer_callback

    gen = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(256, 16, generator=gen), torch.randn(256, 16, generator=gen)
    teacher = torch.randn(16, 4, generator=gen)
    y_train = ((x_train @ teacher).argmax(1) + 1) % 4  # every training label is wrong
    y_test = (x_test @ teacher).argmax(1)
    torch.manual_seed(0)
    model = _TinyClassifier()
    with torch.no_grad():
        if planted_trap:
            model.fc1.weight[0, 0] = 30.0
    train = [{"x": x, "labels": y} for x, y in zip(x_train, y_train, strict=True)]

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            logits = model(x_test, y_test)["logits"]
        return {"test_acc": float((logits.argmax(1) == y_test).float().mean())}

    monitor = AuditMonitor(model, evaluate=evaluate, every=4)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=40,
        per_device_train_batch_size=32,
        learning_rate=3e-2,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=train, callbacks=[trainer_callback(monitor)]
    )
    trainer.train()
    return monitor, int(trainer.state.global_step)


def test_trainer_callback_stops_a_real_trainer(tmp_path: Path) -> None:
    """Audits every 4 steps; stops at the first audit with test accuracy >= 0.02 below its best
    and a trap counted; keeps the best weights seen."""
    monitor, steps_run = _train_with_callback(tmp_path, planted_trap=True)
    assert [row["step"] for row in monitor.history] == list(range(4, steps_run + 1, 4))
    assert monitor.stopped_at == steps_run < 40  # should_training_stop ended the run there
    last = monitor.history[-1]
    assert last["total_traps"] >= 1 and last["test_acc"] <= monitor.best_test_acc - 0.02
    assert all(row["test_acc"] > monitor.best_test_acc - 0.02 for row in monitor.history[:-1])
    assert monitor.best_step is not None and monitor.best_step < steps_run
    assert monitor.best_state is not None
    assert not torch.equal(monitor.best_state["fc1.weight"], monitor.model.fc1.weight.detach())


def test_trainer_callback_does_not_stop_without_traps(tmp_path: Path) -> None:
    """The same run without the planted trap: accuracy falls just the same, but no trap appears,
    so the Trainer runs all 40 steps."""
    monitor, steps_run = _train_with_callback(tmp_path, planted_trap=False)
    assert steps_run == 40 and monitor.stopped_at is None and len(monitor.history) == 10
    assert monitor.history[-1]["test_acc"] <= monitor.best_test_acc - 0.02
    assert all(row["total_traps"] == 0 for row in monitor.history)


def test_monitor_needs_a_schedule() -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError):
        AuditMonitor(model, evaluate=lambda: {"test_acc": 0.0}, every=None)


def test_monitor_schedule_overrides_every() -> None:
    monitor = AuditMonitor(torch.nn.Linear(2, 2), evaluate=lambda: {"test_acc": 0.0}, schedule=[3])
    assert monitor.due(3) and not monitor.due(1000)


def test_reaudit_refuses_a_folder_without_checkpoints_and_bad_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["calibrate", "mnist", "--config", "long", "--out", str(tmp_path), "--reaudit"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "no step-*.safetensors checkpoints to re-audit" in err and "\n" not in err
    assert main([*args, "--seeds", "0"]) == 2
    assert "--seeds and --jobs must be at least 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


# --- a stopped run goes on with --resume --------------------------------------------------------


def test_a_stopped_run_resumes_bit_for_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real SIGTERM stops the run after its first saved checkpoint; `--resume` goes on from it.
    The results and the last weights are those of the same run never stopped."""
    cfg = _tiny_config(tmp_path, steps=400, num_checkpoints=6, monitor_every=50)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    args = ["calibrate", "mnist", "--config", str(cfg), "--no-progress", "--out"]
    assert main([*args, str(whole)]) == 0
    assert not (whole / "resume.safetensors").exists()  # removed with the results written

    cmd = [sys.executable, "-m", "llm_audit", *args, str(stopped)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (stopped / "resume.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no resume state was saved"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "is saved in" in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert not (stopped / "calibration.json").exists()

    capsys.readouterr()
    assert main([*args, str(stopped), "--resume"]) == 0
    a, b = (json.loads((d / "calibration.json").read_text()) for d in (whole, stopped))
    assert a.pop("seconds") > 0 and b.pop("seconds") > 0
    assert a == b
    last = "checkpoints/step-00000400.safetensors"
    wa, wb = load_file(str(whole / last)), load_file(str(stopped / last))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_another_config_and_a_missing_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _tiny_config(tmp_path, steps=20, num_checkpoints=3, monitor_every=10)
    out = tmp_path / "run"
    args = ["calibrate", "mnist", "--no-progress", "--out", str(out), "--resume", "--config"]
    assert main([*args, str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no resume.safetensors to resume from" in err and "\n" not in err
    assert not out.exists()  # nothing written
    assert main([*args, str(cfg), "--reaudit"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--reaudit trains nothing, so it cannot --resume" in err and "\n" not in err
    assert not out.exists()

    # a state saved by this config, then resumed with another learning rate
    from llm_audit.calibration import resume

    config = run.load("mnist", cfg)
    task = MnistTask(config)
    task.step()
    out.mkdir()
    resume.save(out, config, task, resume.Progress(1, 0.1, []), None)
    assert resume.saved_step(out) == 1
    (tmp_path / "other").mkdir()
    other = _tiny_config(tmp_path / "other", steps=20, num_checkpoints=3, monitor_every=10, lr=1e-3)
    assert main([*args, str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "another config (lr 0.005 there, 0.001 here)" in err and "\n" not in err

    (out / "resume.safetensors").write_bytes(b"not a safetensors file")
    assert main([*args, str(cfg)]) == 2
    assert "the resume state cannot be read" in capsys.readouterr().err


def test_a_task_restores_its_training_state_exactly() -> None:
    """Weights, AdamW's moments and step count, and the batch order all come back: the next
    steps of a restored copy equal the original's."""
    cfg = MnistConfig(steps=10, downsample=2, batch_size=64)
    one = MnistTask(cfg)
    for _ in range(3):
        one.step()
    two = MnistTask(cfg)
    two.load_training_state({k: v.clone() for k, v in one.training_state().items()})
    losses = [(one.step(), two.step()) for _ in range(20)]  # 20 batches: past an epoch's reshuffle
    assert all(a == b for a, b in losses)
    assert all(
        torch.equal(p, q)
        for p, q in zip(one.model.parameters(), two.model.parameters(), strict=True)
    )
