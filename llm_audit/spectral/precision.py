"""Which float type a layer's spectrum is computed in, and when float32 is not enough.

`precision` (config and `--precision`) is `float64`, `float32` or `auto`. It sets the dtype of
the Gram product and of the eigensolver; the power-law fit always runs in float64. `auto` picks
float64 where float64 runs at full speed anyway (CPUs, whose float64 GEMM is half the float32 rate,
and data-centre GPUs with full-rate float64 units) and float32 on the GPUs that run float64 at
1/32-1/64 of their float32 rate (consumer and workstation cards), decided from the device's
compute capability. docs/precision.md says which is which and why.

The eigensolver always runs in float64 (analysis.spectrum says why), so a float32 spectrum is a
float32 Gram, and it carries a computed error bound (`eigenvalue_bound`): the rounding of the Gram
sum over N rows plus that of the eigensolver. `settled` asks whether any spectrum within
that bound could put alpha on the other side of a threshold, under any xmin it could choose
(`powerlaw.fit_bounds`); where one could, the layer is computed again in float64 (analysis.py),
so float32 never decides a flag.
"""

from __future__ import annotations

import torch

from llm_audit.config import PRECISIONS
from llm_audit.spectral.esd import EPS64, float32_tolerance
from llm_audit.spectral.powerlaw import FitBounds, PowerLawFit
from llm_audit.vocabulary import SUCCESS

DTYPES = {"float64": torch.float64, "float32": torch.float32}

# CUDA compute capabilities of the data-centre GPUs with full-rate float64 (1/2 of float32):
# P100 (6.0), V100 (7.0), A100 and A30 (8.0), H100 and H200 (9.0), B100 and B200 (10.0). Every
# other capability (6.1, 7.5, 8.6, 8.9, 12.x: GeForce, RTX, A10/A40, L4/L40) runs float64 at
# 1/32-1/64 of its float32 rate.
FULL_RATE_FLOAT64_CUDA = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}
# ROCm architectures with full-rate float64 matrix units: MI100 (gfx908), MI200 (gfx90a),
# MI300 (gfx942), MI350 (gfx950).
FULL_RATE_FLOAT64_ROCM = ("gfx908", "gfx90a", "gfx94", "gfx95")


def spectrum_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the Gram and the eigensolver for `precision` (one of `PRECISIONS`) on
    `device`; raises ValueError for another name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return DTYPES[precision]
    return torch.float64 if full_rate_float64(device) else torch.float32


def full_rate_float64(device: torch.device) -> bool:
    """Whether float64 costs at most twice float32 on `device`: a CPU, or a data-centre GPU."""
    if device.type != "cuda":
        return True
    props = torch.cuda.get_device_properties(device)
    arch = getattr(props, "gcnArchName", "") or ""
    if torch.version.hip is not None:
        return arch.startswith(FULL_RATE_FLOAT64_ROCM)
    return (props.major, props.minor) in FULL_RATE_FLOAT64_CUDA


def eigenvalue_bound(N: int, M: int, max_diagonal: float, lam_max: float) -> float:
    """Bound on every eigenvalue's absolute error in a float32-Gram spectrum of an N×M matrix.

    The float32 Gram sum over N rows (about 4·√N·eps32 of its largest diagonal entry, as for the
    trap test's shuffled Grams) and the float64 eigensolver (M·eps64·λ_max, LAPACK's bound),
    each counted twice: an eigenvalue within them of zero is set to 0 (`esd.gram_eigenvalues`).
    """
    return 2 * (float32_tolerance(N, max_diagonal) + M * EPS64 * lam_max)


def settled(fit: PowerLawFit, bounds: FitBounds, thresholds: tuple[float, ...]) -> str | None:
    """None when a float32 fit decides the same flags as the exact spectrum would: alpha stays
    on one side of every threshold over the range its error bound allows (`fit_bounds`), under
    any xmin that could be chosen; otherwise why the layer needs a float64 spectrum. A failed fit
    is never settled: its reason may depend on the smallest eigenvalues.
    """
    if fit.status != SUCCESS:
        return "the fit failed"
    crossed = [t for t in thresholds if bounds.alpha_low <= t <= bounds.alpha_high]
    if crossed:
        return f"alpha could cross {crossed[0]:g}"
    return None


def describe(precision: str, device: str) -> str:
    """The eigensolver line a report records, for `precision` on `device` (a kind: `cpu`,
    `cuda`, `cpu+cuda`, as `runner.recorded_device` gives)."""
    kinds = {dtype_name(spectrum_dtype(precision, torch.device(k))) for k in device.split("+")}
    if kinds == {"float64"}:
        return "float64 Gram (smaller side) + eigvalsh"
    where = "" if kinds == {"float32"} else " on GPUs"
    return (
        f"float32 Gram (smaller side) + float64 eigvalsh{where}, with an error bound per layer; "
        "float64 where alpha could cross a threshold within it (records: precision_used)"
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
