"""Every error llm-audit raises on bad input, in one place.

Each class also inherits the built-in exception a caller would naturally catch, carries the file or
tensor it is about, and its message ends with how to fix the problem. The CLI maps any
`LlmAuditError` to one line on stderr and exit code 2; names taken from untrusted files are
escaped so that the message stays one line.
"""

from __future__ import annotations


class LlmAuditError(Exception):
    """Base class: a problem with the user's input, reported as one line."""

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None):
        self.path = path
        self.tensor = tensor
        where = ": ".join(part for part in (path, _shorten(tensor)) if part)
        super().__init__(_one_line(f"{where}: {message}" if where else message))


def _shorten(name: str | None, limit: int = 200) -> str | None:
    """A tensor name from a hostile header can be megabytes long; a message shows its start."""
    return name if name is None or len(name) <= limit else name[: limit - 3] + "..."


def _one_line(text: str) -> str:
    """Escape newlines, control characters and lone surrogates (from names in untrusted files),
    so the message stays one printable line whatever the file holds."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
