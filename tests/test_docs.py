"""The documentation: the site builds cleanly, and the README stays a short front door."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 200
SETUP_COMMANDS = ("make demo", "make test")
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, …


def readme_lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def test_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_is_short() -> None:
    lines = readme_lines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES}"


def test_readme_starts_with_the_two_setup_commands() -> None:
    lines = readme_lines()
    assert lines[0].startswith("# "), "README.md starts with its title"
    opening = next((i for i, line in enumerate(lines) if line.startswith("```")), None)
    assert opening is not None, "README.md has no code block"
    before = lines[1:opening]
    assert not any(line.startswith("#") for line in before), "only the title paragraph comes first"
    assert any(line.strip() for line in before), "a paragraph says what EdgeCascade is"
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].startswith("```"))
    commands = [line.split("#")[0].strip() for line in lines[opening + 1 : closing]]
    assert tuple(c for c in commands if c) == SETUP_COMMANDS


def test_readme_relative_links_point_to_files() -> None:
    text = README.read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if not EXTERNAL.match(t) and not t.startswith("#")]
    assert targets, "README.md links into the documentation"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
