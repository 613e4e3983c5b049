"""For every file under src/, the dvc.yaml stages an edit of it re-runs: `direct` are the stages whose
code imports it (dvc re-runs them on any edit), `downstream` the stages after those that re-run only if
the edit changes an output (dvc skips a stage whose deps kept their hashes).

    python scripts/rerun_report.py            # markdown table, one row per file
    python scripts/rerun_report.py --json     # {file: {"direct": [...], "downstream": [...]}}
    python scripts/rerun_report.py --stage train_diffusion   # only the files that re-run that stage
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_dvc_graph import EXEMPT, SRC, closure, dvc_stages, has_code, stage_module  # noqa: E402


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def consumers() -> dict[str, set[str]]:
    """stage -> the stages that read one of its outputs (directly)."""
    stages = dvc_stages()
    produced = {out: name for name, s in stages.items() for out in _paths(s.get("outs")) + _paths(s.get("metrics"))}
    after: dict[str, set[str]] = {name: set() for name in stages}
    for name, s in stages.items():
        for dep in _paths(s.get("deps")):
            if dep in produced:
                after[produced[dep]].add(name)
    return after


def reruns() -> dict[str, dict[str, list[str]]]:
    stages, after = dvc_stages(), consumers()
    code = {name: {str(p.relative_to(REPO)) for p in closure(stage_module(s))} for name, s in stages.items()}
    report = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel in EXEMPT or not has_code(path):
            direct = set()
        else:
            direct = {name for name, files in code.items() if rel in files}
        seen, todo = set(), [n for d in direct for n in after[d]]
        while todo:
            name = todo.pop()
            if name not in seen and name not in direct:
                seen.add(name)
                todo += after[name]
        report[rel] = {"direct": sorted(direct), "downstream": sorted(seen)}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--stage", help="list only the files whose edit re-runs this stage")
    args = parser.parse_args()
    report = reruns()
    if args.stage:
        report = {f: r for f, r in report.items() if args.stage in r["direct"]}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print("| file | re-runs (imports it) | then, if an output changes |")
    print("|---|---|---|")
    for rel, r in report.items():
        print(f"| {rel.removeprefix('src/diffinject/')} | {len(r['direct'])}: {', '.join(r['direct']) or '-'} "
              f"| {len(r['downstream'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
