"""Rewrite each dvc.yaml stage's source deps and `params:` from its code: the files its stage module
imports (transitively; tests/test_dvc_graph.py's walk) and its PARAMS. Data, model and metrics deps,
comments and everything else stay as they are. Run after adding an import; the graph test says when.

    python scripts/sync_dvc_graph.py          # rewrite dvc.yaml
    python scripts/sync_dvc_graph.py --check  # exit 1 if it would change anything
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_dvc_graph import DVC_YAML, EXEMPT, closure, dvc_stages, has_code, stage_module  # noqa: E402

ITEM = re.compile(r"^      - (\S+)\s*$")


def wanted(stage: dict) -> tuple[list[str], list[str]]:
    module = stage_module(stage)
    src = sorted(str(p.relative_to(REPO)) for p in closure(module)
                 if str(p.relative_to(REPO)) not in EXEMPT and has_code(p))
    return src, importlib.import_module(module).PARAMS.keys()


def rewrite(text: str) -> str:
    stages = dvc_stages()
    out, lines, i, current = [], text.splitlines(), 0, None
    while i < len(lines):
        line = lines[i]
        name = re.match(r"^  (\w+):\s*$", line)
        if name and name.group(1) in stages:
            current = name.group(1)
        block = re.match(r"^    (deps|params):\s*$", line)
        if current and block:
            out.append(line)
            i += 1
            items = []
            while i < len(lines) and ITEM.match(lines[i]):
                items.append(ITEM.match(lines[i]).group(1))
                i += 1
            src, params = wanted(stages[current])
            if block.group(1) == "deps":
                items = src + [d for d in items if not d.startswith("src/")]
            else:
                items = params
            out += [f"      - {item}" for item in items]
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether dvc.yaml is in sync")
    args = parser.parse_args()
    before = DVC_YAML.read_text()
    after = rewrite(before)
    if args.check:
        print("dvc.yaml is in sync" if after == before else "dvc.yaml is out of sync: run python scripts/sync_dvc_graph.py")
        return int(after != before)
    DVC_YAML.write_text(after)
    print("dvc.yaml rewritten" if after != before else "dvc.yaml was already in sync")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
