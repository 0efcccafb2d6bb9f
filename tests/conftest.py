from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.digest import load_digest
from newsletter.render import Renderer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "digests" / "2026-04-22-open-models-weekly.md"
ARTIFACTS: list[str] = []  # paths the terminal summary prints (screenshots, ...)


@pytest.fixture
def settings(tmp_path):
    """The repository's own settings, with output going to a temporary folder."""
    loaded = load_settings(ROOT / "newsletter.toml", env={})
    return loaded.with_overrides(output_dir=tmp_path / "out")


@pytest.fixture(scope="session")
def session_settings():
    return load_settings(ROOT / "newsletter.toml", env={})


@pytest.fixture(scope="session")
def renderer(session_settings):
    return Renderer(session_settings)


@pytest.fixture(scope="session")
def example(session_settings):
    return load_digest(EXAMPLE, session_settings)


@pytest.fixture
def write_digest(tmp_path):
    """Write a digest file from a dedented string and return its path."""
    def write(text: str, name: str = "issue.md") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path
    return write


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys, monkeypatch):
    """Run the `newsletter` CLI in-process from a folder holding the repo's newsletter.toml."""
    monkeypatch.chdir(ROOT)
    for var in [v for v in os.environ if v.startswith("NEWSLETTER_")]:
        monkeypatch.delenv(var)

    def invoke(*args: str) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(int(code), captured.out, captured.err)
    return invoke


def pytest_terminal_summary(terminalreporter):
    if ARTIFACTS:
        terminalreporter.section("artifacts")
        for line in ARTIFACTS:
            terminalreporter.write_line(line)
