"""`llm_audit.scan`: one model in, one `AuditResult` out."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import platform
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import torch

from llm_audit import distributed, engine
from llm_audit.config import AuditConfig, load_config
from llm_audit.errors import ConfigError
from llm_audit.flags import layer_flags
from llm_audit.journal import Journal, fingerprint
from llm_audit.layers import plan_layers
from llm_audit.result import AuditResult
from llm_audit.sources import Source, open_source
from llm_audit.summary import summarize

ModelSpec = str | Path | torch.nn.Module | Mapping[str, torch.Tensor] | None


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
    one process per device, this one being rank 0 (journal `journal_path(journal, rank 0)`).
    `split_qkv` analyzes fused q/k/v tensors as three matrices (sizes from config.json).
    Raises an `LlmAuditError` subclass on bad input (also for a journal written with other
    settings); per-layer problems (NaN weights, unknown dtypes, failed fits) are statuses.
    """
    cfg = config if isinstance(config, AuditConfig) else load_config(config)
    cfg = cfg.replace(traps=traps, device=device, seed=seed, estimator=estimator)
    cfg = cfg.replace(split_qkv=split_qkv)
    job = functools.partial(
        _scan_ranked,
        model,
        revision=revision,
        cfg=cfg,
        layers=layers,
        allow_pickle=allow_pickle,
        progress=progress,
        journal=journal,
        resume=resume,
        stream=stream,
    )
    if devices is None:
        ranks = distributed.from_env()
        return job(ranks, distributed.rank_device(cfg.device, ranks))
    devices = distributed.check_devices(devices)
    if device is not None:
        raise ConfigError("give --device or --devices, not both")
    if len(devices) == 1:
        return job(None, devices[0])
    if not isinstance(model, (str, Path, type(None))):
        raise ConfigError("--devices needs a model path or Hub id (workers open it themselves)")
    return distributed.run_on_devices(job, devices)


def _scan_ranked(
    model: ModelSpec,
    ranks: distributed.Ranks | None,
    device: str,
    *,
    revision: str | None,
    cfg: AuditConfig,
    layers: str | None,
    allow_pickle: bool,
    progress: bool,
    journal: str | Path | None,
    resume: bool,
    stream: bool,
) -> AuditResult:
    """The scan as one rank (`ranks`; None: the only process) computing on `device`."""
    cfg = cfg.replace(device=device)
    only = _compile(layers)
    source = open_source(model, revision=revision, allow_pickle=allow_pickle, stream=stream)
    with source, contextlib.ExitStack() as stack:
        log = None
        if journal is not None:
            path = distributed.journal_path(journal, ranks)
            log = stack.enter_context(
                Journal(path, fingerprint(source.info, cfg, layers), resume=resume)
            )
        stack.enter_context(distributed.process_group(ranks, cfg.device))
        result = _audit(source, cfg, only, progress=progress, journal=log, ranks=ranks)
    if journal is not None and ranks is not None and ranks.rank != 0:
        # Gathered: rank 0 holds this rank's layers now (as a torchrun rank > 0 drops its own).
        Path(distributed.journal_path(journal, ranks)).unlink(missing_ok=True)
    return result


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--layers: invalid regular expression {pattern!r} ({exc})") from None


def _audit(
    source: Source,
    cfg: AuditConfig,
    only: re.Pattern[str] | None,
    *,
    progress: bool,
    journal: Journal | None = None,
    ranks: distributed.Ranks | None = None,
) -> AuditResult:
    started = dt.datetime.now(dt.timezone.utc)
    tensors = source.tensors()
    planned, family = plan_layers(
        tensors, source.info.config, only=only, min_evals=cfg.min_evals, split_qkv=cfg.split_qkv
    )
    if not planned:
        raise ConfigError(
            "no weight matrices to analyze" + (" match --layers" if only else ""),
            path=source.info.id,
        )
    outcomes, seconds = engine.run(
        source, planned, cfg, progress=progress, journal=journal, ranks=ranks
    )
    records = []
    for outcome in outcomes:
        outcome.record["flags"] = layer_flags(outcome.record, cfg.thresholds)
        records.append(outcome.record)
    dtypes = sorted({t.dtype for t in tensors if len(t.shape) == 2})
    model = {
        "id": source.info.id,
        "source": source.info.kind,
        "revision": source.info.revision,
        "files": source.info.files,
        "family": family,
        "num_parameters": sum(t.numel for t in tensors),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
    }
    settings = {
        **cfg.as_dict(),
        "device": str(engine.resolve_device(cfg.device)),
        "eigensolver": "float64 Gram (smaller side) + eigvalsh",
        "dtype_policy": "F64/F32/F16/BF16 upcast to float64 chunk by chunk; other dtypes skipped",
        "started": started.isoformat(timespec="seconds"),
        "versions": versions(),
    }
    return AuditResult(
        model=model,
        settings=settings,
        summary=summarize(records, cfg, seconds),
        records=records,
        spectra={o.record["name"]: o.spectra for o in outcomes if o.spectra},
    )


def versions() -> dict[str, str]:
    """The tool's and its numerical libraries' versions, recorded in every report."""
    out = {"python": platform.python_version()}
    for package in ("llm-audit", "torch", "numpy", "safetensors", "huggingface_hub", "pandas"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


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
