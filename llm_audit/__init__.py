"""llm-audit: audit neural networks by the spectra of their weight matrices (HTSR theory).

`scan` streams a model tensor by tensor and returns an `AuditResult`: per-layer power-law alpha,
WeightWatcher-compatible metrics, correlation traps, flags and a verdict.
"""

from llm_audit.calibration import monitor
from llm_audit.compare import ComparisonResult, compare
from llm_audit.config import AuditConfig, load_config
from llm_audit.result import AuditResult
from llm_audit.scan import scan

__version__ = "0.1.0"
__all__ = [
    "AuditConfig",
    "AuditResult",
    "ComparisonResult",
    "__version__",
    "compare",
    "load_config",
    "monitor",
    "scan",
]
