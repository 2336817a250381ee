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

# Per-layer flags, and the model verdict.
ALPHA_LT_2 = "alpha_lt_2"  # over-fit: the anti-grokking signal
ALPHA_GT_6 = "alpha_gt_6"  # under-trained
CORRELATION_TRAP = "correlation_trap"  # traps from scattered extreme entries: a pathology
OUTLIER_DIMENSION = "outlier_dimension"  # traps on the residual stream's outlier dimensions
STRUCTURED_TRAP = "structured_trap"  # traps whose entries share a few rows and columns of a layer
ALPHA_FIT_FAILED = "alpha_fit_failed"
FLAGS = (
    ALPHA_LT_2,
    ALPHA_GT_6,
    CORRELATION_TRAP,
    OUTLIER_DIMENSION,
    STRUCTURED_TRAP,
    ALPHA_FIT_FAILED,
)
INFORMATIONAL = (OUTLIER_DIMENSION, STRUCTURED_TRAP)  # not counted unless configured
HEALTHY, WATCH, PATHOLOGICAL = "healthy", "watch", "pathological"

# A trap layer's `trap_kind` (see outlier_dims.py): where its extreme entries lie.
SCATTERED = "scattered"
STRUCTURED = "structured"
TRAP_KINDS = (OUTLIER_DIMENSION, STRUCTURED, SCATTERED)
TRAP_KIND_FLAGS = {OUTLIER_DIMENSION: OUTLIER_DIMENSION, STRUCTURED: STRUCTURED_TRAP}
VERDICTS = (HEALTHY, WATCH, PATHOLOGICAL)

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
}


def count_key(flag: str) -> str:
    """The summary's count of layers raising `flag` (`num_alpha_lt_2`)."""
    return f"num_{flag}"
