"""`python -m diffinject search [--model M] [--n-trials N] [--storage URL]`: an Optuna study of one
model's settings, on that model's valid accuracy (`search.*`; `diffinject.tracking.search`).

Every model can be searched, so that each row of the efficacy table can be tuned with the same budget
(benchmarks/tuned_table.py). Each declares its own space (`model_space`): the DiffInject-based rows
(`debiased`, `debiased_<method>`) the injection setting (operator, sites, window, label rule),
`injection.h_gamma`, `debiased.bias_conflict_ratio` and their lr; `upsample` the ratio and its lr; every
baseline its lr and the constants of its method (OWN_SPACES). `search.ranges` replaces any of those
ranges.

The objective is `--model`, else `search.model`, else the model the registry registers: the
`registry.candidates` model with the best `registry.metric` measure in metrics/eval.json (debiased_lff
in the default run), on the validation split. For the DiffInject rows the settings to choose from are
the pilot's candidates (metrics/inject.json) that scored at least `search.pilot_keep` x the winner's
(without a pilot report, the pilot's grid). The study's first trial is the params' own setting (the
pilot's choice for the injection), clipped into the ranges: the untuned model is always a trial.

A trial re-runs only what its params change: for the DiffInject rows `inject` (from the cached
data/inversions and models/diffusion, never re-inverting) then the model's stage on the train split
plus the trial's synthetic pool; for the others the model's stage; then `evaluate` of that model on the
validation split. It works in its own folder mlruns/search/<study>/trial-<n>/ whose inputs are links to
this repository's, so workers never clash.

data/prepared; for the DiffInject rows data/inversions, models/{diffusion,biased,lff,judge,vanilla} and
metrics/{probe,inject}.json; data/conflicts.csv for upsample, models/biased for ae_debias; metrics/eval.json
without a model -> metrics/search.json, params.best.yaml, metrics/plots/search/*.png, MLflow run `search-<study>` with a
child run per trial.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from diffinject.config import StageParams
from diffinject.diffusion.sites import saved_site_names
from diffinject.errors import DiffinjectError
from diffinject.models.classifier import SELECT_METRIC
from diffinject.pilot.candidates import candidate_grid, setting_name
from diffinject.stages import (ae_debias, debiased_disent, debiased_lc, debiased_lff, disent, evaluate, inject, lc, lff,
                               train_debiased, upsample, vanilla)
from diffinject.stages.paths import (CONFLICTS, CURVES, DIFFUSION, EVAL, INVERSIONS, METRICS, MODELS, PREPARED, PROBE,
                                     SYNTHETIC_MANIFEST)
from diffinject.tracking import metrics_files
from diffinject.tracking.registry_config import SELECTION_SPLIT, RegistryConfig, best_candidate
from diffinject.tracking.search import SECTION, Dim, SearchConfig, TrialSetup, ValidationCurve, run_search
from diffinject.tracking.search.config import SETTING, shared_space, with_ranges

POOL = SYNTHETIC_MANIFEST  # the trial's synthetic set, relative to its folder
REQUIRED = (PREPARED, INVERSIONS, DIFFUSION)
# inject's quality report (judge, vanilla), the two-branch stages' inputs (mine's conflicts for the
# biased rows are not needed: biased_sees reads the mix), and the pipeline's metrics the setup reads
OPTIONAL = (MODELS / "judge", MODELS / "vanilla", MODELS / "biased", MODELS / "lff", PROBE)
INJECT = METRICS / "inject.json"
# The DiffInject-based models: each trial injects its own pool, which they mix in.
POOL_STAGES = {"debiased": train_debiased, "debiased_lff": debiased_lff, "debiased_disent": debiased_disent,
               "debiased_lc": debiased_lc}
# Every model a search can train (the models/ folder it writes -> its stage).
STAGES = {**POOL_STAGES, "vanilla": vanilla, "lff": lff, "disent": disent, "lc": lc, "upsample": upsample,
          "ae_debias": ae_debias}
# The params section of a model whose section is not named after it.
SECTIONS = {"ae_debias": "ae"}
# What a model's stage reads besides data/prepared.
INPUTS = {"upsample": (CONFLICTS,), "ae_debias": (MODELS / "biased",)}
# Each model's own constants, beside its lr (and the ratio, for the models that add images); the ranges
# span the values the methods' papers and official code use.
OWN_SPACES: dict[str, list[Dim]] = {
    "vanilla": [Dim("vanilla.weight_decay", 1e-6, 1e-2, log=True)],
    "lff": [Dim("lff.gce_q", 0.3, 0.9), Dim("lff.ema_alpha", 0.5, 0.99)],
    "disent": [Dim("disent.lambda_dis", 1.0, 20.0, log=True), Dim("disent.lambda_swap_b", 1.0, 20.0, log=True),
               Dim("disent.lambda_swap", 0.1, 2.0, log=True), Dim("disent.swap_after", 0, 1200, integer=True),
               Dim("disent.lr_decay_every", 0.0, 0.5)],
    "lc": [Dim("lc.tau", 0.5, 2.0, log=True), Dim("lc.eta", 0.5, 2.0), Dim("lc.ema_alpha", 0.9, 0.999),
           Dim("lc.biased_lr_ratio", 0.1, 1.0, log=True)],
    "upsample": [],
    "ae_debias": [Dim("ae.theta", 0.1, 10.0, log=True), Dim("ae.rec_weight", 0.1, 2.0, log=True)],
}
RATIO = "debiased.bias_conflict_ratio"  # the pool ratio's one home, whichever stage trains
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


def section_of(model: str) -> str:
    return SECTIONS.get(model, model)


def model_space(cfg: SearchConfig, model: str) -> list[Dim]:
    """What a search of `model` samples: the DiffInject rows' shared space (h_gamma, ratio, lr) or the
    model's lr (from `search.lr`), the ratio for upsample, and its OWN_SPACES; `search.ranges` applied."""
    if model in POOL_STAGES:
        space = shared_space(cfg, model)
    else:
        space = [Dim(f"{section_of(model)}.lr", *cfg.lr, log=True), *OWN_SPACES[model]]
        if model == "upsample":
            space.insert(0, Dim(RATIO, *cfg.bias_conflict_ratio))
    return with_ranges(space, cfg.ranges, model)


