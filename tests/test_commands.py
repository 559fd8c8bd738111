"""Every ``edgecascade`` command the README and the docs show exists, with the options they show.

The ``sh`` blocks of README.md and docs/*.md are read for commands (``edgecascade …``,
``.venv/bin/edgecascade …``, ``python -m edgecascade.<package> …``, also inside ``$(…)`` and
after ``VAR=value``). Each command's ``--help`` must succeed and name every ``--option`` the
line uses, so a renamed subcommand or option fails here before a reader trips on it. The
help runs in-process through :func:`edgecascade.tools.cli.main`; the installed entry point
and the daemons' ``python -m`` forms run as subprocesses. The provisioning commands of the
security page are also run as written.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgecascade.tools.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAM = re.compile(r"^(?:\S*/)?edgecascade$")  # edgecascade, .venv/bin/edgecascade
MODULE = re.compile(r"^edgecascade\.(edge_gateway|cloud_service|tools\.cli)$")
PYTHON = re.compile(r"^(?:\S*/)?python3?$")  # python, .venv/bin/python
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


@dataclass(frozen=True)
class Documented:
    """One documented command: where it is, the words after the program, and how it is run."""

    where: str
    words: tuple[str, ...]
    module: str = ""  # ``python -m <module>``; empty for the ``edgecascade`` entry point
    synopsis: bool = False  # usage syntax ([--opt X], {a,b}, ...) rather than a runnable line

    def __str__(self) -> str:
        return f"{self.where}: {' '.join(self.words)}"


def sh_blocks(page: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of each fenced ``sh`` block, continuation lines joined."""
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start + 1, "\n".join(body).replace("\\\n", " ")))
        i += 1
    return blocks


def commands_in(line: str) -> list[list[str]]:
    """The command word lists of one shell line: itself and any ``$(...)`` inside it."""
    found = [inner for inner in re.findall(r"\$\(([^)]*)\)", line)]
    outer = re.sub(r"\$\([^)]*\)", "SUBSTITUTED", line)
    found.append(outer)
    result = []
    for text in found:
        try:
            words = shlex.split(text, comments=True)
        except ValueError:  # an unbalanced quote in prose-like lines: not a command
            continue
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value prefixes
            words.pop(0)
        if words and words[-1] == "&":
            words.pop()
        if words:
            result.append(words)
    return result


def documented_commands() -> list[Documented]:
    found = []
    for page in PAGES:
        for start, block in sh_blocks(page):
            for offset, line in enumerate(block.splitlines()):
                where = f"{page.relative_to(ROOT)}:{start + offset}"
                synopsis = bool(re.search(r"\[|\{|\.\.\.|…", line))
                for words in commands_in(line):
                    if PROGRAM.match(words[0]):
                        found.append(Documented(where, tuple(words[1:]), synopsis=synopsis))
                    elif (
                        PYTHON.match(words[0])
                        and words[1:2] == ["-m"]
                        and len(words) > 2
                        and MODULE.match(words[2])
                    ):
                        found.append(Documented(where, tuple(words[3:]), words[2], synopsis))
    return found


COMMANDS = documented_commands()


def subcommand_path(words: tuple[str, ...]) -> list[str]:
    """The subcommand names at the start of ``words`` (after global options), as the parser sees them."""
    parser: argparse.ArgumentParser = build_parser()
    path: list[str] = []
    rest = list(words)
    while rest and rest[0].startswith("--") and not path:  # global options: --log-level X
        option = rest.pop(0)
        if option == "--log-level" and rest:
            rest.pop(0)
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            return path  # a command, not a group of them
        choices = actions[0].choices
        assert rest and rest[0] in choices, f"{' '.join(words)}: after {path} comes one of {sorted(choices)}"
        path.append(rest.pop(0))
        parser = choices[path[-1]]


def help_text(command: Documented, capsys: pytest.CaptureFixture[str]) -> str:
    """The ``--help`` output of the documented command (its subcommand path, nothing else)."""
    if command.module:
        module = "edgecascade.tools.cli" if command.module == "edgecascade.tools.cli" else command.module
        words = subcommand_path(command.words) if module == "edgecascade.tools.cli" else []
        result = subprocess.run(
            [sys.executable, "-m", module, *words, "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        return result.stdout
    if command.words[:1] == ("--version",):
        return "--version"  # the version flag itself (its run: the entry point test)
    path = subcommand_path(command.words)
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    out = capsys.readouterr()
    assert exit_.value.code == 0, f"{command}\n{out.err}"
    return out.out


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 40
    pages = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/cli.md", "docs/getting-started.md", "docs/security.md"} <= pages
    daemons = {c.words[0] for c in COMMANDS if c.words and c.words[0] in ("gateway", "cloud")}
    assert daemons == {"gateway", "cloud"}


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_documented_command_and_option_exists(
    command: Documented, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys)
    for option in OPTION.findall(" ".join(command.words)):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), f"{command}: no option {option}"


def test_the_entry_point_and_the_daemon_modules_answer_help_and_version() -> None:
    edgecascade = Path(sys.executable).parent / "edgecascade"
    version = subprocess.run([edgecascade, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and re.fullmatch(r"edgecascade \d+\.\d+\.\d+\S*\n", version.stdout)
    for args in (["gateway", "--help"], ["cloud", "--help"]):
        result = subprocess.run([edgecascade, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: edgecascade {args[0]}") and "--config" in result.stdout


@pytest.mark.parametrize("daemon", ["gateway", "cloud"])
def test_the_daemons_take_their_config_through_edgecascade(
    daemon: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``edgecascade gateway --config FILE`` reaches the daemon (it used to be a usage error)."""
    config = tmp_path / f"{daemon}.toml"
    config.write_text(f'[{daemon}]\nverify_key = "missing.pub"\n')
    assert main([daemon, "--config", str(config)]) == 2  # the daemon's own bad-configuration code
    assert main(["--log-level", "ERROR", daemon, "--config", str(config), "--log-level", "ERROR"]) == 2


def test_the_provisioning_commands_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = ROOT / "docs" / "security.md"
    block = next(text for _, text in sh_blocks(page) if "certs init" in text)
    monkeypatch.chdir(tmp_path)
    ran = 0
    for line in block.splitlines():
        for words in commands_in(line):
            if PROGRAM.match(words[0]):
                assert main(words[1:]) == 0, line
                ran += 1
    assert ran >= 4 and (tmp_path / "pki" / "devices" / "cam-01" / "x25519-k2.key").is_file()
