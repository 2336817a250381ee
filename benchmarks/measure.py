"""Run one analysis (llm-audit or WeightWatcher) in a fresh child process and measure it.

Why a child per run: peak RSS is a per-process number, and WeightWatcher reconfigures the root
logger and silences warnings when imported; a fresh interpreter keeps every run independent.

- Child side (`python benchmarks/measure.py TOOL FOLDER OUT.json`): imports the tool and prepares
  it (both timed, reported apart), then times the analysis call alone (wall and CPU seconds), and
  writes what it found plus its own VmHWM, the kernel's exact peak RSS of the process.
- Parent side (`run_case`): starts the child and samples /proc/<pid>/status every 50 ms. VmRSS is
  RssAnon (memory the process holds: arrays, buffers) + RssFile (pages of memory-mapped files, here
  the checkpoint shards, which the kernel can drop and re-read) + RssShmem. The sampled peaks of
  RssAnon and RssFile, and their split at the sampled VmRSS peak, tell which kind the peak is.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024  # /proc reports kB (KiB); divide by this for MiB
SAMPLE_S = 0.05
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ---------------------------------------------------------------------------------------------
# /proc helpers (both sides)


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, ...); {} if gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a Hub-layout folder, or the file itself (a GGUF file)."""
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")


def set_page_cache(folder: Path, *, warm: bool) -> None:
    """Warm: read every shard once, so no run pays for the disk. Cold: evict them (clean pages)."""
    for path in checkpoint_files(folder):
        with path.open("rb") as fh:
            if warm:
                while fh.read(16 << 20):
                    pass
            else:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# ---------------------------------------------------------------------------------------------
# Parent side: start the child, sample its memory


