"""Compare fine-tunes (or merges, quantizations, later checkpoints) with their base, layer by layer.

Layers are aligned by tensor name and shape, and whatever does not align is reported, never paired
by position. Per aligned layer, three kinds of job go to the runner (so a compare shards over
ranks and resumes like a scan): the base matrix, each other model's matrix, and their difference
ΔW = W_other − W_base, whose Gram is formed from row blocks of both without a full-size ΔW. A LoRA
adapter given as OTHER is applied on the fly (W + B·A·s), so memory stays bounded by a few
matrices, never by two models.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm_audit import runner
from llm_audit.analysis import Outcome
from llm_audit.config import AuditConfig
from llm_audit.distance import as_finding, distance, findings
from llm_audit.errors import CheckpointFormatError, ConfigError
from llm_audit.flags import flagged
from llm_audit.jobs import Job, cost, difference_job, layer_job, oriented
from llm_audit.journal import fingerprint
from llm_audit.layers import Layer, plan_layers
from llm_audit.options import ModelSpec, run_options
from llm_audit.outlier_dims import hidden_size, place_traps
from llm_audit.result import DELTA_COLUMNS, ComparisonResult, provenance, run_settings
from llm_audit.scan import layer_filter, settings, slug
from llm_audit.sources import Source, TensorInfo, open_source
from llm_audit.sources.peft import LoraAdapterSource
from llm_audit.summary import summarize
from llm_audit.vocabulary import (
    ALIGNED,
    ALIGNMENTS,
    CORRELATION_TRAP,
    EXTRA,
    MISSING,
    OUTLIER_DIMENSION,
    SHAPE_CHANGED,
)


@dataclass
class _Model:
    label: str
    source: Source
    tensors: list[TensorInfo]
    family: str | None
    layers: dict[str, Layer]
    adapter: LoraAdapterSource | None = None  # OTHER given as a LoRA adapter of the base


def compare(
    base: ModelSpec,
    *others: ModelSpec,
    revision: str | None = None,
    config: AuditConfig | str | Path | None = None,
    traps: bool | None = None,
    device: str | None = None,
    devices: Sequence[str] | None = None,
    seed: int | None = None,
    estimator: str | None = None,
    precision: str | None = None,
    layers: str | None = None,
    progress: bool = False,
    journal: str | Path | None = None,
    resume: bool = False,
) -> ComparisonResult:
    """Audit `base` and each of `others` layer by layer, with the spectrum of every update ΔW.

    The options mean what they mean for `scan` (`precision` for the updates' Grams too): `layers`
    a regular expression on tensor names, `journal`/`resume` a resumable run, `devices` one
    process per device (torchrun and `accelerate launch` shard the same way). Raises an
    `LlmAuditError` subclass on bad input, among them models with no layer in common.
    """
    if not others:
        raise ConfigError("compare needs a base and at least one other model")
    cfg = settings(
        config, traps=traps, device=device, seed=seed, estimator=estimator, precision=precision
    )
    options = run_options(
        device=device,
        devices=devices,
        journal=journal,
        resume=resume,
        progress=progress,
        models=[base, *others],
    )
    work = functools.partial(_compare, base, others, revision=revision, cfg=cfg, layers=layers)
    return runner.launch(work, cfg.device, options)


def _label(spec: ModelSpec, index: int, others: tuple[ModelSpec, ...]) -> str:
    name = slug(str(spec)) if isinstance(spec, (str, Path)) else f"model{index + 1}"
    names = [slug(str(o)) if isinstance(o, (str, Path)) else "" for o in others]
    return f"{name}#{index + 1}" if names.count(name) > 1 else name


def _open(
    spec: ModelSpec,
    label: str,
    base: _Model | None,
    cfg: AuditConfig,
    revision: str | None,
    only: re.Pattern[str] | None,
) -> _Model:
    source = open_source(spec, revision=revision)
    tensors = source.tensors()
    if isinstance(source, LoraAdapterSource) and base is not None:
        _check_adapter(source, base)
        return _Model(label, source, tensors, base.family, base.layers, adapter=source)
    planned, family = plan_layers(
        tensors, source.info.config, only=only, min_evals=cfg.min_evals, read=source.read
    )
    return _Model(label, source, tensors, family, {layer.name: layer for layer in planned})


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
            status[name] = MISSING
        else:
            status[name] = ALIGNED if other[name].out_in == layer.out_in else SHAPE_CHANGED
    status.update({name: EXTRA for name in other if name not in base})
    return status


def _compare(
    base_spec: ModelSpec,
    other_specs: tuple[ModelSpec, ...],
    process: runner.Process,
    *,
    revision: str | None,
    cfg: AuditConfig,
    layers: str | None,
) -> ComparisonResult:
    """The comparison as one process of the run."""
    started = dt.datetime.now(dt.timezone.utc)
    only = layer_filter(layers)
    with contextlib.ExitStack() as stack:
        base = _open(base_spec, "base", None, cfg, revision, only)
        stack.callback(base.source.close)
        models = []
        for i, spec in enumerate(other_specs):
            models.append(_open(spec, _label(spec, i, other_specs), base, cfg, None, only))
            stack.callback(models[-1].source.close)
        alignment = _alignment(base, models)
        todo = [layer for layer in base.layers.values() if layer.skip_status is None]
        infos = [base.source.info, *(m.source.info for m in models)]
        results = runner.run(
            list(_jobs(base, models, todo, alignment)),
            cfg,
            process,
            fingerprint=fingerprint(infos, cfg, layers=layers, command="compare"),
            desc="compare",
        )
        seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    dimensions = _place_traps(results, base, models, cfg)
    records = [
        _record(name, base, models, alignment, results, cfg) for name in _union_order(base, models)
    ]
    return ComparisonResult(
        base=_describe(base),
        others=[_describe(m) for m in models],
        settings=run_settings(
            cfg, device=runner.recorded_device(process), started=started, layers=layers
        ),
        summary={
            **_summary(records, models, alignment, seconds, cfg),
            "outlier_dimensions": dimensions,
        },
        records=records,
        spectra={key: o.spectra for key, o in results.items() if o.spectra},
    )


def _alignment(base: _Model, models: list[_Model]) -> dict[str, dict[str, str]]:
    """Each other model's alignment with the base; ConfigError when nothing aligns."""
    alignment = {m.label: align(base.layers, m.layers) for m in models}
    for m in models:
        if ALIGNED not in alignment[m.label].values():
            first_base = ", ".join(list(base.layers)[:2])
            first_other = ", ".join(list(m.layers)[:2])
            raise ConfigError(
                f"no layer aligns with the base by name and shape (base: {first_base}, ...; "
                f"{m.label}: {first_other}, ...); these are different architectures",
                path=m.source.info.id,
            )
    return alignment


def _jobs(
    base: _Model, models: list[_Model], todo: list[Layer], alignment: dict[str, dict[str, str]]
) -> Iterator[Job]:
    """Per aligned layer: the base matrix, then each model's matrix and its update, one job each.

    One matrix per job lets the scheduler's byte budget run the largest ones alone. The update of
    a full model is read again in row blocks: the base's pages are touched twice, but no job
    holds two vocabulary-sized matrices at once.
    """
    for layer in todo:
        yield layer_job(f"base|{layer.name}", layer, base.source)
        for m in models:
            if not _changes(m, layer, alignment):
                continue
            mine, update = f"{m.label}|{layer.name}", f"{m.label}|dW|{layer.name}"
            if m.adapter is not None:  # W + B·A·s and B·A·s, float32 copies
                merged, delta = _adapted(base.source, m.adapter, layer)
                copy = 4 * layer.out_in[0] * layer.out_in[1]
                yield Job(mine, layer, merged, copy, cost(layer))
                yield Job(update, layer, delta, copy, cost(layer))
                continue
            other = m.layers[layer.name]
            yield layer_job(mine, other, m.source)
            yield difference_job(update, other, m.source, layer, base.source)


def _changes(m: _Model, layer: Layer, alignment: dict[str, dict[str, str]]) -> bool:
    """Whether model `m` has its own version of `layer` (for an adapter: an adapted one)."""
    if m.adapter is not None:
        return m.adapter.delta_for(layer.name) is not None
    return alignment[m.label][layer.name] == ALIGNED


def _adapted(
    source: Source, adapter: LoraAdapterSource, layer: Layer
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """Readers of the merged W + B·A·s and of the update B·A·s itself."""
    info = adapter.delta_for(layer.name)
    assert info is not None  # _changes chose only adapted layers

    def delta() -> torch.Tensor:
        return oriented(adapter.read(info), layer)

    def merged() -> torch.Tensor:
        return oriented(layer.read(source), layer).float() + delta()

    return merged, delta


def _union_order(base: _Model, models: list[_Model]) -> list[str]:
    names = list(base.layers)
    for m in models:
        names += [n for n in m.layers if n not in base.layers and n not in names]
    return names


def _place_traps(
    results: dict[str, Outcome], base: _Model, models: list[_Model], cfg: AuditConfig
) -> dict[str, list[int]]:
    """Set `trap_kind` on each model's layers from that model's own outlier dimensions (the
    updates ΔW keep theirs unset: their traps count as scattered), and return each model's
    outlier dimensions: {label: [hidden index, ...]}."""
    base_records = [o.record for key, o in results.items() if key.startswith("base|")]
    hidden = hidden_size(base.source.info.config, base_records)
    found = {}
    for label in ["base", *(m.label for m in models)]:
        keys = [k for k in results if k.startswith(f"{label}|") and "|dW|" not in k]
        places = place_traps(
            [results[k].record for k in keys], hidden, cfg.thresholds.outlier_dimension_chance
        )
        for key, record in zip(keys, places.records, strict=True):
            results[key] = Outcome(record, results[key].spectra)
        found[label] = [d.index for d in places.dimensions]
    return found


def _metrics(outcome: Outcome | None, cfg: AuditConfig) -> dict[str, Any]:
    if outcome is None:
        return {}
    rec = flagged(outcome.record, cfg.thresholds)
    rec.pop("trap_entries", None)
    return rec


def _record(
    name: str,
    base: _Model,
    models: list[_Model],
    alignment: dict[str, dict[str, str]],
    results: dict[str, Outcome],
    cfg: AuditConfig,
) -> dict[str, Any]:
    layer = base.layers.get(name) or next(m.layers[name] for m in models if name in m.layers)
    base_m = _metrics(results.get(f"base|{name}"), cfg)
    record: dict[str, Any] = {
        "name": name,
        "block": layer.block,
        "stack": layer.stack,
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


def _delta_metrics(outcome: Outcome, base_m: dict[str, Any], cfg: AuditConfig) -> dict[str, Any]:
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
    new_trap = CORRELATION_TRAP in record["new_flags"][label]
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
    return {
        "label": m.label,
        **provenance(m.source.info, m.tensors, m.family),
        "adapter_scale": m.adapter.scale if m.adapter else None,
    }


def _summary(
    records: list[dict[str, Any]],
    models: list[_Model],
    alignment: dict[str, dict[str, str]],
    seconds: float,
    cfg: AuditConfig,
) -> dict[str, Any]:
    """Per model (the base and each other) its verdict and counts as a scan would give them;
    per other model how it aligns, what changed (`changes`, said first), which flags it gained."""
    verdicts = {label: model_summary(records, label, cfg) for label in ["base", *alignment]}
    per_other = {}
    for m in models:
        label = m.label
        scored = [r for r in records if r["change_score"].get(label, 0) > 0]
        changed = sorted(scored, key=lambda r: -r["change_score"][label])
        counts = {a: sum(1 for s in alignment[label].values() if s == a) for a in ALIGNMENTS}
        new: dict[str, int] = {}
        vanished: dict[str, int] = {}
        for r in records:
            for flag in r["new_flags"].get(label, []):
                new[flag] = new.get(flag, 0) + 1
            for flag in r["vanished_flags"].get(label, []):
                vanished[flag] = vanished.get(flag, 0) + 1
        moved = distance(records, label, cfg)
        if moved["far_from_base"]:
            verdicts[label]["findings"] = [as_finding(moved), *verdicts[label]["findings"]]
        per_other[label] = {
            "findings": findings(moved),
            "distance": moved,
            "changes": [
                *(["far from its base"] if moved["far_from_base"] else []),
                *changes(verdicts["base"], verdicts[label], new, vanished),
            ],
            "alignment": counts,
            "not_aligned": {n: s for n, s in alignment[label].items() if s != ALIGNED},
            "new_flags": new,
            "vanished_flags": vanished,
            "most_changed": [r["name"] for r in changed[:10]],
            "layers_with_new_traps": [
                r["name"] for r in records if CORRELATION_TRAP in r["new_flags"].get(label, [])
            ],
            "layers_with_new_outlier_dimension_traps": [
                r["name"] for r in records if OUTLIER_DIMENSION in r["new_flags"].get(label, [])
            ],
        }
    return {"models": verdicts, "others": per_other, "seconds": seconds}


MODEL_SUMMARY_LEFT_OUT = ("seconds", "hidden_size", "outlier_dimensions", "experts")


def model_summary(records: list[dict[str, Any]], label: str, cfg: AuditConfig) -> dict[str, Any]:
    """One model's summary in a comparison (verdict, counts, `findings`), from its own layers as
    a scan of it alone would count them."""
    mine = [
        {**r["models"][label], "name": r["name"], "role": r["role"]}
        for r in records
        if label in r["models"]
    ]
    summary = summarize(mine, cfg, 0.0)
    return {k: v for k, v in summary.items() if k not in MODEL_SUMMARY_LEFT_OUT}


def changes(
    base: dict[str, Any], other: dict[str, Any], new: dict[str, int], vanished: dict[str, int]
) -> list[str]:
    """What changed from the base to the other model, in a few sentences, the verdict first."""
    if base["verdict"] == other["verdict"]:
        out = [f"verdict unchanged: {other['verdict']}"]
    else:
        out = [f"verdict {base['verdict']} → {other['verdict']}"]
    out += [f"{flag} gained in {n} layer{'s' * (n != 1)}" for flag, n in new.items()]
    out += [f"{flag} lost in {n} layer{'s' * (n != 1)}" for flag, n in vanished.items()]
    return out
