"""Compare fine-tunes (or merges, quantizations, later checkpoints) with their base, layer by layer.

Layers are aligned by tensor name and shape, and whatever does not align is reported, never paired
by position. Both models are streamed in lockstep, one aligned layer at a time: the base matrix,
each other model's matrix and their difference ΔW = W_other − W_base, whose Gram is formed from
row blocks of both without a full-size ΔW. A LoRA adapter given as OTHER is applied on the fly
(W + B·A·s), so memory stays bounded by a few matrices, never by two models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from llm_audit import engine
from llm_audit.config import AuditConfig, load_config
from llm_audit.errors import CheckpointFormatError, ConfigError
from llm_audit.flags import layer_flags
from llm_audit.layers import Layer, plan_layers
from llm_audit.result import write_all_or_nothing, write_json
from llm_audit.scan import ModelSpec, slug
from llm_audit.sources import Source, open_source
from llm_audit.sources.peft import LoraAdapterSource
from llm_audit.spectral.esd import Difference, Matrix, RowReader

ALIGNMENTS = ("aligned", "missing", "extra", "shape_changed")
DELTA_COLUMNS = ("alpha", "D", "stable_rank", "log_norm", "num_traps", "rand_num_spikes", "status")


@dataclass
class _Model:
    label: str
    source: Source
    layers: dict[str, Layer]
    adapter: LoraAdapterSource | None = None  # OTHER given as a LoRA adapter of the base


@dataclass
class ComparisonResult:
    """What `llm_audit.compare` returns; `records` hold one entry per layer name."""

    base: dict[str, Any]
    others: list[dict[str, Any]]
    settings: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    spectra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "base": self.base,
            "others": self.others,
            "settings": self.settings,
            "summary": self.summary,
            "layers": self.records,
        }

    def save(self, folder: str | Path) -> Path:
        """Write compare.json, compare.csv and the page compare.html into `folder`."""
        from llm_audit.report.compare_page import render_compare_html

        def write(staging: Path) -> None:
            write_json(staging / "compare.json", self.to_json())
            pd.DataFrame(self.table()).to_csv(staging / "compare.csv", index=False)
            page = render_compare_html(self.to_json(), self.spectra)
            (staging / "compare.html").write_text(page, encoding="utf-8")

        return write_all_or_nothing(Path(folder), write)

    def table(self) -> list[dict[str, Any]]:
        """One flat row per (layer, other model), for compare.csv."""
        rows = []
        for r in self.records:
            for other in self.others:
                label = other["label"]
                base, mine = r["models"].get("base", {}), r["models"].get(label, {})
                delta = r["delta"].get(label, {})
                rows.append(
                    {
                        "name": r["name"],
                        "block": r["block"],
                        "role": r["role"],
                        "other": label,
                        "alignment": r["alignment"][label],
                        "base_alpha": base.get("alpha"),
                        "other_alpha": mine.get("alpha"),
                        "delta_alpha": r["delta_alpha"].get(label),
                        "base_num_traps": base.get("num_traps"),
                        "other_num_traps": mine.get("num_traps"),
                        "new_flags": ",".join(r["new_flags"].get(label, [])),
                        "vanished_flags": ",".join(r["vanished_flags"].get(label, [])),
                        **{
                            f"dW_{k}": delta.get(k)
                            for k in (*DELTA_COLUMNS, "relative_norm", "effective_rank")
                        },
                        "change_score": r["change_score"].get(label),
                    }
                )
        return rows


def compare(
    base: ModelSpec,
    *others: ModelSpec,
    revision: str | None = None,
    config: AuditConfig | str | Path | None = None,
    traps: bool | None = None,
    device: str | None = None,
    progress: bool = False,
) -> ComparisonResult:
    """Audit `base` and each of `others` layer by layer, with the spectrum of every update ΔW."""
    if not others:
        raise ConfigError("compare needs a base and at least one other model")
    cfg = config if isinstance(config, AuditConfig) else load_config(config)
    cfg = cfg.replace(traps=traps, device=device)
    base_model = _open(base, "base", None, cfg, revision)
    models = [_open(o, _label(o, i, others), base_model, cfg, None) for i, o in enumerate(others)]
    try:
        return _compare(base_model, models, cfg, progress=progress)
    finally:
        for m in (base_model, *models):
            m.source.close()


def _label(spec: ModelSpec, index: int, others: tuple[ModelSpec, ...]) -> str:
    name = slug(str(spec)) if isinstance(spec, (str, Path)) else f"model{index + 1}"
    names = [slug(str(o)) if isinstance(o, (str, Path)) else "" for o in others]
    return f"{name}#{index + 1}" if names.count(name) > 1 else name


def _open(
    spec: ModelSpec, label: str, base: _Model | None, cfg: AuditConfig, revision: str | None
) -> _Model:
    source = open_source(spec, revision=revision)
    if isinstance(source, LoraAdapterSource) and base is not None:
        _check_adapter(source, base)
        return _Model(label, source, base.layers, adapter=source)
    planned, _ = plan_layers(source.tensors(), source.info.config, min_evals=cfg.min_evals)
    return _Model(label, source, {layer.name: layer for layer in planned})


def _check_adapter(adapter: LoraAdapterSource, base: _Model) -> None:
    for t in adapter.tensors():
        match = next(
            (layer for n, layer in base.layers.items() if n == t.name or n.endswith("." + t.name)),
            None,
        )
        if match is None:
            raise CheckpointFormatError(
                f"adapts {t.name!r}, which the base model does not have; is the base "
                f"{adapter.base_model!r}?",
                path=adapter.info.id,
            )
        if match.tensor.shape != t.shape:
            raise CheckpointFormatError(
                f"update of {t.name!r} has shape {t.shape} but the base tensor has "
                f"{match.tensor.shape}; "
                f"the adapter was made for another base ({adapter.base_model!r})",
                path=adapter.info.id,
            )


def align(base: dict[str, Layer], other: dict[str, Layer]) -> dict[str, str]:
    """Alignment status of every layer name in either model."""
    status = {}
    for name, layer in base.items():
        if name not in other:
            status[name] = "missing"
        else:
            status[name] = "aligned" if other[name].out_in == layer.out_in else "shape_changed"
    status.update({name: "extra" for name in other if name not in base})
    return status


def _compare(
    base: _Model, models: list[_Model], cfg: AuditConfig, *, progress: bool
) -> ComparisonResult:
    alignment = {m.label: align(base.layers, m.layers) for m in models}
    for m in models:
        if "aligned" not in alignment[m.label].values():
            first_base = ", ".join(list(base.layers)[:2])
            first_other = ", ".join(list(m.layers)[:2])
            raise ConfigError(
                f"no layer aligns with the base by name and shape (base: {first_base}, ...; "
                f"{m.label}: {first_other}, ...); these are different architectures",
                path=m.source.info.id,
            )
    todo = [layer for layer in base.layers.values() if layer.skip_status is None]
    jobs = list(_jobs(base, models, todo, alignment))
    results = engine.schedule(
        jobs,
        cfg,
        total=len(jobs),
        progress=progress,
        desc="compare",
        budget=max((job.nbytes for job in jobs), default=0),  # the largest matrix runs alone
    )
    records = [
        _record(name, base, models, alignment, results, cfg) for name in _union_order(base, models)
    ]
    return ComparisonResult(
        base=_describe(base),
        others=[_describe(m) for m in models],
        settings={**cfg.as_dict(), "device": str(engine.resolve_device(cfg.device))},
        summary=_summary(records, models, alignment),
        records=records,
        spectra={key: o.spectra for key, o in results.items() if o.spectra},
    )


def _jobs(
    base: _Model, models: list[_Model], todo: list[Layer], alignment: dict[str, dict[str, str]]
) -> Iterator[engine.Job]:
    """Per aligned layer: the base matrix, then each model's matrix and its update, one job each.

    One matrix per job lets the scheduler's byte budget run the largest ones alone. The update of
    a full model is a lazy `Difference`, read again in row blocks: the base's pages are touched
    twice, but no job holds two vocabulary-sized matrices at once.
    """
    for layer in todo:
        size = engine.stored_bytes(layer)
        yield engine.Job([(f"base|{layer.name}", layer)], _reader(layer, base.source), size)
        for m in models:
            if not _changes(m, layer, alignment):
                continue
            mine, update = f"{m.label}|{layer.name}", f"{m.label}|dW|{layer.name}"
            if m.adapter is not None:  # W + B·A·s and B·A·s, float32 copies
                merged, delta = _adapted(base.source, m.adapter, layer)
                copy = 4 * layer.out_in[0] * layer.out_in[1]
                yield engine.Job([(mine, layer)], merged, copy)
                yield engine.Job([(update, layer)], delta, copy)
                continue
            other = m.layers[layer.name]
            yield engine.Job([(mine, layer)], _reader(other, m.source), engine.stored_bytes(other))
            in_blocks = _row_readable(other, m.source) and _row_readable(layer, base.source)
            yield engine.Job(
                [(update, layer)],
                _difference(other, m.source, layer, base.source),
                0 if in_blocks else size + engine.stored_bytes(other),
            )


def _changes(m: _Model, layer: Layer, alignment: dict[str, dict[str, str]]) -> bool:
    """Whether model `m` has its own version of `layer` (for an adapter: an adapted one)."""
    if m.adapter is not None:
        return m.adapter.delta_for(layer.name) is not None
    return alignment[m.label][layer.name] == "aligned"


def _reader(layer: Layer, source: Source) -> Callable[[], list[Matrix]]:
    return lambda: [engine.oriented(layer.read(source), layer)]


def _difference(
    other: Layer, other_source: Source, base: Layer, base_source: Source
) -> Callable[[], list[Matrix]]:
    """The update's reader. Its row readers are made when the job is read, so a matrix read whole
    (a source without partial reads) lives only as long as the job."""

    def read() -> list[Matrix]:
        update = Difference(
            _row_reader(other, other_source),
            _row_reader(base, base_source),
            stored_shape=(base.stored_shape[0], base.stored_shape[1]),
            stored_in_out=base.stored_in_out,
        )
        return [update]

    return read


def _row_readable(layer: Layer, source: Source) -> bool:
    """Whether a block of the layer's stored rows can be read without reading it all."""
    return source.partial_reads and layer.slice_index is None and layer.scale is None


