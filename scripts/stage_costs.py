"""Per-stage cost of two pipeline runs side by side, from the JSON-lines logs each stage appends to the
file named by DIFFINJECT_COST_LOG (`{stage, seconds, peak_rss_mib, exit}`, written by the CLI):

    DIFFINJECT_COST_LOG=/tmp/small.jsonl dvc repro
    DIFFINJECT_COST_LOG=/tmp/large.jsonl dvc exp run -S data.source=idx -S data.path=/usr/share/datasets/fashion-mnist
    python scripts/stage_costs.py /tmp/small.jsonl /tmp/large.jsonl --data-ratio 15

Prints a Markdown table (wall time and peak RSS of each stage in both runs, and their ratios; a stage
whose time grew by more than --data-ratio is flagged) and, last, the same figures as one JSON object.
A stage logged more than once (a re-run) counts by its last successful entry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_costs(path: Path) -> dict[str, dict]:
    costs: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("exit", 0) == 0:
                costs[row["stage"]] = row
    return costs


def compare(small: dict[str, dict], large: dict[str, dict], data_ratio: float) -> list[dict]:
    rows = []
    for stage in [*small, *(s for s in large if s not in small)]:
        a, b = small.get(stage), large.get(stage)
        row = {"stage": stage, "small_s": a and a["seconds"], "large_s": b and b["seconds"],
               "small_mib": a and a["peak_rss_mib"], "large_mib": b and b["peak_rss_mib"]}
        if a and b:
            row["time_ratio"] = round(b["seconds"] / max(a["seconds"], 1e-9), 2)
            row["memory_ratio"] = round(b["peak_rss_mib"] / max(a["peak_rss_mib"], 1e-9), 2)
            row["faster_than_data"] = row["time_ratio"] > data_ratio
        rows.append(row)
    return rows


def markdown(rows: list[dict], data_ratio: float) -> str:
    def cell(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = ["| stage | small: wall s | large: wall s | time ratio | small: peak RSS MiB | large: peak RSS MiB | memory ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **>**" if r.get("faster_than_data") else ""
        lines.append(f"| {r['stage']} | {cell(r['small_s'], '.1f')} | {cell(r['large_s'], '.1f')} | "
                     f"{cell(r.get('time_ratio'), '.2f')}{flag} | {cell(r['small_mib'], '.0f')} | {cell(r['large_mib'], '.0f')} | "
                     f"{cell(r.get('memory_ratio'), '.2f')} |")
    total_small = sum(r["small_s"] or 0 for r in rows)
    total_large = sum(r["large_s"] or 0 for r in rows)
    lines.append(f"| **all stages** | {total_small:.1f} | {total_large:.1f} | {total_large / max(total_small, 1e-9):.2f} | | | |")
    lines.append(f"\n**>**: time grew faster than the data (ratio > {data_ratio:g}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("small", type=Path, help="cost log of the smaller run")
    parser.add_argument("large", type=Path, help="cost log of the larger run")
    parser.add_argument("--data-ratio", type=float, default=15.0, help="how many times more data the large run has")
    args = parser.parse_args(argv)
    rows = compare(read_costs(args.small), read_costs(args.large), args.data_ratio)
    print(markdown(rows, args.data_ratio))
    print(json.dumps({"data_ratio": args.data_ratio, "stages": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
