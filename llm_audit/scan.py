"""`llm_audit.scan`: one model in, one `AuditResult` out.

Plans the model's layers from its headers, makes one job per analyzable layer, hands them to the
runner (which shards, resumes and gathers), then turns the outcomes into flagged records, a
summary and the report's provenance.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Sequence
from pathlib import Path

from llm_audit import runner
from llm_audit.analysis import Outcome, skipped
from llm_audit.config import AuditConfig, load_config
from llm_audit.errors import ConfigError
from llm_audit.flags import flagged
from llm_audit.jobs import Job, layer_job
from llm_audit.journal import fingerprint
from llm_audit.layers import Layer, plan_layers
from llm_audit.options import ModelSpec, run_options
from llm_audit.outlier_dims import hidden_size, place_traps
from llm_audit.result import AuditResult, provenance, run_settings
from llm_audit.sources import Source, open_source
from llm_audit.summary import summarize


def scan(
    model: ModelSpec = None,
    *,
    revision: str | None = None,
    config: AuditConfig | str | Path | None = None,
    traps: bool | None = None,
    device: str | None = None,
    devices: Sequence[str] | None = None,
    seed: int | None = None,
    estimator: str | None = None,
    precision: str | None = None,
    layers: str | None = None,
    allow_pickle: bool = False,
    progress: bool = False,
    journal: str | Path | None = None,
    resume: bool = False,
    stream: bool = False,
    split_qkv: bool | None = None,
) -> AuditResult:
    """Audit every weight matrix of `model` (a path, Hub id, module or state dict; None: MiniLM).

    `layers` is a regular expression on tensor names. With `journal` (a file path), each finished
    layer is appended to it; with `resume` too, layers already journaled under the same settings
    are not recomputed. With `stream`, a Hub model's shards are downloaded one at a time and
    deleted after use (unless cached before): models larger than free disk. Under `torchrun`
    (WORLD_SIZE > 1) the layers are sharded over the ranks and every rank returns the full result.
    `devices` (`["cuda:0", "cuda:1"]`, `["cpu", "cpu"]`) shards the same way without a launcher:
    one process per device, this one being rank 0. `split_qkv` analyzes fused q/k/v tensors as
    three matrices (sizes from config.json). `precision` (float64, float32, auto) is the float
    type of each matrix's Gram and eigensolver (docs/precision.md).
    Raises an `LlmAuditError` subclass on bad input (also for a journal written with other
    settings); per-layer problems (NaN weights, unknown dtypes, failed fits) are statuses.
    """
    cfg = settings(config, traps=traps, device=device, seed=seed, estimator=estimator)
    cfg = cfg.replace(split_qkv=split_qkv, precision=precision)
    options = run_options(
        device=device,
        devices=devices,
        journal=journal,
        resume=resume,
        progress=progress,
        models=[model],
    )
    work = functools.partial(
        _scan,
        model,
        revision=revision,
        cfg=cfg,
        layers=layers,
        allow_pickle=allow_pickle,
        stream=stream,
    )
    return runner.launch(work, cfg.device, options)


def settings(config: AuditConfig | str | Path | None, **changes: object) -> AuditConfig:
    """The audit settings: a config object or YAML file (None: the defaults), then `changes`."""
    cfg = config if isinstance(config, AuditConfig) else load_config(config)
    return cfg.replace(**changes)


def layer_filter(pattern: str | None) -> re.Pattern[str] | None:
    """The `--layers` regular expression, compiled by RE2 (ConfigError when it is not one).

    RE2 matches in time linear in the name, so no pattern can hang the scan on a long tensor
    name (Python's `re` backtracks: `(a+)+$` takes exponential time); it has no backreferences
    or lookaround. Its pattern object has the `search` of `re`'s.
    """
    if pattern is None:
        return None
    import re2

    options = re2.Options()
    options.log_errors = False  # the message below is the only line on stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise ConfigError(
            f"--layers: invalid regular expression {pattern!r} for RE2 ({reason}); "
            "backreferences and lookaround are not supported, so that no pattern can backtrack"
        ) from None


def _scan(
    model: ModelSpec,
    process: runner.Process,
    *,
    revision: str | None,
    cfg: AuditConfig,
    layers: str | None,
    allow_pickle: bool,
    stream: bool,
) -> AuditResult:
    """The scan as one process of the run."""
    started = dt.datetime.now(dt.timezone.utc)
    only = layer_filter(layers)
    with open_source(model, revision=revision, allow_pickle=allow_pickle, stream=stream) as source:
        tensors = source.tensors()
        planned, family = plan_layers(
            tensors,
            source.info.config,
            only=only,
            min_evals=cfg.min_evals,
            split_qkv=cfg.split_qkv,
            read=source.read,
        )
        if not planned:
            raise ConfigError(
                "no weight matrices to analyze" + (" match --layers" if only else ""),
                path=source.info.id,
            )
        jobs = [layer_job(layer.name, layer, source) for layer in planned if not layer.skip_status]
        outcomes = runner.run(
            jobs,
            cfg,
            process,
            fingerprint=fingerprint([source.info], cfg, layers=layers, command="scan"),
            prepare=functools.partial(_read_order, source),
        )
        seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    raw = [_outcome(layer, outcomes).record for layer in planned]
    places = place_traps(
        raw, hidden_size(source.info.config, raw), cfg.thresholds.outlier_dimension_chance
    )
    records = [flagged(record, cfg.thresholds) for record in places.records]
    return AuditResult(
        model=provenance(source.info, tensors, family),
        settings=run_settings(
            cfg, device=runner.recorded_device(process), started=started, layers=layers
        ),
        summary=summarize(records, cfg, seconds, places),
        records=records,
        spectra={
            layer.name: o.spectra
            for layer in planned
            if (o := outcomes.get(layer.name)) and o.spectra
        },
    )


def _outcome(layer: Layer, outcomes: dict[str, Outcome]) -> Outcome:
    if layer.skip_status is not None:
        return skipped(layer, layer.skip_status, layer.skip_reason)
    return outcomes[layer.name]


def _read_order(source: Source, jobs: list[Job]) -> list[Job]:
    """Jobs in the order to read them; a streamed source reads one file at a time, so each can
    be dropped once read, and is told which tensors will be read."""
    if source.streamed:
        files = {f: i for i, f in enumerate(source.info.files)}
        jobs = sorted(jobs, key=lambda job: files.get(job.layer.tensor.file or "", 0))
    layers = [job.layer for job in jobs]
    source.plan_reads([t for layer in layers for t in layer.stored_tensors])
    return jobs


def slug(model_id: str) -> str:
    """Folder name for a model's reports: `org--name` for Hub ids, the last name otherwise."""
    if model_id == "sentence-transformers/all-MiniLM-L6-v2":
        return "all-MiniLM-L6-v2"
    path = Path(model_id)
    if path.exists() or model_id.startswith(("/", ".")):
        name = path.stem if path.suffix == ".safetensors" else path.name
    else:
        name = model_id.replace("/", "--")
    return re.sub(r"[^\w.-]+", "_", name) or "model"
