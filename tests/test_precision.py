"""The precision setting: which dtype `auto` picks, and the float32 guard that recomputes a layer
in float64 where its error bound could move alpha across a threshold."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import llm_audit
from llm_audit.config import load_config
from llm_audit.errors import ConfigError
from llm_audit.spectral import precision
from llm_audit.spectral.powerlaw import fit_power_law


def test_auto_is_float64_on_the_cpu() -> None:
    assert precision.spectrum_dtype("auto", torch.device("cpu")) == torch.float64
    assert precision.spectrum_dtype("float32", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize(
    ("capability", "full_rate"),
    [((8, 0), True), ((9, 0), True), ((10, 0), True), ((8, 6), False), ((8, 9), False),
     ((12, 0), False), ((7, 5), False)],
)  # fmt: skip
def test_auto_follows_the_gpu_float64_rate(
    capability: tuple[int, int], full_rate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A100/H100/B200 (8.0, 9.0, 10.0) keep float64; RTX, L4/L40, consumer Blackwell, T4 do not."""
    props = SimpleNamespace(major=capability[0], minor=capability[1], gcnArchName="")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.version, "hip", None)
    expected = torch.float64 if full_rate else torch.float32
    assert precision.spectrum_dtype("auto", torch.device("cuda:0")) == expected


def test_unknown_precision_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="precision 'half' is unknown"):
        load_config().replace(precision="half")


def _matrix_with_alpha(alpha: float, *, M: int = 200, N: int = 400) -> torch.Tensor:
    """An N×M float64 matrix whose WW fit gives alpha to within rounding.

    Raising every eigenvalue to a power p keeps the KS distance of every candidate xmin and maps
    alpha - 1 to (alpha - 1)/p, so a power-law spectrum is tuned onto `alpha` exactly.
    """
    rng = np.random.default_rng(7)
    evals = np.sort(rng.pareto(1.5, M) + 1.0)
    fitted = fit_power_law(evals).alpha
    evals = evals ** ((fitted - 1) / (alpha - 1))
    g = torch.Generator().manual_seed(8)
    U, _ = torch.linalg.qr(torch.randn(N, M, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(M, M, generator=g, dtype=torch.float64))
    return (U * torch.from_numpy(np.sqrt(evals))) @ V.T


def _layer(W: torch.Tensor, prec: str) -> dict[str, object]:
    result = llm_audit.scan({"layer.weight": W}, traps=False, precision=prec, device="cpu")
    (record,) = result.records
    return record


def test_a_layer_whose_float32_alpha_could_cross_2_is_recomputed_in_float64() -> None:
    W = _matrix_with_alpha(2.0 + 1e-4)
    exact = _layer(W, "float64")
    assert exact["alpha"] == pytest.approx(2.0 + 1e-4, abs=1e-8)
    guarded = _layer(W, "float32")
    assert guarded["recomputed_float64"] is True
    assert guarded["precision_used"] == "float64"
    assert guarded["recompute_reason"] == "alpha could cross 2"
    low, high = guarded["alpha_range_low"], guarded["alpha_range_high"]
    assert low <= 2.0 <= high
    assert guarded["alpha"] == exact["alpha"]
    assert guarded["flags"] == exact["flags"] == []


def test_a_layer_far_from_the_thresholds_stays_float32() -> None:
    W = _matrix_with_alpha(4.0)
    exact = _layer(W, "float64")
    single = _layer(W, "float32")
    assert (single["precision_used"], single["recomputed_float64"]) == ("float32", False)
    assert exact["precision_used"] == "float64"
    low, high = single["alpha_range_low"], single["alpha_range_high"]
    assert 2.0 < low <= exact["alpha"] <= high < 6.0  # type: ignore[operator]
    assert abs(single["alpha"] - exact["alpha"]) < 1e-4  # type: ignore[operator]


def test_the_report_records_the_precision() -> None:
    W = _matrix_with_alpha(4.0)
    single = llm_audit.scan({"layer.weight": W}, traps=False, precision="float32", device="cpu")
    default = llm_audit.scan({"layer.weight": W}, traps=False, device="cpu")
    assert single.settings["precision"] == "float32"
    assert single.settings["eigensolver"].startswith("float32 Gram")
    assert default.settings["precision"] == "auto"
    assert default.settings["eigensolver"] == "float64 Gram (smaller side) + eigvalsh"
    assert default.records[0]["precision_used"] == "float64"


def test_the_cli_takes_precision(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from llm_audit.cli import main

    save_file({"layer.weight": _matrix_with_alpha(4.0).float()}, str(tmp_path / "m.safetensors"))
    out = tmp_path / "report"
    argv = [str(tmp_path / "m.safetensors"), "--no-traps", "--precision", "float32"]
    assert main(["scan", *argv, "--out", str(out), "--no-progress", "--format", "json"]) == 0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["settings"]["precision"] == "float32"
    assert audit["layers"][0]["precision_used"] == "float32"