def injection_settings(cfg: SearchConfig, root: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """(setting name -> its injection keys but h_gamma, the pilot's winning candidate or None): the
    pilot's candidates within `search.pilot_keep` of its best score, else the whole grid."""
    keys = ("operator", "site", "t_max", "label_from")
    pilot = json.loads((root / INJECT).read_text()).get("pilot") if (root / INJECT).is_file() else None
    if pilot is None:
        known = set(saved_site_names(root / DIFFUSION))
        rows = [c.as_params() for c in candidate_grid(None) if set(c.sites) <= known]
        winner = None
    else:
        best = max(row["score"] for row in pilot["candidates"])
        rows = [row for row in pilot["candidates"] if row["score"] >= cfg.pilot_keep * best]
        winner = next(row for row in pilot["candidates"] if row["name"] == pilot["winner"])
    settings = {setting_name(row): {k: row[k] for k in keys} for row in rows}  # one entry per gamma-free setting
    return settings, winner


def first_trial(params: dict[str, Any], model: str, space: list[Dim], winner: dict[str, Any] | None) -> dict[str, Any]:
    """The params' own setting, clipped into the ranges: the model's keys as the stage reads them (its
    defaults where the params say nothing), a ratio list's median, and for the DiffInject rows the
    pilot's choice (its setting and gamma)."""
    loaded = STAGES[model].PARAMS.load(params)
    out: dict[str, Any] = {}
    if winner is not None:
        out[SETTING] = setting_name(winner)
    for dim in space:
        if dim.target == "injection.h_gamma":
            value = winner["h_gamma"] if winner is not None else params.get("injection", {}).get("h_gamma")
        else:
            section, key = dim.target.split(".", 1)
            value = getattr(getattr(loaded, section), key)
        if isinstance(value, list):  # a ratio list: its middle
            value = statistics.median(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[dim.target] = dim.clip(value)
    return out


def trial_pipeline_for(model: str):
    stage = STAGES[model]

    def trial_pipeline(params: dict[str, Any], root: Path, curve: ValidationCurve) -> None:
        if model in POOL_STAGES:
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
        raise DiffinjectError(f"params '{SECTION}.model' (or --model) / 'registry.candidates': the search trains one of "
                              f"{', '.join(STAGES)}, got {model!r}")
    space = model_space(cfg, model)
    evaluate_only = {"evaluate.models": [model], "evaluate.splits": [SELECTION_SPLIT]}
    if model in POOL_STAGES:
        settings, winner = injection_settings(cfg, root) if cfg.search_injection else ({}, None)
        # the trial's own pool; evaluate only the searched model, on the validation split only
        inputs, optional = REQUIRED, OPTIONAL
        fixed = {f"{name}.pool": str(POOL) for name in POOL_STAGES} | evaluate_only
        hint = "run `dvc repro inject` first: trials reuse its inversions and diffusion model"
        first = first_trial(params, model, space, winner) if settings else None
    else:
        settings, inputs, optional, fixed = {}, (PREPARED, *INPUTS.get(model, ())), (), evaluate_only
        hint = f"run `dvc repro {'mine' if model == 'upsample' else 'train_biased' if model == 'ae_debias' else 'prepare'}` first"
        first = first_trial(params, model, space, None)
    setup = TrialSetup(
        pipeline=trial_pipeline_for(model),
        required_inputs=inputs,
        optional_inputs=optional,
        fixed=fixed,
        curve_column=CURVE_COLUMN,
        running_best=params.get(section_of(model), {}).get("select", "best") == "best",
        missing_hint=hint,
        model=model,
        settings=settings,
        first_trial=first,
        space=space,
    )
    return setup, f"{model}.{registry.measure}"


def run(params: dict[str, Any], root: Path = Path("."), n_trials: int | None = None,
        storage: str | None = None, model: str | None = None) -> dict[str, Any]:
    """`model` (--model) overrides `search.model`."""
    if model is not None:
        params = {**params, SECTION: {**(params.get(SECTION) or {}), "model": model}}
    setup, metric = setup_for(params, Path(root))
    what = f"{len(setup.settings)} injection setting(s), " if setup.model in POOL_STAGES else ""
    print(f"search: objective {metric}; {what}{', '.join(d.target for d in setup.space or [])}")
    registry = dict(params.get("registry", {}), metric=metric)
    return run_search({**params, "registry": registry}, root, setup, n_trials=n_trials, storage=storage)
