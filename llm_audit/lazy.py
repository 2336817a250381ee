"""torch, imported on first use.

Planning a scan (reading headers, naming layers, `describe`, `--help`) touches no tensor, and
importing torch costs 1.5–3.5 s of a CPU and ~300 MB: the modules on that road write
`from llm_audit.lazy import torch` and load it only when a tensor is made. Type checkers see the
real module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any


class _OnFirstUse(ModuleType):
    """A stand-in module whose first attribute read imports the real one and answers from it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.__name__), name)


if TYPE_CHECKING:
    import torch as torch
else:
    torch = _OnFirstUse("torch")
