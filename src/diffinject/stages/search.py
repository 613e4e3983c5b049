"""`python -m diffinject search [--n-trials N] [--storage URL]`: an Optuna study over
`injection.h_gamma`, `debiased.bias_conflict_ratio` and `debiased.lr` (`search.*`, objective
`registry.metric` on the validation split; `diffinject.tracking.search`).

A trial re-runs only what those params change: `inject` (from the cached data/inversions and
models/diffusion, never re-inverting), `train_debiased` on the train split plus the trial's synthetic
pool, and `evaluate` of that model on the validation split. It works in its own folder
mlruns/search/<study>/trial-<n>/ whose inputs are links to this repository's, so workers never clash.

data/prepared, data/inversions, models/{diffusion,judge,vanilla}, metrics/probe.json -> metrics/search.json,
params.best.yaml, metrics/plots/search/*.png, MLflow run `search-<study>` with a child run per trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffinject.config import StageParams, load_params, slice_of
from diffinject.errors import DiffinjectError
from diffinject.models.classifier import SELECT_METRIC
from diffinject.models.training import DebiasedConfig
from diffinject.stages import evaluate, inject, train_debiased
from diffinject.stages.paths import CURVES, MODELS, PREPARED
from diffinject.tracking.registry import SELECTION_SPLIT, RegistryConfig
from diffinject.tracking.search import SECTION, SearchConfig, TrialSetup, ValidationCurve, run_search

POOL = inject.OUT / "manifest.parquet"  # the trial's synthetic set, relative to its folder
REQUIRED = (PREPARED, inject.INVERSIONS, MODELS / "diffusion")
# inject's quality report (label fidelity, Fréchet distance) and, for `injection.label_from: auto`, the probes
OPTIONAL = (MODELS / "judge", MODELS / "vanilla", inject.PROBE)
# The curve column of the selection metric, as stages.common.write_training_outputs names it (valid_acc).
CURVE_COLUMN = SELECT_METRIC.replace("/", "_")
# What the search itself reads; each trial's stages read theirs from the trial's params.
PARAMS = StageParams({SECTION: SearchConfig, "registry": RegistryConfig,
                      train_debiased.SECTION: slice_of(DebiasedConfig, "select")})


def trial_pipeline(params: dict[str, Any], root: Path, curve: ValidationCurve) -> None:
    inject.run(params, root)
    train_debiased.run(params, root, callbacks=[curve.lightning_callback(SELECT_METRIC)])
    curve.report(root / CURVES / f"{train_debiased.SECTION}.csv")
    evaluate.run(params, root)


def setup_for(params: dict[str, Any]) -> TrialSetup:
    p = PARAMS.load(params)
    registry = p.registry
    if registry.model != train_debiased.SECTION:
        raise DiffinjectError(f"params 'registry.metric': the search trains the {train_debiased.SECTION} model, so its "
                              f"objective must be {train_debiased.SECTION}.{SELECTION_SPLIT}.<metric>, got {registry.metric!r}")
    select = getattr(p, train_debiased.SECTION).select
    return TrialSetup(
        pipeline=trial_pipeline,
        required_inputs=REQUIRED,
        optional_inputs=OPTIONAL,
        # the trial's own pool; evaluate only the searched model, on the validation split only
        fixed={f"{train_debiased.SECTION}.pool": str(POOL), "evaluate.models": [registry.model],
               "evaluate.splits": [SELECTION_SPLIT]},
        curve_column=CURVE_COLUMN,
        running_best=select == "best",
        missing_hint="run `dvc repro inject` first: trials reuse its inversions and diffusion model",
    )


def run(params: dict[str, Any], root: Path = Path("."), n_trials: int | None = None,
        storage: str | None = None) -> dict[str, Any]:
    return run_search(params, root, setup_for(params), n_trials=n_trials, storage=storage)


def main(params_path: str = "params.yaml", n_trials: int | None = None, storage: str | None = None) -> None:
    run(load_params(params_path), n_trials=n_trials, storage=storage)