def _row_reader(layer: Layer, source: Source) -> RowReader:
    """Stored rows [a, b) of the layer: read alone where the source can, else from one full read."""
    if _row_readable(layer, source):
        return lambda a, b: source.read_slice(layer.tensor, slice(a, b))
    whole = layer.read(source)
    return lambda a, b: whole[a:b]


def _adapted(
    source: Source, adapter: LoraAdapterSource, layer: Layer
) -> tuple[Callable[[], list[Matrix]], Callable[[], list[Matrix]]]:
    """Readers of the merged W + B·A·s and of the update B·A·s itself."""
    info = adapter.delta_for(layer.name)
    assert info is not None  # _changes chose only adapted layers

    def delta() -> torch.Tensor:
        return engine.oriented(adapter.read(info), layer)

    def merged() -> list[Matrix]:
        return [engine.oriented(layer.read(source), layer).float() + delta()]

    return merged, lambda: [delta()]


def _union_order(base: _Model, models: list[_Model]) -> list[str]:
    names = list(base.layers)
    for m in models:
        names += [n for n in m.layers if n not in base.layers and n not in names]
    return names


def _metrics(outcome: engine.LayerOutcome | None, cfg: AuditConfig) -> dict[str, Any]:
    if outcome is None:
        return {}
    rec = dict(outcome.record)
    rec["flags"] = layer_flags(rec, cfg.thresholds)
    rec.pop("trap_entries", None)
    return rec


