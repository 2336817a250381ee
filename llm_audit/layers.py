"""Tensor names to layers: which tensors are weight matrices, their block, role and orientation.

Layers come out in model order (embeddings, then block by block in the family file's order, then
the head), whatever order the checkpoint stores them in: safetensors headers and Hub indexes are
alphabetical, which puts block 10 before block 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llm_audit.architectures import (
    EMBEDDING_ROLES,
    Family,
    Template,
    choose_family,
    generic_block,
    generic_role,
)
from llm_audit.sources.base import TensorInfo

FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class Layer:
    """One weight matrix to analyze (or to report as skipped, with `skip_reason`)."""

    tensor: TensorInfo
    block: int | None
    role: str
    stored_in_out: bool  # stored as (in, out), e.g. HF GPT-2 Conv1D: transpose to (out, in)
    sort_key: tuple[Any, ...]
    skip_status: str | None = None  # why it is not analyzed: "tied", "unsupported_dtype", ...
    skip_reason: str | None = None

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def is_embedding(self) -> bool:
        return self.role in EMBEDDING_ROLES

    @property
    def out_in(self) -> tuple[int, int]:
        """The matrix shape as (out_features, in_features) (first two dims of other tensors)."""
        a, b = self.tensor.shape[0], self.tensor.shape[1]
        return (b, a) if self.stored_in_out else (a, b)


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def is_layer_tensor(t: TensorInfo) -> bool:
    """Weights of 2 or more dimensions are layers; norms, biases and buffers (position ids) are not.

    Tensors of 3 or more dimensions (fused MoE experts, convolution kernels) are listed with the
    status `unsupported_shape` rather than dropped silently.
    """
    return len(t.shape) >= 2 and (t.name == "weight" or t.name.endswith(".weight"))


def plan_layers(
    tensors: list[TensorInfo],
    config: dict[str, Any] | None,
    *,
    only: re.Pattern[str] | None = None,
    min_evals: int = 8,
) -> tuple[list[Layer], str]:
    """The layers of a model in model order, and the architecture family used to name them."""
    names = [t.name for t in tensors]
    family = choose_family(names, config)
    present = set(names)
    tied = (config or {}).get("tie_word_embeddings", config is not None)
    layers = []
    for t in tensors:
        template = _match(family, t.name)
        if template is None and not is_layer_tensor(t):
            continue
        if only is not None and not only.search(t.name):
            continue
        layers.append(_make_layer(t, template, present, tied=bool(tied), min_evals=min_evals))
    layers.sort(key=lambda layer: layer.sort_key)
    return layers, family.name if family else "generic"


def _match(family: Family | None, name: str) -> tuple[Template, int | None] | None:
    for template in family.templates if family else ():
        m = template.pattern.match(name)
        if m:
            return template, int(m.group(1)) if m.groups() else None
    return None


def _make_layer(
    t: TensorInfo,
    match: tuple[Template, int | None] | None,
    present: set[str],
    *,
    tied: bool,
    min_evals: int,
) -> Layer:
    if match is not None:
        template, block = match
        role, in_out, index, section = (
            template.role,
            template.stored_in_out,
            template.index,
            template.section,
        )
        tied_to = template.tied_to
    else:
        block, role, in_out, index, tied_to = (
            generic_block(t.name),
            generic_role(t.name),
            False,
            999,
            None,
        )
        section = 1 if block is not None else (0 if role == "embed" else 2)
    key = (section, block if block is not None else -1, index, _natural(t.name))
    status, reason = _skip(t, tied_to if tied and tied_to in present else None, min_evals)
    return Layer(t, block, role, in_out, key, status, reason)


def _skip(t: TensorInfo, tied_to: str | None, min_evals: int) -> tuple[str | None, str | None]:
    if len(t.shape) != 2:
        return "unsupported_shape", f"{len(t.shape)}-D tensor; only 2-D matrices are analyzed"
    if tied_to is not None:
        return "tied", f"tied to {tied_to} (the same matrix), analyzed there"
    if t.dtype not in FLOAT_DTYPES:
        return "unsupported_dtype", f"dtype {t.dtype} has no dequantization rule"
    if min(t.shape) < min_evals:
        return "too_small", f"{min(t.shape)} eigenvalues, fewer than min_evals={min_evals}"
    return None, None
