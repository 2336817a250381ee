"""Fused attention projections split into q, k and v by the head counts in config.json.

Many checkpoints store W_q, W_k and W_v as one matrix whose output rows hold all three. Which rows
are whose depends on the family, so each family file names its layout (`"fused_qkv"`):

- `contiguous`: all of q, then k, then v: GPT-2 `c_attn` (Conv1D, stored (in, out)), Phi-3
  `qkv_proj`, Falcon with `multi_query` (one k and one v head). Grouped-query attention (GQA) makes
  k and v smaller than q: heads·d, kv_heads·d, kv_heads·d rows.
- `per_head`: `[heads, 3, head_dim]`, each head's q, k, v rows together: GPT-NeoX/Pythia
  `query_key_value`, Falcon without `multi_query`.
- `per_kv_group`: `[kv_heads, heads/kv_heads + 2, head_dim]`, each key/value group's q heads
  then its k and v: Falcon's `new_decoder_architecture` (Falcon-40B/180B).
- `falcon`: one of the three above, chosen by config.json as transformers' FalconAttention does.

Head counts come from config.json (`num_attention_heads`/`n_head`, `num_key_value_heads`/
`num_kv_heads`, `head_dim` or hidden size / heads); if they do not add up to the fused matrix's
rows, that is a `ConfigError`, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_audit.errors import ConfigError
from llm_audit.lazy import torch
from llm_audit.roles import HIDDEN_SIZE_KEYS

LAYOUTS = ("contiguous", "per_head", "per_kv_group", "falcon")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_head_kv")


@dataclass(frozen=True)
class Rows:
    """The output rows of q, k or v in a fused matrix: `width` rows at `offset` of each of
    `groups` consecutive runs of `stride` rows (one run when the part is contiguous)."""

    label: str  # "q", "k" or "v": the layer's role
    offset: int
    width: int
    groups: int = 1
    stride: int = 0

    @property
    def size(self) -> int:
        return self.groups * self.width

    def index(self) -> torch.Tensor:
        """The row indices, in order (int64), for `index_select`."""
        starts = torch.arange(self.groups) * self.stride + self.offset
        return (starts[:, None] + torch.arange(self.width)).reshape(-1)


@dataclass(frozen=True)
class Heads:
    heads: int
    kv_heads: int
    head_dim: int


def split_rows(
    layout: str, out_features: int, config: dict[str, Any] | None, *, tensor: str
) -> tuple[Rows, Rows, Rows]:
    """The q, k and v rows of a fused (out_features x in) matrix stored in `layout`.

    Raises `ConfigError` naming `tensor` when config.json lacks the head counts or they do not
    add up to `out_features`.
    """
    config = config or {}
    heads = _heads(config, tensor)
    if layout == "falcon":
        layout, heads = _falcon(config, heads)
    h, kv, d = heads.heads, heads.kv_heads, heads.head_dim
    parts: tuple[Rows, Rows, Rows]
    if layout == "contiguous":
        parts = (Rows("q", 0, h * d), Rows("k", h * d, kv * d), Rows("v", (h + kv) * d, kv * d))
    elif layout == "per_head":
        if kv != h:
            raise ConfigError(
                f"the per-head [heads, 3, head_dim] layout needs as many key/value heads as heads, "
                f"config.json gives {h} and {kv}; scan without --split-qkv",
                tensor=tensor,
            )
        parts = (
            Rows("q", 0, d, h, 3 * d),
            Rows("k", d, d, h, 3 * d),
            Rows("v", 2 * d, d, h, 3 * d),
        )
    elif layout == "per_kv_group":
        if kv < 1 or h % kv:
            raise ConfigError(
                f"{h} heads do not divide into {kv} key/value groups; scan without --split-qkv",
                tensor=tensor,
            )
        g, stride = h // kv, (h // kv + 2) * d
        parts = (
            Rows("q", 0, g * d, kv, stride),
            Rows("k", g * d, d, kv, stride),
            Rows("v", (g + 1) * d, d, kv, stride),
        )
    else:
        raise ConfigError(f"unknown fused qkv layout {layout!r}; known: {', '.join(LAYOUTS)}")
    total = sum(p.size for p in parts)
    if total != out_features:
        raise ConfigError(
            f"fused qkv has {out_features} output rows, but config.json's {h} heads, {kv} "
            f"key/value heads and head_dim {d} give {total} ({layout} layout); check those keys "
            "or scan without --split-qkv",
            tensor=tensor,
        )
    return parts


def _heads(config: dict[str, Any], tensor: str) -> Heads:
    heads = _first_int(config, _HEADS)
    if heads is None or heads < 1:
        raise ConfigError(
            "splitting fused qkv needs the number of attention heads from config.json "
            f"({' or '.join(_HEADS)}); none found, so scan without --split-qkv",
            tensor=tensor,
        )
    kv = _first_int(config, _KV_HEADS) or heads
    head_dim = _first_int(config, ("head_dim",))
    if head_dim is None:
        hidden = _first_int(config, HIDDEN_SIZE_KEYS)
        if hidden is None or hidden % heads:
            raise ConfigError(
                "splitting fused qkv needs head_dim, or a hidden size "
                f"({' or '.join(HIDDEN_SIZE_KEYS)}) divisible by the {heads} heads, in "
                "config.json; scan without --split-qkv",
                tensor=tensor,
            )
        head_dim = hidden // heads
    if kv < 1 or head_dim < 1:
        raise ConfigError(
            f"config.json gives {kv} key/value heads and head_dim {head_dim}; both must be at "
            "least 1 to split fused qkv, so scan without --split-qkv",
            tensor=tensor,
        )
    return Heads(heads, kv, head_dim)


def _falcon(config: dict[str, Any], heads: Heads) -> tuple[str, Heads]:
    """transformers' FalconAttention._split_heads: which layout, and how many k/v heads."""
    if config.get("new_decoder_architecture"):
        return "per_kv_group", heads
    if config.get("multi_query", True):  # FalconConfig's default
        return "contiguous", Heads(heads.heads, 1, heads.head_dim)
    return "per_head", Heads(heads.heads, heads.heads, heads.head_dim)


def _first_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
