"""Tensor names to layers: which tensors are weight matrices, their block, role and orientation.

Layers come out in model order (embeddings, then block by block in the family file's order, then
the head), whatever order the checkpoint stores them in: safetensors headers and Hub indexes are
alphabetical, which puts block 10 before block 2. Within a block, experts follow one another for
each expert matrix (every expert's gate, then every expert's down), so same-shape matrices are
adjacent for batching.

A layer is a whole 2-D tensor, or one expert's slice of a fused 3-D expert tensor
(`slice_index`), or an FP8 weight paired with the scale that dequantizes it (`scale`), or a
quantized weight stored in several tensors (`quant`: MXFP4, GPTQ, AWQ, bitsandbytes; see the
`quant` package, which finds them and decodes them), or, when asked (`split_qkv`), the q, k or v
rows of a fused attention matrix (`rows`, see qkv.py). `Layer.read` returns its matrix either way,
and `Layer.matrix` the same matrix read lazily in row blocks; a tensor that looks quantized in a
layout the `quant` package does not decode is listed with the status `unsupported_quantization`
and a reason that names the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from llm_audit.architectures import (
    EMBEDDING_ROLES,
    STACKS,
    Family,
    Template,
    choose_family,
    generic_block,
    generic_expert,
    generic_role,
    generic_stack,
)
from llm_audit.errors import ConfigError
from llm_audit.lazy import torch
from llm_audit.qkv import Rows, split_rows
from llm_audit.quant import NotDecoded, Quantized, QuantizedWeight, Reader, find_quantized
from llm_audit.quant.fp8 import FP8_DTYPES, dequantize_scaled, fp8_scale
from llm_audit.sources.base import Source, TensorInfo
from llm_audit.spectral.esd import Gather, RowMatrix
from llm_audit.vocabulary import (
    TIED,
    TOO_SMALL,
    UNSUPPORTED_DTYPE,
    UNSUPPORTED_QUANTIZATION,
    UNSUPPORTED_SHAPE,
)

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
    expert: int | None = None  # the expert of a mixture-of-experts block
    slice_index: int | None = None  # this layer is tensor[slice_index] of a fused 3-D tensor
    scale: TensorInfo | None = None  # FP8 scale: the matrix is weight * scale (broadcast by block)
    rows: Rows | None = None  # this layer is q, k or v: these output rows of a fused matrix
    stack: str | None = None  # "encoder" or "decoder": with `block`, where the layer sits
    quant: QuantizedWeight | None = None  # stored quantized: decoded from these tensors

    @property
    def quantization(self) -> dict[str, object] | None:
        """What was dequantized to read it (method, bits, group size), for its record."""
        if self.quant is not None:
            return self.quant.describe()
        if self.scale is not None:
            return {"method": "fp8", "bits": 8, "group_size": None}
        return None

    @property
    def stored_tensors(self) -> list[TensorInfo]:
        """The checkpoint tensors read to build its matrix (for a source's read plan)."""
        if self.quant is not None:
            return list(self.quant.tensors)
        return [self.tensor] if self.scale is None else [self.tensor, self.scale]

    @property
    def name(self) -> str:
        """The tensor name; an expert slice adds its index (`...experts.gate_up_proj[3]`), a part
        of a fused qkv matrix its role (`...attn.c_attn.weight[q]`)."""
        name = self.tensor.name
        if self.slice_index is not None:
            name += f"[{self.slice_index}]"
        if self.rows is not None:
            name += f"[{self.rows.label}]"
        return name

    @property
    def is_embedding(self) -> bool:
        return self.role in EMBEDDING_ROLES

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape of what `read` returns (a slice drops the expert dimension, q/k/v rows keep
        their share of the output dimension)."""
        shape = self.tensor.shape if self.slice_index is None else self.tensor.shape[1:]
        if self.rows is None:
            return shape
        axis = self._out_axis
        return (*shape[:axis], self.rows.size, *shape[axis + 1 :])

    @property
    def _out_axis(self) -> int:
        return 1 if self.stored_in_out else 0

    @property
    def out_in(self) -> tuple[int, int]:
        """The matrix shape as (out_features, in_features) (first two dims of other tensors)."""
        a, b = self.stored_shape[0], self.stored_shape[1]
        return (b, a) if self.stored_in_out else (a, b)

    def read(self, source: Source) -> torch.Tensor:
        """The stored matrix on the CPU, not yet oriented: one expert's slice, FP8 dequantized."""
        if self.quant is not None:
            W = self.quant.rows(source, 0, self.tensor.shape[-2], expert=self.slice_index)
        elif self.slice_index is None:
            W = source.read(self.tensor)
        else:
            W = source.read_slice(self.tensor, self.slice_index)
        if self.scale is not None:
            W = dequantize_scaled(W, source.read(self.scale))
        if self.rows is not None:
            W = W.index_select(self._out_axis, self.rows.index())
        return W

    def matrix(self, source: Source) -> RowMatrix:
        """The matrix as (out, in), read in blocks of stored rows when the spectra ask for them.

        Where the source reads parts of a tensor (`partial_reads`), each block is read alone and
        `elements` is one `read` (a memory map for safetensors) or, for a dequantized matrix, its
        blocks copied into one float32 tensor; otherwise the matrix is read once, now, and sliced.
        """
        rows, cols = self.stored_shape[0], self.stored_shape[1]
        if not source.partial_reads:
            whole = self.read(source)
            return RowMatrix(
                lambda a, b: whole[a:b],
                (rows, cols),
                self.stored_in_out,
                dtype=whole.dtype,
                whole=lambda: whole,
            )
        decoded = self.scale is not None or self.quant is not None
        name = None if decoded else _TORCH_DTYPES.get(self.tensor.dtype)
        dtype = None if name is None else getattr(torch, name)
        return RowMatrix(
            lambda a, b: self.read_rows(source, a, b),
            (rows, cols),
            self.stored_in_out,
            dtype=dtype or torch.float32,
            # Float tensors are memory maps, read whole for free; dequantized ones are built
            # from row blocks by `elements`, or decoded element by element where they can be.
            whole=(lambda: self.read(source)) if dtype is not None else None,
            gather=self._gather(source) if dtype is None and self.rows is None else None,
        )

    def _gather(self, source: Source) -> Gather | None:
        """Decodes single stored elements, where the format can (see `RowMatrix.gather`)."""
        if self.quant is not None:
            return self.quant.element_reader(source, expert=self.slice_index)
        if self.scale is None:
            return source.element_reader(self.tensor, expert=self.slice_index)
        return None

    def read_rows(self, source: Source, start: int, stop: int) -> torch.Tensor:
        """Stored rows [start, stop) of what `read` returns, reading only those rows' bytes from
        a source with `partial_reads` (for q, k or v, the span of fused rows that holds them)."""
        if self.rows is None or self.stored_in_out:
            W = self._fused_rows(source, start, stop)
            return W if self.rows is None else W.index_select(1, self.rows.index())
        index = self.rows.index()[start:stop]
        first = int(index[0])
        return self._fused_rows(source, first, int(index[-1]) + 1).index_select(0, index - first)

    def _fused_rows(self, source: Source, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the whole stored tensor (or expert slice), dequantized."""
        if self.quant is not None:
            return self.quant.rows(source, start, stop, expert=self.slice_index)
        W = source.read_rows(self.tensor, start, stop, expert=self.slice_index)
        if self.scale is None:
            return W
        return dequantize_scaled(
            W, source.read(self.scale), first_row=start, rows=self.tensor.shape[-2]
        )


_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def is_layer_tensor(t: TensorInfo) -> bool:
    """Weights of 2 or more dimensions are layers; norms, biases and buffers (position ids) are not.

    Tensors of 3 or more dimensions that are not fused experts (convolution kernels) are listed
    with the status `unsupported_shape` rather than dropped silently.
    """
    return len(t.shape) >= 2 and (t.name == "weight" or t.name.endswith(".weight"))


def plan_layers(
    tensors: list[TensorInfo],
    config: dict[str, Any] | None,
    *,
    only: re.Pattern[str] | None = None,
    min_evals: int = 8,
    split_qkv: bool = False,
    read: Reader | None = None,
) -> tuple[list[Layer], str]:
    """The layers of a model in model order, and the architecture family used to name them.

    Quantized weights are found by the `quant` package and become layers under the name of the
    weight they stand for (`...q_proj.weight` for a GPTQ `...q_proj.qweight`); `read` reads the
    few bytes where a format keeps a weight's shape (bitsandbytes 4-bit), without which such
    weights are listed as `unsupported_quantization`.
    With `split_qkv`, each fused qkv matrix becomes three layers, q, k and v, sized by `config`'s
    head counts; `ConfigError` if its family has no known layout or the counts do not fit.
    """
    names = [t.name for t in tensors]
    family = choose_family(names, config)
    by_name = {t.name: t for t in tensors}
    quantized = find_quantized(tensors, config, read=read)
    tied = bool((config or {}).get("tie_word_embeddings", config is not None))
    layers: list[Layer] = []
    for t in tensors:
        if quantized.is_part(t.name):
            layers += _quantized_layers(t, quantized, family, by_name, tied=tied,
                                        min_evals=min_evals, only=only)  # fmt: skip
        elif only is not None and not only.search(t.name):
            continue
        elif _match(family, t.name) or is_layer_tensor(t) or _generic_fused(t):
            layers += _make_layers(t, family, t.name, by_name, tied=tied, min_evals=min_evals)
    if split_qkv:
        layers = [part for layer in layers for part in _split_qkv(layer, family, config, min_evals)]
    layers.sort(key=lambda layer: layer.sort_key)
    return layers, family.name if family else "generic"


def _match(family: Family | None, name: str) -> tuple[Template, dict[str, int]] | None:
    for template in family.templates if family else ():
        m = template.pattern.match(name)
        if m:
            return template, {k: int(v) for k, v in m.groupdict().items() if k != "prefix"}
    return None


def _tie_target(template: Template, name: str, by_name: dict[str, TensorInfo]) -> str | None:
    """The tensor that `name`'s layer is tied to: the template's target under `name`'s own prefix
    (`model.`), else the one tensor whose name ends with it (BertForMaskedLM ties
    `cls.predictions.decoder` to `bert.embeddings.word_embeddings`)."""
    m = template.pattern.match(name)
    if template.tied_to is None or m is None:
        return None
    same = m["prefix"] + template.tied_to
    hits = [same] if same in by_name else [n for n in by_name if n.endswith("." + template.tied_to)]
    return hits[0] if len(hits) == 1 else None


def _split_qkv(
    layer: Layer, family: Family | None, config: dict[str, Any] | None, min_evals: int
) -> list[Layer]:
    """A fused qkv layer as its q, k and v layers (in that order); any other layer unchanged."""
    if layer.role != "qkv" or layer.skip_status is not None:
        return [layer]  # tied, quantized or unreadable: reported whole, as stored
    match = _match(family, layer.tensor.name)
    layout = match[0].fused_qkv if match else None
    if layout is None:
        known = family.name if family else "generic"
        raise ConfigError(
            f"the {known} family names no q/k/v layout for this fused tensor; scan without "
            "--split-qkv",
            tensor=layer.tensor.name,
        )
    parts = split_rows(layout, layer.out_in[0], config, tensor=layer.tensor.name)
    out = []
    for i, rows in enumerate(parts):
        part = replace(layer, role=rows.label, rows=rows, sort_key=(*layer.sort_key, i))
        if min(part.out_in) < min_evals:
            part = replace(
                part,
                skip_status=TOO_SMALL,
                skip_reason=f"{min(part.out_in)} eigenvalues, fewer than min_evals={min_evals}",
            )
        out.append(part)
    return out


def _quantized_layers(
    t: TensorInfo,
    quantized: Quantized,
    family: Family | None,
    by_name: dict[str, TensorInfo],
    *,
    tied: bool,
    min_evals: int,
    only: re.Pattern[str] | None,
) -> list[Layer]:
    """The layers of a quantized weight (one per expert if it fuses experts), named after the
    weight it stands for, from its packed tensor `t`; none from its scales and zeros."""
    q = quantized.weights.get(t.name) or quantized.not_decoded.get(t.name)
    if q is None or (only is not None and not only.search(q.name)):
        return []  # a scale, a zero point, ... or a weight that --layers leaves out
    if isinstance(q, NotDecoded):  # listed under the weight's name, with the packed tensor's shape
        named = TensorInfo(q.name, t.shape, t.dtype, t.file)
        (layer,) = _make_layers(named, family, q.name, by_name, tied=tied, min_evals=min_evals,
                                sliced=False)  # fmt: skip
        return [replace(layer, skip_status=UNSUPPORTED_QUANTIZATION, skip_reason=q.reason)]
    made = _make_layers(q.as_tensor(), family, q.name, by_name, tied=tied, min_evals=min_evals,
                        decoded=True)  # fmt: skip
    return [replace(layer, quant=q, stored_in_out=q.stored_in_out) for layer in made]


def _generic_fused(t: TensorInfo) -> bool:
    """An unnamed 3-D tensor under an `experts` module: fused experts, by the common convention."""
    return len(t.shape) == 3 and "experts" in t.name.split(".")


def _make_layers(
    t: TensorInfo,
    family: Family | None,
    name: str,
    by_name: dict[str, TensorInfo],
    *,
    tied: bool,
    min_evals: int,
    sliced: bool = True,
    decoded: bool = False,
) -> list[Layer]:
    """The layer of `t` (one per expert if it fuses experts), its role found from `name`."""
    match = _match(family, name)
    if match is not None:
        template, groups = match
        block, expert = groups.get("block"), groups.get("expert")
        role, in_out, index, section = (
            template.role,
            template.stored_in_out,
            template.index,
            template.section,
        )
        tied_to, stack = _tie_target(template, name, by_name), template.stack
    else:
        block, expert, role, in_out, index, tied_to, stack = (
            generic_block(name),
            generic_expert(name),
            generic_role(name),
            False,
            999,
            None,
            generic_stack(name),
        )
        if "experts" in name.split(".") and role in ("gate", "up", "down", "gate_up"):
            role = f"expert_{role}"
        section = 1 if block is not None else (0 if role == "embed" else 2)
    # Model order: what precedes the blocks, each stack's blocks (encoder first), what follows.
    place = (1, STACKS.index(stack), section) if stack else (2 * (section // 2), 0, 0)
    key = (place, block if block is not None else -1, index, -1 if expert is None else expert,
           _natural(name))  # fmt: skip
    scale = fp8_scale(t, by_name)
    fused = (
        sliced and len(t.shape) == 3 and (match[0].fused_experts if match else _generic_fused(t))
    )
    status, reason = _skip(
        t,
        tied_to if tied and tied_to in by_name else None,
        min_evals,
        fused=fused,
        scaled=scale is not None or decoded,
    )
    layer = Layer(
        t, block, role, in_out, key, status, reason, expert=expert, scale=scale, stack=stack
    )
    if not fused:
        return [layer]
    # One layer per expert of the (expert, ...) tensor, each read on its own.
    return [
        replace(layer, expert=e, slice_index=e, sort_key=(*key[:3], e, key[4]))
        for e in range(t.shape[0])
    ]


def _skip(
    t: TensorInfo, tied_to: str | None, min_evals: int, *, fused: bool, scaled: bool
) -> tuple[str | None, str | None]:
    shape = t.shape[1:] if fused else t.shape
    if len(shape) != 2:
        return UNSUPPORTED_SHAPE, f"{len(t.shape)}-D tensor; only 2-D matrices are analyzed"
    if tied_to is not None:
        return TIED, f"tied to {tied_to} (the same matrix), analyzed there"
    if not (scaled or decodable(t.dtype)):
        hint = " without a weight_scale tensor" if t.dtype in FP8_DTYPES else ""
        return UNSUPPORTED_DTYPE, f"dtype {t.dtype}{hint} has no dequantization rule"
    if min(shape) < min_evals:
        return TOO_SMALL, f"{min(shape)} eigenvalues, fewer than min_evals={min_evals}"
    return None, None


def decodable(dtype: str) -> bool:
    """Float dtypes, and the GGUF quantized types the `gguf` package dequantizes."""
    from llm_audit.sources.gguf import dequantizable_types

    return dtype in FLOAT_DTYPES or dtype in dequantizable_types()
