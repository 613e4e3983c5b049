"""`python -m diffinject summary`: what a person reads at the end of `make pipeline` — one row per
model (unbiased test accuracy, conflict and worst-group accuracy, the valid accuracy selection reads),
the registry's decision and whether the generator helped, and where the pictures are. Reads metrics/eval.json and metrics/register.json
only; `dvc metrics show` stays the place for every number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffinject.config import StageParams
from diffinject.errors import DiffinjectError
from diffinject.stages.paths import EVAL, REGISTER
from diffinject.tracking.registry_config import generator_line

PARAMS = StageParams({}, seed=False)
# Where to look: sample grids and curves (files), all plots in one page (`dvc plots show`), the MLflow UI.
PICTURES = ("metrics/plots/ (sample grids, injected pairs, curves, confusion tables)",
            "dvc plots show  ->  dvc_plots/index.html",
            "mlflow ui --backend-store-uri sqlite:///$PWD/mlruns/mlflow.db --host 127.0.0.1  ->  http://127.0.0.1:5000")


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DiffinjectError(f"{path}: not valid JSON ({exc.msg}); re-run the stage that writes it") from exc


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def model_rows(results: dict[str, Any]) -> list[list[str]]:
    """model, test acc, test conflict acc, worst group (on the every-colour test set when there is
    one: every (class, colour) group is populated there), valid acc."""
    rows = []
    for model, splits in results.items():
        test, valid = splits.get("test", {}), splits.get("valid", {})
        worst = splits.get("test_palette", test).get("worst_group_acc")
        rows.append([model, _cell(test.get("acc")), _cell(test.get("conflict_acc")), _cell(worst), _cell(valid.get("acc"))])
    return rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def registry_line(decision: dict[str, Any]) -> str:
    return (f"registry: {decision.get('model_name')} v{decision.get('version')} = {decision.get('model')} "
            f"({decision.get('metric')} {_cell(decision.get('value'))}) -> alias {decision.get('alias')}: "
            f"{decision.get('reason')}")


def run(params: dict[str, Any], root: Path = Path(".")) -> str:
    """`params` is unused (PARAMS is empty): the table reads only what the stages wrote."""
    results = _read(root / EVAL)
    if results is None:
        raise DiffinjectError(f"{root / EVAL}: not found (run `dvc repro evaluate` first)")
    header = ["model", "test acc", "conflict", "worst group", "valid acc"]
    parts = [format_table(header, model_rows(results))]
    if any("test_palette" in splits for splits in results.values()):
        parts[0] += "\nworst group: the lowest (class, bias) group accuracy on the every-colour test set (data/palette)"
    decision = _read(root / REGISTER)
    parts.append(registry_line(decision) if decision else f"registry: no {REGISTER} yet (run `dvc repro register`)")
    if decision and decision.get("generator_vs_non_generative"):
        parts[-1] += "\n" + generator_line(decision["generator_vs_non_generative"])
    parts.append("pictures: " + "\n          ".join(PICTURES))
    text = "\n\n".join(parts)
    print(text)
    return text
