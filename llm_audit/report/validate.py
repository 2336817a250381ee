"""The boundary between an audit read from a file and the page code: every value checked once.

`render` reads an `audit.json` that anyone may have written; the page code behind this module
trusts what it is given. So `checked_audit` walks the whole document and refuses, with one line
naming the field, anything the page could choke on or be tricked by:

- numbers are finite, and integers fit in int64 (JSON allows 1e400, NaN and a 401-digit integer);
- each field the page draws from has its type (`summary.num_trap_layers` a count, not text that a
  template would paste into the page; `layers[i].shape` a list of counts; `flags` known flags);
- strings are bounded (`MAX_NAME_CHARS` for names, `MAX_TEXT_CHARS` for the rest), and every
  character that does not print (newlines, escapes, bidi overrides such as U+202E) is made
  visible (`untrusted.visible`), so no name can reorder the text shown around it.

What comes back has the same shape as what went in, with those guarantees; spectra are re-keyed by
the names as shown. Unknown keys are kept (an older page ignores them) but checked like the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from llm_audit.errors import ConfigError
from llm_audit.untrusted import MAX_NAME_CHARS, show, visible
from llm_audit.vocabulary import FLAGS, SCHEMA_VERSION, VERDICTS

MAX_TEXT_CHARS = 100_000  # a verdict reason, a version string, a file path: far below this
INT64 = (-(2**63), 2**63 - 1)
FIX = "pass the audit.json written by `llm-audit scan`, or scan the model again"

Check = Callable[[Any, str], Any]


class _Invalid(ConfigError):
    def __init__(self, where: str, value: Any, wanted: str):
        super().__init__(f"{where} is {show(value)}, not {wanted}; {FIX}")


def checked_audit(audit: Any) -> dict[str, Any]:
    """`audit` checked and made safe to show (see the module docstring); raises `ConfigError`
    naming the first field that fails, or saying the document is not an audit.json."""
    if not isinstance(audit, Mapping) or not isinstance(audit.get("layers"), list):
        raise ConfigError(f"not an llm-audit audit (no 'layers' list); {FIX}")
    version = audit.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"schema_version {show(version)} is not supported (this llm-audit reads "
            f"{SCHEMA_VERSION}); render it with the llm-audit version that wrote it, or scan the "
            "model again"
        )
    return _AUDIT(audit, "audit.json")


def checked_spectra(spectra: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The spectra keyed by layer names as `checked_audit` shows them."""
    return None if spectra is None else {visible(str(k)): v for k, v in spectra.items()}


# ---- checks: each takes (value, where) and returns the checked value ---------------------------


def value(v: Any, where: str) -> Any:
    """Any JSON value, its strings, numbers and keys bounded and made visible."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):
        return text(v, where)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return number(v, where)
    if isinstance(v, (list, tuple)):
        return [value(item, f"{where}[{i}]") for i, item in enumerate(v)]
    if isinstance(v, Mapping):
        return dict_of(value)(v, where)
    raise _Invalid(where, v, "a JSON value")


def text(v: Any, where: str, limit: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(v, str):
        raise _Invalid(where, v, "text")
    if len(v) > limit:
        raise ConfigError(f"{where} is over {limit} characters long; {FIX}")
    return visible(v)


def name(v: Any, where: str) -> str:
    return text(v, where, MAX_NAME_CHARS)


def number(v: Any, where: str) -> int | float:
    """A finite number; an integer within int64."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise _Invalid(where, v, "a number")
    if isinstance(v, (int, np.integer)):
        if not INT64[0] <= int(v) <= INT64[1]:
            raise ConfigError(f"{where} is an integer outside int64; {FIX}")
        return int(v)
    if not math.isfinite(v):
        raise _Invalid(where, v, "a finite number")
    return float(v)


def count(v: Any, where: str) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
        raise _Invalid(where, v, "a count (an integer of 0 or more)")
    return int(number(v, where))


def maybe(check: Check) -> Check:
    return lambda v, where: None if v is None else check(v, where)