def _record(
    name: str,
    base: _Model,
    models: list[_Model],
    alignment: dict[str, dict[str, str]],
    results: dict[str, engine.LayerOutcome],
    cfg: AuditConfig,
) -> dict[str, Any]:
    layer = base.layers.get(name) or next(m.layers[name] for m in models if name in m.layers)
    base_m = _metrics(results.get(f"base|{name}"), cfg)
    record: dict[str, Any] = {
        "name": name,
        "block": layer.block,
        "role": layer.role,
        "alignment": {m.label: alignment[m.label][name] for m in models},
        "models": {"base": base_m} if base_m else {},
        "delta_alpha": {},
        "new_flags": {},
        "vanished_flags": {},
        "delta": {},
        "change_score": {},
    }
    for m in models:
        mine = _metrics(results.get(f"{m.label}|{name}"), cfg)
        if not mine and m.adapter is not None and base_m:
            record["models"][m.label] = base_m  # not adapted: W + 0 is the base matrix itself
            continue
        if not mine:
            continue
        record["models"][m.label] = mine
        record["delta_alpha"][m.label] = mine.get("alpha", math.nan) - base_m.get("alpha", math.nan)
        record["new_flags"][m.label] = [
            f for f in mine["flags"] if f not in base_m.get("flags", [])
        ]
        record["vanished_flags"][m.label] = [
            f for f in base_m.get("flags", []) if f not in mine["flags"]
        ]
        record["delta"][m.label] = _delta_metrics(results[f"{m.label}|dW|{name}"], base_m, cfg)
        record["change_score"][m.label] = _score(record, m.label)
    return record


