"""Where a model's correlation traps live: on its outlier dimensions, in a structure of their
own layer, or scattered.

A trap is a spike that survives shuffling W's entries, so it is made of a few huge entries (the
`trap_entries` of `spectral/traps.py`: a layer's largest |w − μ|, the first `num_traps` of them
the ones that stand above the MP edge). Two different things put huge entries in a matrix:

- Trained transformers have a few *outlier dimensions* of the residual stream (Kovaleva et al.
  2021; Dettmers et al. 2022, LLM.int8(); Sun et al. 2024, massive activations): hidden indices
  that carry huge values, so the matrices that write to the stream have huge entries on those rows
  and the matrices that read it on those columns, the same indices in layer after layer. A healthy
  feature, and the reason int8 quantization keeps those dimensions in high precision.
- Anti-grokking (arXiv 2602.02859, App. G) grows extreme entries with no such order: the collapsed
  MNIST MLP's ten largest first-layer entries lie in 4 rows (hidden units) and 10 columns.

So each trap entry is placed on the hidden axis (`hidden_axis`: the row of a matrix whose output
is the residual stream, the column of one that reads it or of an embedding), and a hidden index is
one of the model's outlier dimensions when the trap layers' largest entries pile up on it more
than entries at random positions could: the chance that any of the H hidden indices would get that
many of the n placed entries (a binomial tail, times H) is at most `outlier_dimension_chance`
(1e-3). Measured (README, "Outlier dimensions or scattered traps"): MiniLM's four dimensions have
chances of 2e-11 or less, all-mpnet-base-v2's seven 2e-5 or less, while 90 huge entries planted at
random positions in MiniLM made no dimension of their own. A trap layer is `outlier_dimension` when
every one of its trap entries lies on an outlier dimension, otherwise `scattered`: a new huge entry
at a random place in a layer that has outlier dimensions too makes the layer scattered again.

A layer's trap entries can also share a few rows *and* a few columns of that layer alone (a grid of
three rows by three columns, seen in a released model): `structured`, informational like
`outlier_dimension`, when entries at uniformly random positions would crowd into so few distinct
rows, and into so few distinct columns, each with chance at most the same bound
(`structure_chance`). Anti-grokking's entries do not: the MNIST MLP's collapse grows its largest
first-layer entries on a few hidden units (rows), but on ten different input pixels (columns).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_audit.roles import EMBEDDING_ROLES, HIDDEN_SIZE_KEYS, RESIDUAL
from llm_audit.vocabulary import OUTLIER_DIMENSION, SCATTERED, STRUCTURED

ROW, COLUMN = 0, 1


@dataclass(frozen=True)
class OutlierDimension:
    """A hidden index on which the trap layers' largest entries pile up."""

    index: int
    layers: tuple[str, ...]  # the layers whose largest entries include it, in model order
    entries: int  # how many of the located entries lie on it
    max_abs_z: float  # its most extreme entry, in standard deviations of its matrix
    chance: float  # that random positions would put this many entries on any one index

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "layers": list(self.layers),
            "entries": self.entries,
            "max_abs_z": self.max_abs_z,
            "chance": self.chance,
        }


@dataclass(frozen=True)
class TrapPlaces:
    """The model's records with `trap_kind` set, and the outlier dimensions behind it."""

    records: list[dict[str, Any]]
    hidden_size: int | None
    dimensions: list[OutlierDimension]


def hidden_size(
    config: Mapping[str, Any] | None, records: Sequence[Mapping[str, Any]]
) -> int | None:
    """The residual stream's width: config.json's hidden size, else the embedding's width."""
    for where in (config or {}, (config or {}).get("text_config") or {}):
        for key in HIDDEN_SIZE_KEYS:
            value = where.get(key) if isinstance(where, Mapping) else None
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
                return value
    widths = [r["shape"][1] for r in records if r.get("role") == "embed" and r.get("shape")]
    return int(widths[0]) if widths else None


def hidden_axis(role: str, shape: Sequence[int], hidden: int | None) -> int | None:
    """ROW or COLUMN of an (out, in) matrix that indexes the residual stream, None if neither.

    The role decides (`roles.RESIDUAL`): a matrix that writes to the stream has it on its rows
    (its output), one that reads it on its columns (its input), and an embedding or head,
    stored (vocabulary, hidden), on its columns. A matrix of another role (or one whose role
    side does not fit) is placed by shape, if exactly one of its sides has the hidden size.
    """
    if hidden is None or len(shape) != 2:
        return None
    residual = RESIDUAL.get(role)
    by_role = (
        COLUMN
        if role in EMBEDDING_ROLES or residual == "reads"
        else ROW
        if residual == "writes"
        else None
    )
    if by_role is not None and shape[by_role] == hidden:
        return by_role
    fits = [axis for axis in (ROW, COLUMN) if shape[axis] == hidden]
    return fits[0] if len(fits) == 1 else None


