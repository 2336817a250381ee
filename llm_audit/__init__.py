"""llm-audit: audit neural networks by the spectra of their weight matrices (HTSR theory).

`scan` streams a model tensor by tensor and returns an `AuditResult`: per-layer power-law alpha,
WeightWatcher-compatible metrics, correlation traps, flags and a verdict. `fit_power_law` fits
one set of values (a spectrum, or any positive data) with a named estimator.

The names below are imported on first use, so that `import llm_audit.cli` (and `llm-audit
--help`) does not pay for torch and pandas.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_audit import monitor
    from llm_audit.compare import ComparisonResult, compare
    from llm_audit.config import AuditConfig, load_config
    from llm_audit.result import AuditResult
    from llm_audit.scan import scan
    from llm_audit.spectral.powerlaw import PowerLawFit, fit_power_law

__version__ = "0.1.0"
_PUBLIC = {  # name -> the module that defines it
    "AuditConfig": "llm_audit.config",
    "AuditResult": "llm_audit.result",
    "ComparisonResult": "llm_audit.compare",
    "PowerLawFit": "llm_audit.spectral.powerlaw",
    "compare": "llm_audit.compare",
    "fit_power_law": "llm_audit.spectral.powerlaw",
    "load_config": "llm_audit.config",
    "monitor": "llm_audit.monitor",  # a module: AuditMonitor, trainer_callback
    "scan": "llm_audit.scan",
}
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


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'llm_audit' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if name == "monitor" else getattr(module, name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


class _Package(types.ModuleType):
    """`llm_audit.scan` and `llm_audit.compare` are functions, though modules of those names
    exist: importing such a module would set the package attribute to the module (the eager
    `from llm_audit.scan import scan` used to rebind it), so that assignment is skipped."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("compare", "scan") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