def _delta_metrics(
    outcome: engine.LayerOutcome, base_m: dict[str, Any], cfg: AuditConfig
) -> dict[str, Any]:
    rec = _metrics(outcome, cfg)
    out = {k: rec.get(k) for k in DELTA_COLUMNS}
    norm, base_norm = rec.get("norm", 0.0) or 0.0, base_m.get("norm", math.nan)
    out["relative_norm"] = math.sqrt(norm / base_norm) if base_norm else math.nan
    evals = outcome.spectra.get("evals")
    out["effective_rank"] = effective_rank(evals) if evals is not None else 0.0
    out["flags"] = rec.get("flags", [])
    return out


def effective_rank(evals: np.ndarray) -> float:
    """Roy & Vetterli's effective rank exp(H(p)), p = σ/Σσ: how many directions an update uses."""
    sv = np.sqrt(np.clip(evals, 0, None))
    total = sv.sum()
    if total <= 0:
        return 0.0
    p = sv[sv > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def _score(record: dict[str, Any], label: str) -> float:
    """How much a layer changed: a new trap dominates, then |Δalpha|, then the relative update."""
    new_trap = "correlation_trap" in record["new_flags"][label]
    d_alpha = (
        abs(record["delta_alpha"][label]) if math.isfinite(record["delta_alpha"][label]) else 0.0
    )
    rel = record["delta"][label]["relative_norm"]
    return (
        100.0 * new_trap
        + 10.0 * len(record["new_flags"][label])
        + d_alpha
        + (rel if math.isfinite(rel) else 0.0)
    )


def _describe(m: _Model) -> dict[str, Any]:
    info = m.source.info
    return {
        "label": m.label,
        "id": info.id,
        "source": info.kind,
        "revision": info.revision,
        "files": info.files,
        "adapter_scale": m.adapter.scale if m.adapter else None,
    }


def _summary(
    records: list[dict[str, Any]], models: list[_Model], alignment: dict[str, dict[str, str]]
) -> dict[str, Any]:
    per_other = {}
    for m in models:
        label = m.label
        scored = [r for r in records if r["change_score"].get(label, 0) > 0]
        changed = sorted(scored, key=lambda r: -r["change_score"][label])
        counts = {a: sum(1 for s in alignment[label].values() if s == a) for a in ALIGNMENTS}
        new: dict[str, int] = {}
        for r in records:
            for flag in r["new_flags"].get(label, []):
                new[flag] = new.get(flag, 0) + 1
        per_other[label] = {
            "alignment": counts,
            "not_aligned": {n: s for n, s in alignment[label].items() if s != "aligned"},
            "new_flags": new,
            "most_changed": [r["name"] for r in changed[:10]],
            "layers_with_new_traps": [
                r["name"] for r in records if "correlation_trap" in r["new_flags"].get(label, [])
            ],
        }
    return {"others": per_other}
