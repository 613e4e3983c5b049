"""`python -m diffinject search [--n-trials N] [--storage URL]`: an Optuna study of what the registered
model is made with: the injection setting (operator, sites, window, label rule), `injection.h_gamma`,
`debiased.bias_conflict_ratio` and the lr of the model trained (`search.*`; `diffinject.tracking.search`).

The objective is the model the registry registers: `search.model`, or (null) the `registry.candidates`
model with the best `registry.metric` measure in metrics/eval.json (debiased_lff in the default run), on
the validation split. The settings to choose from are the pilot's candidates (metrics/inject.json) that
scored at least `search.pilot_keep` x the winner's; the study's first trial is the pilot's choice with the
params' ratio and lr. Without a pilot report, the pilot's grid.

A trial re-runs only what those params change: `inject` (from the cached data/inversions and
models/diffusion, never re-inverting), the model's stage on the train split plus the trial's synthetic
pool, and `evaluate` of that model on the validation split. It works in its own folder
mlruns/search/<study>/trial-<n>/ whose inputs are links to this repository's, so workers never clash.

data/prepared, data/inversions, models/{diffusion,biased,lff,disent,lc,judge,vanilla}, metrics/{probe,inject,eval}.json
-> metrics/search.json, params.best.yaml, metrics/plots/search/*.png, MLflow run `search-<study>` with a
child run per trial.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from diffinject.config import StageParams
from diffinject.diffusion.pilot_grid import candidate_grid
from diffinject.errors import DiffinjectError
from diffinject.models.classifier import SELECT_METRIC
from diffinject.stages import debiased_disent, debiased_lc, debiased_lff, evaluate, inject, train_debiased
from diffinject.stages.paths import CURVES, DIFFUSION, EVAL, INVERSIONS, METRICS, MODELS, PREPARED, PROBE, SYNTHETIC_MANIFEST
from diffinject.tracking import metrics_files
from diffinject.tracking.registry_config import SELECTION_SPLIT, RegistryConfig, best_candidate
from diffinject.tracking.search import SECTION, SearchConfig, TrialSetup, ValidationCurve, run_search
from diffinject.tracking.search.config import SETTING, float_keys

POOL = SYNTHETIC_MANIFEST  # the trial's synthetic set, relative to its folder
REQUIRED = (PREPARED, INVERSIONS, DIFFUSION)
# inject's quality report (judge, vanilla), the two-branch stages' inputs (mine's conflicts for the
# biased rows are not needed: biased_sees reads the mix), and the pipeline's metrics the setup reads
OPTIONAL = (MODELS / "judge", MODELS / "vanilla", MODELS / "biased", MODELS / "lff", PROBE)
INJECT = METRICS / "inject.json"
# The stages a search can train: the DiffInject-based models (each mixes in the trial's pool).
STAGES = {"debiased": train_debiased, "debiased_lff": debiased_lff, "debiased_disent": debiased_disent,
          "debiased_lc": debiased_lc}
# The curve column of the selection metric, as stages.common.write_training_outputs names it (valid_acc).
CURVE_COLUMN = SELECT_METRIC.replace("/", "_")
PARAMS = StageParams({SECTION: SearchConfig, "registry": RegistryConfig})


def objective_model(cfg: SearchConfig, registry: RegistryConfig, root: Path) -> str:
    """search.model, else the registry candidate with the best measure in metrics/eval.json."""
    if cfg.model is not None:
        return cfg.model
    if not registry.candidates:
        return registry.model
    if not (root / EVAL).is_file():
        raise DiffinjectError(f"{root / EVAL}: not found; the search trains the registry's best candidate "
                              "(run `dvc repro evaluate`, or set search.model)")
    evaluated = metrics_files.file_metrics(root / EVAL)  # "<model>.valid.<metric>", the registry's own key scheme
    # a model not evaluated never wins
    values = {metric: evaluated.get(metric, float("nan")) for metric in registry.candidate_metrics()}
    if all(value != value for value in values.values()):
        raise DiffinjectError(f"{root / EVAL}: no registry candidate ({', '.join(registry.candidates)}) was evaluated "
                              "(run `dvc repro evaluate`, or set search.model)")
    return best_candidate(values, registry).split(".")[0]


def setting_name(keys: dict[str, Any]) -> str:
    window = "all t" if keys["t_max"] is None else f"t<={keys['t_max']}"
    return f"{keys['operator']} {'+'.join(keys['site'])} {window} label:{keys['label_from']}"


def injection_settings(cfg: SearchConfig, root: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """(setting name -> its injection keys but h_gamma, the pilot's winning candidate or None): the
    pilot's candidates within `search.pilot_keep` of its best score, else the whole grid."""
    keys = ("operator", "site", "t_max", "label_from")
    pilot = json.loads((root / INJECT).read_text()).get("pilot") if (root / INJECT).is_file() else None
    if pilot is None:
        known = unet_sites(root / DIFFUSION)
        rows = [c.as_params() for c in candidate_grid(None) if set(c.sites) <= known]
        winner = None
    else:
        best = max(row["score"] for row in pilot["candidates"])
        rows = [row for row in pilot["candidates"] if row["score"] >= cfg.pilot_keep * best]
        winner = next(row for row in pilot["candidates"] if row["name"] == pilot["winner"])
    settings = {setting_name(row): {k: row[k] for k in keys} for row in rows}  # one entry per gamma-free setting
    return settings, winner


def unet_sites(diffusion: Path) -> set[str]:
    """The injection sites of the DDPM in `diffusion` (h, up0 .. up{n-1}), from its config alone."""
    for config in (diffusion / "unet" / "config.json", diffusion / "config.json"):
        if config.is_file():
            n_up = len(json.loads(config.read_text()).get("up_block_types", ()))
            return {"h", *(f"up{i}" for i in range(n_up))}
    raise DiffinjectError(f"{diffusion}: no unet/config.json (run `dvc repro train_diffusion`)")


def first_trial(cfg: SearchConfig, params: dict[str, Any], model: str, winner: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pilot's choice (with its gamma) and the params' ratio and lr, clipped into the ranges."""
    if winner is None:
        return None
    ratio = params.get("debiased", {}).get("bias_conflict_ratio", 0.5)
    current = {"h_gamma": winner["h_gamma"],
               "bias_conflict_ratio": float(statistics.median(ratio)) if isinstance(ratio, list) else ratio,  # a list: its middle
               "lr": params.get(model, {}).get("lr", 1e-3)}
    out: dict[str, Any] = {SETTING: setting_name(winner)}
    for key, (target, _) in float_keys(model).items():
        low, high = getattr(cfg, key)
        out[target] = min(high, max(low, float(current[key])))
    return out


def trial_pipeline_for(model: str):
    stage = STAGES[model]

    def trial_pipeline(params: dict[str, Any], root: Path, curve: ValidationCurve) -> None:
        inject.run(params, root)
        stage.run(params, root, callbacks=[curve.lightning_callback(SELECT_METRIC)])
        curve.report(root / CURVES / f"{model}.csv")
        evaluate.run(params, root)

    return trial_pipeline


def setup_for(params: dict[str, Any], root: Path) -> tuple[TrialSetup, str]:
    """The trial setup and the objective metric (`<model>.valid.<metric>`)."""
    p = PARAMS.load(params)
    cfg, registry = getattr(p, SECTION), p.registry
    model = objective_model(cfg, registry, root)
    if model not in STAGES:
        raise DiffinjectError(f"params '{SECTION}.model' / 'registry.candidates': the search trains one of "
                              f"{', '.join(STAGES)}, got {model!r}")
    settings, winner = injection_settings(cfg, root) if cfg.search_injection else ({}, None)
    setup = TrialSetup(
        pipeline=trial_pipeline_for(model),
        required_inputs=REQUIRED,
        optional_inputs=OPTIONAL,
        # the trial's own pool; evaluate only the searched model, on the validation split only
        fixed={f"{name}.pool": str(POOL) for name in STAGES} | {"evaluate.models": [model],
                                                                 "evaluate.splits": [SELECTION_SPLIT]},
        curve_column=CURVE_COLUMN,
        running_best=params.get(model, {}).get("select", "best") == "best",
        missing_hint="run `dvc repro inject` first: trials reuse its inversions and diffusion model",
        model=model,
        settings=settings,
        first_trial=first_trial(cfg, params, model, winner) if settings else None,
    )
    return setup, f"{model}.{registry.measure}"


def run(params: dict[str, Any], root: Path = Path("."), n_trials: int | None = None,
        storage: str | None = None) -> dict[str, Any]:
    setup, metric = setup_for(params, Path(root))
    print(f"search: objective {metric} (the registry's candidate), {len(setup.settings)} injection setting(s)")
    registry = dict(params.get("registry", {}), metric=metric)
    return run_search({**params, "registry": registry}, root, setup, n_trials=n_trials, storage=storage)
