"""`python -m diffinject STAGE [--params params.yaml]` — one entry point for every DVC stage."""

from __future__ import annotations

import argparse
import importlib
import sys

from diffinject.errors import DiffinjectError

# stage name -> (module under diffinject.stages, one-line help). Each module has `main(params_path)`.
STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("prepare", "build data/prepared/ (DisEnt layout + manifest) from data.source"),
    "validate": ("validate", "check data/prepared with great-expectations; fail on a broken dataset"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffinject",
        description="DiffInject pipeline stages (each is also a DVC stage in dvc.yaml).",
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"diffinject.stages.{STAGES[args.stage][0]}")
    try:
        module.main(args.params)
    except DiffinjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
