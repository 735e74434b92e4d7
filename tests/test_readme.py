"""The README's quick start is what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith("python3 -m venv .venv &&")
    ]


def test_readme_has_exactly_the_two_quick_start_commands() -> None:
    commands = _commands((ROOT / "README.md").read_text())
    assert len(commands) == 2
    assert commands[0].endswith("durably demo")
    assert commands[1].endswith("pytest")


def test_ci_runs_the_readme_test_command() -> None:
    readme = _commands((ROOT / "README.md").read_text())
    ci = _commands((ROOT / ".ci" / "run").read_text())
    assert ci == [readme[1]]
