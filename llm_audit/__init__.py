"""llm-audit: audit neural networks by the spectra of their weight matrices (HTSR theory).

`scan` streams a model tensor by tensor and returns an `AuditResult`: per-layer power-law alpha,
WeightWatcher-compatible metrics, correlation traps, flags and a verdict. `fit_power_law` fits
one set of values (a spectrum, or any positive data) with a named estimator.
"""

from llm_audit.calibration import monitor
from llm_audit.compare import ComparisonResult, compare
from llm_audit.config import AuditConfig, load_config
from llm_audit.result import AuditResult
from llm_audit.scan import scan
from llm_audit.spectral.powerlaw import PowerLawFit, fit_power_law

__version__ = "0.1.0"
__all__ = [
    "AuditConfig",
    "AuditResult",
    "ComparisonResult",
    "PowerLawFit",
    "__version__",
    "compare",
    "fit_power_law",
    "load_config",
    "monitor",
    "scan",
]
