"""Architecture knowledge as data: which tensors are layers, their block, role and orientation.

One JSON file per model family in `_data/architectures/` lists tensor-name templates
(`model.layers.{block}.self_attn.q_proj.weight`) with a role. Templates match as name suffixes, so
prefixed checkpoints (`bert.encoder...`, `model.model...`) match too. Mixture-of-experts weights
come two ways: one tensor per expert (`...experts.{expert}.w1.weight`), or all experts fused in one
3-D tensor whose first dimension is the expert (`"fused_experts": true`), which is analyzed slice by
slice. `generic.json` covers any 2-D
weight the family files do not name. Files are validated strictly when loaded: an unknown key is an
error, not a silently ignored typo.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from llm_audit.qkv import LAYOUTS
from llm_audit.roles import EMBEDDING_ROLES as EMBEDDING_ROLES  # where summary.py looks for it
from llm_audit.roles import ROLES

STACKS = ("encoder", "decoder")  # in model order


@dataclass(frozen=True)
class Template:
    pattern: re.Pattern[str]
    role: str
    index: int  # position in the family file: the order of tensors within a block
    section: int  # 0 before the blocks, 1 inside them, 2 after them (of its stack, if any)
    stored_in_out: bool
    tied_to: str | None
    fused_experts: bool = False  # a 3-D tensor (expert, ...): one layer per expert slice
    fused_qkv: str | None = None  # q, k, v rows in one matrix, in this layout (qkv.LAYOUTS)
    stack: str | None = None  # "encoder" or "decoder" in an encoder-decoder model


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    templates: tuple[Template, ...]


@dataclass(frozen=True)
class Generic:
    block_pattern: re.Pattern[str]
    roles_by_keyword: tuple[tuple[str, str], ...]


_FAMILY_KEYS = {"family", "model_types", "tensors", "stored_in_out", "_comment"}
_TENSOR_KEYS = {"name", "role", "stored_in_out", "tied_to", "fused_experts", "fused_qkv", "stack"}
_GENERIC_KEYS = {
    "family",
    "model_types",
    "tensors",
    "block_pattern",
    "roles_by_keyword",
    "_comment",
}


def _template_regex(name: str) -> re.Pattern[str]:
    body = re.escape(name)
    for field in ("block", "expert"):
        body = body.replace(re.escape("{" + field + "}"), rf"(?P<{field}>\d+)")
    return re.compile(rf"^(?P<prefix>(?:.*\.)?){body}$")  # prefix: `bert.`, `model.`


def parse_family(data: dict[str, Any], where: str) -> Family:
    """Validate one family file into a `Family` (ValueError naming the file and key if wrong)."""
    _check_keys(data, _FAMILY_KEYS, where)
    default_in_out = bool(data.get("stored_in_out", False))
    templates = []
    seen_block: set[str | None] = set()  # the stacks whose blocks have begun
    for i, entry in enumerate(data["tensors"]):
        _check_keys(entry, _TENSOR_KEYS, f"{where} tensors[{i}]")
        if entry["role"] not in ROLES:
            raise ValueError(f"{where}: tensors[{i}] has unknown role {entry['role']!r}")
        if entry.get("fused_qkv", LAYOUTS[0]) not in LAYOUTS:
            raise ValueError(
                f"{where}: tensors[{i}] has unknown fused_qkv layout {entry['fused_qkv']!r}; "
                f"known: {', '.join(LAYOUTS)}"
            )
        if entry.get("stack", STACKS[0]) not in STACKS:
            raise ValueError(f"{where}: tensors[{i}] has unknown stack {entry['stack']!r}")
        stack = entry.get("stack")
        in_block = "{block}" in entry["name"]
        if in_block:
            seen_block.add(stack)
        templates.append(
            Template(
                pattern=_template_regex(entry["name"]),
                role=entry["role"],
                index=i,
                section=1 if in_block else (2 if stack in seen_block else 0),
                stored_in_out=bool(entry.get("stored_in_out", default_in_out)),
                tied_to=entry.get("tied_to"),
                fused_experts=bool(entry.get("fused_experts", False)),
                fused_qkv=entry.get("fused_qkv"),
                stack=stack,
            )
        )
    return Family(data["family"], tuple(data["model_types"]), tuple(templates))


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    required = {k for k in ("family", "model_types", "tensors", "name", "role") if k in allowed}
    missing = required - set(data)
    if missing:
        raise ValueError(f"{where}: missing key(s) {sorted(missing)}")


@cache
def families() -> tuple[tuple[Family, ...], Generic]:
    """Every family file, validated, and the generic fallback rules."""
    folder = resources.files("llm_audit") / "_data" / "architectures"
    found = []
    generic: Generic | None = None
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".json"):
            continue
        data = json.loads(item.read_text())
        if item.name == "generic.json":
            _check_keys(data, _GENERIC_KEYS, item.name)
            generic = Generic(
                block_pattern=re.compile(data["block_pattern"]),
                roles_by_keyword=tuple((r["keyword"], r["role"]) for r in data["roles_by_keyword"]),
            )
        else:
            found.append(parse_family(data, item.name))
    if generic is None:
        raise RuntimeError("llm_audit/_data/architectures/generic.json is missing")
    return tuple(found), generic


MIN_NAME_EVIDENCE = 2  # names a family must match to be chosen for a file without a model_type


def choose_family(names: list[str], config: dict[str, Any] | None) -> Family | None:
    """The family file that lists config.json's model_type; None (the generic rules) for a
    model_type no file lists. Without a model_type (a bare weights file), the family whose
    templates match most names (at least two): the names are then the only evidence."""
    fams, _ = families()
    model_type = (config or {}).get("model_type")
    for fam in fams:
        if model_type in fam.model_types:
            return fam
    if model_type is not None:
        return None
    hits = {
        fam.name: sum(any(t.pattern.match(n) for t in fam.templates) for n in names) for fam in fams
    }
    # One matching name (a bare `model.embed_tokens.weight` beside tensors no family lists) is no
    # evidence: the generic rules. Between families matching as many names, the one with the
    # fewest templates: llama's names are a subset of its MoE relatives'.
    best = max(fams, key=lambda fam: (hits[fam.name], -len(fam.templates)), default=None)
    return best if best is not None and hits[best.name] >= MIN_NAME_EVIDENCE else None


def model_family(config: dict[str, Any] | None, naming: str | None) -> str | None:
    """The family a report records: the architecture config.json (or a GGUF header) declares,
    else, for a bare weights file, the family file whose names it matched (`naming`)."""
    config = config or {}
    declared = config.get("gguf_architecture") or config.get("model_type")
    return str(declared) if declared else naming


def generic_role(name: str) -> str:
    _, generic = families()
    parts = name.split(".")
    for keyword, role in generic.roles_by_keyword:
        if keyword in parts:
            return role
    return "other"


def generic_stack(name: str) -> str | None:
    """`encoder` or `decoder` when the name has that component (`model.decoder.layers.0...`)."""
    parts = name.split(".")
    return next((stack for stack in STACKS if stack in parts), None)


def generic_block(name: str) -> int | None:
    _, generic = families()
    match = generic.block_pattern.search("." + name)
    return int(match.group(1)) if match else None


def generic_expert(name: str) -> int | None:
    """The expert index of a per-expert tensor name (`...experts.7.w1.weight`), else None."""
    match = re.search(r"\.experts\.(\d+)\.", "." + name)
    return int(match.group(1)) if match else None
