"""README.md stays true to the command line: every `llm-audit` command in its code blocks parses
(as far as `--help` would: arguments, not models), every flag of its usage block exists on its
command, the test command is the one `.ci/run` runs, and links to docs/ lead to files."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from llm_audit.cli import build_parser, parse_args

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    """The `llm-audit ...` and `... -m llm_audit ...` lines of the shell blocks."""
    found = []
    for language, body in BLOCKS:
        if language != "bash":
            continue
        for line in body.splitlines():
            for command in line.split("&&"):
                command = command.strip()
                if command.startswith("llm-audit") or "-m llm_audit" in command:
                    found.append(command)
    return found


def _usage() -> dict[str, set[str]]:
    """Each usage line's command (`scan`, ..., or '' for the top level) and the flags it shows."""
    (usage,) = [
        body for language, body in BLOCKS if language == "text" and "llm-audit scan [" in body
    ]
    flags: dict[str, set[str]] = {}
    command = ""
    for line in usage.splitlines():
        if line.startswith("llm-audit"):
            words = line.split()
            command = words[1] if not words[1].startswith("-") else ""
        flags.setdefault(command, set()).update(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", line))
    return flags


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("command", _commands())
def test_every_readme_command_parses(command: str) -> None:
    argv = shlex.split(command, comments=True)
    argv = argv[argv.index("llm_audit") + 1 :] if "llm_audit" in argv else argv[1:]
    args = parse_args(argv)
    assert args.command == argv[0] or args.version


def test_every_usage_flag_exists() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    usage = _usage()
    assert set(usage) == {"", "scan", "describe", "compare", "render", "calibrate"}
    for command, flags in usage.items():
        target = parser if command == "" else subparsers.choices[command]  # type: ignore[index]
        known = {o for action in target._actions for o in action.option_strings}
        assert flags - known == set(), command
        # and the other way round: the usage block shows every long option but --help
        missing = {o for o in known if o.startswith("--")} - flags - {"--help"}
        assert missing == set(), command


def test_set_up_commands_and_ci() -> None:
    shell = [body.strip() for language, body in BLOCKS if language == "bash"][:2]
    assert shell[0] == "pip install torch==2.13.0 && pip install . && llm-audit scan"
    assert (
        shell[1] == "pip install torch==2.13.0 && pip install -e '.[test]' && python -m pytest -q"
    )
    assert shell[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_links_lead_to_files() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), (page.name, target)


def test_docs_have_no_development_history() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = page.read_text()
        assert not re.search(r"\bissue \d+|\b20\d\d-\d\d-\d\d\b", text), page.name
