"""The words llm-audit's outputs are made of, each defined once: statuses, flags, verdicts, names.

Records, summaries, reports and the command line all import these; a new word is added here or
nowhere. The thresholds' default values live in `config.py` (and `configs/default.yaml`).
"""

from __future__ import annotations

SCHEMA_VERSION = 1  # of audit.json and compare.json

# A layer's `status`: analyzed (with or without a power-law fit), or why it was not.
SUCCESS = "success"
FIT_FAILED = "fit_failed"
ANALYZED = (SUCCESS, FIT_FAILED)
NONFINITE = "nonfinite"  # NaN or Inf weights
ZERO_MATRIX = "zero_matrix"
TIED = "tied"  # the same matrix as another layer, analyzed there
TOO_SMALL = "too_small"  # fewer eigenvalues than min_evals
UNSUPPORTED_SHAPE = "unsupported_shape"
UNSUPPORTED_DTYPE = "unsupported_dtype"
UNSUPPORTED_QUANTIZATION = "unsupported_quantization"
SKIP_STATUSES = (
    NONFINITE,
    ZERO_MATRIX,
    TIED,
    TOO_SMALL,
    UNSUPPORTED_SHAPE,
    UNSUPPORTED_DTYPE,
    UNSUPPORTED_QUANTIZATION,
)

# A fit's own status (power law, MP): SUCCESS, or FAILED with a reason.
FAILED = "failed"

# Per-layer flags, and the model verdict. The verdict answers one question, whether the spectra
# show an over-fitting / anti-grokking signature: it counts alpha_lt_2, scattered traps and failed
# fits. Every other flag is a *finding*: flagged per layer and counted in the summary, listed beside
# the verdict, and counted against it only when the config's `verdict.<FINDINGS[flag]>` is true.
ALPHA_LT_2 = "alpha_lt_2"  # over-fit: the anti-grokking signal
ALPHA_GT_6 = "alpha_gt_6"  # under-trained
CORRELATION_TRAP = "correlation_trap"  # traps from scattered extreme entries: a pathology
OUTLIER_DIMENSION = "outlier_dimension"  # traps on the residual stream's outlier dimensions
ALPHA_FIT_FAILED = "alpha_fit_failed"
HEALTHY, WATCH, PATHOLOGICAL = "healthy", "watch", "pathological"
VERDICTS = (HEALTHY, WATCH, PATHOLOGICAL)

# A trap layer's `trap_kind` (see outlier_dims.py): where its extreme entries lie. Scattered
# entries raise correlation_trap, the pathology; every other kind is a finding whose flag is the
# kind's own name. A new kind is one more name in INFORMATIONAL_TRAP_KINDS and in FINDINGS.
SCATTERED = "scattered"
STRUCTURED = "structured"  # trap entries that share a few rows and columns of their layer
INFORMATIONAL_TRAP_KINDS = (OUTLIER_DIMENSION, STRUCTURED)
TRAP_KINDS = (SCATTERED, *INFORMATIONAL_TRAP_KINDS)
TRAP_FLAGS = (CORRELATION_TRAP, *INFORMATIONAL_TRAP_KINDS)  # the flags of trap layers

# Findings, each with the `verdict` config key that makes the verdict count it.
FINDINGS = {
    ALPHA_GT_6: "count_alpha_gt_6",
    OUTLIER_DIMENSION: "count_outlier_dimensions",
    STRUCTURED: "count_structured",
}
COUNTED_FLAGS = (ALPHA_LT_2, CORRELATION_TRAP, ALPHA_FIT_FAILED)  # always counted by the verdict
FLAGS = (*COUNTED_FLAGS, *FINDINGS)

# A compare finding about a whole compared model (see distance.py); `--fail-on` takes it.
FAR_FROM_BASE = "far_from_base"

# How a layer of a compared model lines up with the base's.
ALIGNED, MISSING, EXTRA, SHAPE_CHANGED = "aligned", "missing", "extra", "shape_changed"
ALIGNMENTS = (ALIGNED, MISSING, EXTRA, SHAPE_CHANGED)

# Power-law estimators (see spectral/powerlaw.py), the first being the default.
ESTIMATORS = ("ww", "xmin_peak", "median", "clauset")

# A scan's report files: --format name -> file written.
FORMATS = {
    "json": "audit.json",
    "csv": "layers.csv",
    "parquet": "layers.parquet",
    "npz": "spectra.npz",
    "html": "report.html",
    "md": "summary.md",
}


def count_key(flag: str) -> str:
    """The summary's count of counted layers raising `flag` (`num_alpha_lt_2`)."""
    return f"num_{flag}"


def traps_key(flag: str) -> str:
    """The summary's count of traps in counted layers raising finding `flag`."""
    return f"total_{flag}_traps"


def trap_flag(trap_kind: str | None) -> str:
    """The flag a trap layer raises for its `trap_kind` (unplaced traps count as scattered)."""
    return trap_kind if trap_kind in INFORMATIONAL_TRAP_KINDS else CORRELATION_TRAP
