"""The ``durably`` command line."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("not yet")
