"""Every error llm-audit raises on bad input, in one place.

Each class also inherits the built-in exception a caller would naturally catch, carries the file or
tensor it is about, and its message ends with how to fix the problem. The CLI maps any
`LlmAuditError` to one line on stderr and exit code 2.
"""

from __future__ import annotations


class LlmAuditError(Exception):
    """Base class: a problem with the user's input, reported as one line."""

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None):
        self.path = path
        self.tensor = tensor
        where = ": ".join(part for part in (path, tensor) if part)
        super().__init__(f"{where}: {message}" if where else message)


class SourceNotFoundError(LlmAuditError, FileNotFoundError):
    """The model path, Hub id or revision does not exist (or is not cached while offline)."""


class CheckpointFormatError(LlmAuditError, ValueError):
    """A malformed checkpoint: truncated, bad header, offsets out of range, unknown dtype."""


class PickleRefusedError(LlmAuditError, PermissionError):
    """Only pickled `.bin` weights were found and the user did not opt in to reading them."""


class ConfigError(LlmAuditError, ValueError):
    """A configuration file or option makes no sense."""


class OutputError(LlmAuditError, OSError):
    """The report could not be written (folder not writable, disk full)."""


class LlmAuditWarning(UserWarning):
    """Numerical clean-up the user should know about (e.g. clipped negative eigenvalues)."""