def chance_of_pile(count: int, n: int, hidden: int) -> float:
    """Chance that n entries at uniformly random hidden indices put `count` or more on any one of
    the `hidden` indices: the union bound hidden · P(Binomial(n, 1/hidden) ≥ count), at most 1."""
    if count <= 0 or count > n or hidden <= 1:
        return 1.0 if count <= n else 0.0
    p = 1.0 / hidden
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
        + j * math.log(p) + (n - j) * math.log1p(-p)
        for j in range(count, n + 1)
    ]  # fmt: skip
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, hidden * tail)


def chance_of_few(distinct: int, k: int, n: int) -> float:
    """Chance that k draws, uniform over n values, take at most `distinct` different values:
    Σ_{j ≤ distinct} C(n, j)·S(k, j)·j!/n^k, S the Stirling numbers of the second kind."""
    if distinct >= min(k, n):
        return 1.0
    stirling = [[0] * (k + 1) for _ in range(k + 1)]  # S(i, j), exact integers
    stirling[0][0] = 1
    for i in range(1, k + 1):
        for j in range(1, i + 1):
            stirling[i][j] = j * stirling[i - 1][j] + stirling[i - 1][j - 1]
    total = 0.0
    for j in range(1, distinct + 1):
        log_ways = math.lgamma(n + 1) - math.lgamma(n - j + 1) + math.log(stirling[k][j])
        total += math.exp(log_ways - k * math.log(n))
    return min(1.0, total)


def structure_chance(entries: Sequence[Mapping[str, Any]], shape: Sequence[int]) -> float:
    """The larger of two chances: that entries at uniformly random positions of an (out, in)
    matrix of `shape` would fall in as few distinct rows as `entries` do, and in as few distinct
    columns. Small only when rows *and* columns are shared (a grid); a few hot rows with
    columns all different, as anti-grokking grows them, are not a structure. 1.0 for fewer than 3.
    """
    if len(entries) < 3 or len(shape) != 2:
        return 1.0
    k = len(entries)
    rows = len({e["row"] for e in entries})
    cols = len({e["col"] for e in entries})
    return max(chance_of_few(rows, k, int(shape[0])), chance_of_few(cols, k, int(shape[1])))


def place_traps(
    records: Sequence[Mapping[str, Any]], hidden: int | None, max_chance: float
) -> TrapPlaces:
    """Every record with `trap_kind` (None without trap entries) and its trap entries with their
    `hidden_index` (None off the hidden axis), and the model's outlier dimensions."""
    located: list[tuple[str, int, float]] = []  # (layer, hidden index, z) of every placed entry
    placed = []
    for record in records:
        entries = record.get("trap_entries")
        if not entries:
            placed.append({**record, "trap_kind": None})
            continue
        axis = hidden_axis(str(record.get("role")), record.get("shape") or (), hidden)
        key = ("row", "col")[axis] if axis is not None else None
        entries = [{**e, "hidden_index": e[key] if key else None} for e in entries]
        located += [(record["name"], e["hidden_index"], e["z"]) for e in entries if key]
        placed.append({**record, "trap_entries": entries})
    dimensions = _dimensions(located, hidden, max_chance) if hidden else []
    indices = {d.index for d in dimensions}
    for record in placed:
        entries = record.get("trap_entries")
        if entries:
            causes = entries[: max(1, int(record.get("num_traps", 0)))]
            on_dimension = all(e["hidden_index"] in indices for e in causes)
            chance = structure_chance(entries, record.get("shape") or ())
            record["trap_structure_chance"] = chance
            record["trap_kind"] = (
                OUTLIER_DIMENSION
                if on_dimension
                else STRUCTURED
                if chance <= max_chance
                else SCATTERED
            )
    return TrapPlaces(placed, hidden, dimensions)


def _dimensions(
    located: list[tuple[str, int, float]], hidden: int, max_chance: float
) -> list[OutlierDimension]:
    """Indices tested from the most crowded down; each one found leaves the others' entries to
    fall on the remaining indices, so a very crowded dimension does not hide the next one."""
    counts = Counter(index for _, index, _ in located)
    found = []
    n, indices = len(located), hidden
    for index, count in counts.most_common():
        chance = chance_of_pile(count, n, indices)
        if chance > max_chance:
            break  # counts fall, so chances rise from here on
        on = [(layer, z) for layer, i, z in located if i == index]
        layers = tuple(dict.fromkeys(layer for layer, _ in on))
        max_z = max(abs(z) for _, z in on)
        found.append(OutlierDimension(index, layers, count, max_z, chance))
        n, indices = n - count, indices - 1
    return found
