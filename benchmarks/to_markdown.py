"""Render a benchmark result JSON as the Markdown tables of docs/performance.md.

    python benchmarks/to_markdown.py benchmarks/results/bench-<time>.json

One table per backend: every engine's figure for every row, the best peer
and durably's ratio to it (> 1 means durably is better).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "wf/s":
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(backend: str, rows: list[dict[str, Any]]) -> str:
    engines: list[str] = []
    for row in rows:
        for label in row["all"]:
            if label != "durably" and label not in engines:
                engines.append(label)
    head = ["", "durably", *engines, "best peer", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row["durably"] is None and not any(row["all"].values()):
            continue  # not measured on this backend (idle load: PostgreSQL only)
        unit = row["unit"]
        bounds = row.get("lower_bounds", {})
        cells = [f"{row['name']} ({unit})", number(row["durably"], unit)]
        for label in engines:
            value = row["all"].get(label)
            cell = number(value, unit)
            if label in bounds:
                cell = f"> {cell} ({bounds[label]})"
            cells.append(cell)
        ratio = row.get("ratio")
        cells.append(row.get("best_peer") or "-")
        cells.append("-" if ratio is None else f"**{ratio:.2f}x**")
        lines.append("| " + " | ".join(cells) + " |")
    return f"### {backend}\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    for backend, data in report["backends"].items():
        print(table(backend, data["comparison"]))


if __name__ == "__main__":
    main()