@dataclass
class Run:
    """One measured run: what the child reported plus the parent's memory samples (MiB)."""

    label: str
    tool: str
    options: dict[str, Any]
    analysis_s: float = float("nan")
    cpu_s: float = float("nan")
    import_s: float = float("nan")
    load_s: float = float("nan")
    tool_reported_s: float | None = None
    layers_analyzed: int = 0
    layers_total: int = 0
    recomputed_float64: int = 0  # layers of a float32 scan computed again in float64
    peak_rss_mib: float = float("nan")  # VmHWM: exact
    rss_before_mib: float = float("nan")  # VmRSS after import and load, before the analysis
    anon_before_mib: float = float("nan")
    file_before_mib: float = float("nan")  # mostly shared libraries (torch, numpy) by then
    sampled_peak_rss_mib: float = 0.0
    anon_at_peak_mib: float = 0.0
    file_at_peak_mib: float = 0.0
    peak_anon_mib: float = 0.0
    peak_file_mib: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    repeat_s: list[float] = field(default_factory=list)  # every run's analysis_s, when repeated
    alphas: dict[str, float] = field(default_factory=dict)
    # (t s, VmRSS, RssAnon, RssFile kB), one per 50 ms
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without the per-layer alphas and the samples."""
        return {k: v for k, v in asdict(self).items() if k not in ("alphas", "samples")}


def _sample(pid: int, run: Run, stop: threading.Event) -> None:
    start = time.perf_counter()
    while not stop.is_set():
        s = proc_status(pid)
        if "VmRSS" in s:
            rss, anon, file = s["VmRSS"], s.get("RssAnon", 0), s.get("RssFile", 0)
            run.samples.append((round(time.perf_counter() - start, 3), rss, anon, file))
            if rss / MIB > run.sampled_peak_rss_mib:
                run.sampled_peak_rss_mib = rss / MIB
                run.anon_at_peak_mib, run.file_at_peak_mib = anon / MIB, file / MIB
            run.peak_anon_mib = max(run.peak_anon_mib, anon / MIB)
            run.peak_file_mib = max(run.peak_file_mib, file / MIB)
        stop.wait(SAMPLE_S)


def run_case(
    label: str,
    tool: str,
    folder: Path,
    *,
    traps: bool = False,
    randomize: bool = False,
    precision: str | None = None,
    blas_threads: int | None = None,
    timeout: float | None = None,
) -> Run:
    """Run `tool` ("llm-audit", "compare" or "ww") on `folder` in a child process; never raises.

    For "compare", `folder` is "BASE,OTHER". `precision` is llm-audit's (None: its default).
    """
    options: dict[str, Any] = {"randomize": randomize} if tool == "ww" else {"traps": traps}
    if precision is not None and tool != "ww":
        options["precision"] = precision
    run = Run(label, tool, options)
    env = dict(os.environ)
    if blas_threads is not None:
        env.update({var: str(blas_threads) for var in BLAS_VARS})
    run.env = {var: env[var] for var in BLAS_VARS if var in env}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        args = [sys.executable, __file__, tool, str(folder), str(out)]
        args += ["--traps"] if traps else []
        args += ["--randomize"] if randomize else []
        args += [f"--precision={precision}"] if precision and tool != "ww" else []
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(proc.pid, run, stop), daemon=True)
        sampler.start()
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            run.error = f"timed out after {timeout} s"
        stop.set()
        sampler.join()
        if run.error is None and proc.returncode != 0:
            tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
            run.error = f"exit {proc.returncode}: " + " | ".join(tail)
        if run.error is None:
            for key, value in json.loads(out.read_text()).items():
                setattr(run, key, value)
    return run


# ---------------------------------------------------------------------------------------------
# Child side: import, prepare, analyze, report


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _before() -> dict[str, float]:
    s = proc_status()
    return {
        "rss_before_mib": s["VmRSS"] / MIB,
        "anon_before_mib": s.get("RssAnon", 0) / MIB,
        "file_before_mib": s.get("RssFile", 0) / MIB,
    }


def _llm_audit(folder: str, traps: bool, precision: str | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    import llm_audit
    import llm_audit.analysis

    import_s = time.perf_counter() - t0
    before = _before()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    result = llm_audit.scan(folder, traps=traps, precision=precision, progress=False)
    analysis_s, cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    ok = [r for r in result.records if r["status"] == "success"]
    return {
        "import_s": import_s,
        "load_s": 0.0,  # nothing to load ahead: scan() reads headers, then streams tensors
        "analysis_s": analysis_s,
        "cpu_s": cpu_s,
        "tool_reported_s": result.summary["seconds"],
        "layers_analyzed": result.summary["num_analyzed"],
        "layers_total": result.summary["num_layers"],
        "recomputed_float64": sum(bool(r.get("recomputed_float64")) for r in result.records),
        **before,
        "alphas": {r["name"]: float(r["alpha"]) for r in ok},
    }


def _compare(folders: str, traps: bool) -> dict[str, Any]:
    """`llm_audit.compare(BASE, OTHER)`; `folders` is "BASE,OTHER"."""
    t0 = time.perf_counter()
    import llm_audit
    import llm_audit.analysis

    import_s = time.perf_counter() - t0
    base, other = folders.split(",")
    before = _before()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    result = llm_audit.compare(base, other, traps=traps)
    analysis_s, cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    return {
        "import_s": import_s,
        "load_s": 0.0,
        "analysis_s": analysis_s,
        "cpu_s": cpu_s,
        "layers_analyzed": len(result.records),
        "layers_total": len(result.records),
        **before,
    }


def _weightwatcher(folder: str, randomize: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    import numpy as np
    import weightwatcher as ww

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    watcher = ww.WeightWatcher(model=folder)
    load_s = time.perf_counter() - t0
    before = _before()
    np.random.seed(0)  # WeightWatcher shuffles with the global numpy RNG
    cpu0, t0 = _cpu_s(), time.perf_counter()
    details = watcher.analyze(randomize=randomize)
    analysis_s, cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    return {
        "import_s": import_s,
        "load_s": load_s,
        "analysis_s": analysis_s,
        "cpu_s": cpu_s,
        "layers_analyzed": len(details),
        "layers_total": len(details),  # WeightWatcher lists only the layers it analyzed
        **before,
        "alphas": {
            f"{n}.weight": float(a) for n, a in zip(details["name"], details["alpha"], strict=True)
        },
    }


def child_main(argv: list[str]) -> None:
    tool, folder, out = argv[0], argv[1], Path(argv[2])
    if tool == "llm-audit":
        precision = next((a.split("=", 1)[1] for a in argv if a.startswith("--precision=")), None)
        report = _llm_audit(folder, traps="--traps" in argv, precision=precision)
    elif tool == "compare":
        report = _compare(folder, traps="--traps" in argv)
    elif tool == "ww":
        report = _weightwatcher(folder, randomize="--randomize" in argv)
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    report["peak_rss_mib"] = proc_status()["VmHWM"] / MIB
    out.write_text(json.dumps(report))


if __name__ == "__main__":
    child_main(sys.argv[1:])