def one_of(choices: tuple[str, ...]) -> Check:
    def check(v: Any, where: str) -> str:
        if v not in choices:
            raise _Invalid(where, v, "one of " + ", ".join(choices))
        return str(v)

    return check


def list_of(check: Check) -> Check:
    def checked(v: Any, where: str) -> list[Any]:
        if not isinstance(v, list):
            raise _Invalid(where, v, "a list")
        return [check(item, f"{where}[{i}]") for i, item in enumerate(v)]

    return checked


def mapping(fields: Mapping[str, Check], rest: Check = value) -> Check:
    """A mapping whose `fields` pass their checks (a missing one is checked as None) and whose
    other keys pass `rest`."""

    def checked(v: Any, where: str) -> dict[str, Any]:
        if not isinstance(v, Mapping):
            raise _Invalid(where, v, "a mapping")
        out = {}
        for key, item in v.items():
            shown = name(key, f"{where} key")
            out[shown] = fields.get(key, rest)(item, f"{where}.{shown}")
        for key, check in fields.items():
            if key not in v:
                check(None, f"{where}.{key}")  # raises where the field is required
        return out

    return checked


def dict_of(check: Check) -> Check:
    return mapping({}, check)


_count, _number, _text = maybe(count), maybe(number), maybe(text)
_counter = _count


def _is_counter(where: str) -> bool:
    """Whether a summary field is one of its counters (`num_alpha_lt_2`, `total_traps`, ...)."""
    return where.rsplit(".", 1)[-1].startswith(("num_", "total_"))


_names = maybe(list_of(name))

_LAYER_NUMBERS = (
    "alpha", "alpha_weighted", "D", "xmin", "xmax", "lambda_max", "log_norm",
    "log_spectral_norm", "stable_rank", "entropy", "Q", "max_rand_eval", "rand_bulk_max",
    "rand_sigma_mp", "rand_distance",
)  # fmt: skip
_LAYER_COUNTS = ("num_evals", "num_pl_spikes", "rand_num_spikes", "num_traps", "N", "M")
_TRAP_ENTRY = mapping({"row": _count, "col": _count, "value": _number, "z": _number})
_LAYER = mapping(
    {
        "name": name,
        "role": name,
        "status": name,
        "block": _count,
        "stack": _text,
        "reason": _text,
        "shape": maybe(list_of(count)),
        "flags": maybe(list_of(one_of(FLAGS))),
        "trap_entries": maybe(list_of(_TRAP_ENTRY)),
        **{k: _number for k in _LAYER_NUMBERS},
        **{k: _count for k in _LAYER_COUNTS},
    }
)
_SUMMARY = mapping(
    {
        "verdict": maybe(one_of(VERDICTS)),
        "verdict_reason": _text,
        "mean_alpha": _number,
        "median_alpha": _number,
        "seconds": _number,
        "excluded_from_summary": _names,
        "worst_layers": _names,
        "skipped": maybe(dict_of(count)),
        "alpha_by_role": maybe(
            dict_of(mapping({"mean": _number, "median": _number, "count": _count}))
        ),
        "outlier_dimensions": maybe(
            list_of(
                mapping(
                    {
                        "index": count,
                        "layers": list_of(name),
                        "entries": _count,
                        "max_abs_z": _number,
                        "chance": _number,
                    }
                )
            )
        ),
    },
    rest=lambda v, where: (
        count(v, where)
        if where.rsplit(".", 1)[-1].startswith(("num_", "total_"))
        else value(v, where)
    ),
)
_MODEL = mapping(
    {
        "id": _text,
        "source": _text,
        "revision": _text,
        "family": _text,
        "num_parameters": _count,
        "files": _names,
    }
)
_SETTINGS = mapping(
    {
        "seed": maybe(number),
        "started": _text,
        "thresholds": maybe(dict_of(maybe(number))),
        "verdict": maybe(dict_of(value)),
        "versions": maybe(dict_of(_text)),
    }
)
_AUDIT = mapping(
    {
        "model": maybe(_MODEL),
        "settings": maybe(_SETTINGS),
        "summary": maybe(_SUMMARY),
        "layers": list_of(_LAYER),
    }
)
