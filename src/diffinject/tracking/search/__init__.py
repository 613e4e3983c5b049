"""Optuna search over one model's space (`TrialSetup.space`: `Dim`s, each a params key and its range;
the DiffInject rows' default is `injection.h_gamma`, `debiased.bias_conflict_ratio` and their lr, ranges
in `search.*`), optimising the validation metric `registry.metric` in `registry.direction` (never a test
metric, nor one that needs bias labels unless `registry.use_bias_labels`: `RegistryConfig.check`).

- Storage: `search.storage` / `--storage`, else `sqlite:///<main repo>/mlruns/optuna.db` (SQLite waits
  `SQLITE_TIMEOUT_S` on a locked file, so workers on one machine can share it); any RDB URL
  (PostgreSQL) for workers on several machines. `load_if_exists`, so every worker started with the same
  `search.study_name` joins one study. Trial n samples with the search seed plus n, so two workers
  never draw the same random start-up trials and the values do not depend on which worker drew them.
- Resuming: a worker whose process vanished before it ended (SIGKILL, a power cut, an error) is taken
  over by the next worker started on its host: its trial cut short goes back to WAITING and runs again
  (same number, same params), then it runs the rest of its `n_trials`, so the study ends as it would
  have. Heartbeats mark FAIL a trial whose worker on another host has been silent for GRACE_PERIOD_S.
- Each trial runs the injected `pipeline(params, root, curve)` in its own folder
  `mlruns/search/<study>/trial-<n>/` (inputs linked from the repository, outputs private), reads
  `registry.metric` from the folder's metrics, and is an MLflow child run of the study's run
  (`search-<study>`; logged here with the client API, not optuna-integration's deprecated callback).
- A trial whose pipeline raises one of `TRIAL_FAILURES` is recorded FAIL (MLflow: FAILED, with the error)
  and the study goes on. A missing metric is not a trial failure: it stops the search with an error.
- Pruning: the pipeline gives its training `ValidationCurve.lightning_callback`, which reports each
  epoch's (running best) validation accuracy as it ends; training stops at the first epoch the pruner
  rejects, and `ValidationCurve.report` then marks the trial PRUNED before evaluation.
- At the end: metrics/search.json, params.best.yaml, and history / importance / curve plots (also
  artifacts of the study's run).

One module per concept, each importing only those above it:

config     `search.*` (SearchConfig) and its checks; the searched keys (SPACE), sampling them, the trial's
           params (overlay)
reporting  the study's MLflow run and its child run per trial; at the end metrics/search.json,
           params.best.yaml, the history / intermediate values / importance PNGs, the study run's final
           metrics and artifacts
objective  one trial: folder, linked inputs, pipeline, metric, failure handling (TrialSetup, TRIAL_FAILURES);
           the validation curve reported epoch by epoch and the Lightning callback that stops a rejected trial
study      opening the Optuna RDB storage; joining the study: metric check, worker index (or a killed
           worker's), per-trial sampler seed, the pruner; run_search: one worker from params to summary

The names below are the package's interface (the search stage, tests and benchmarks import them from
here); the modules' other names are internals.
"""

from diffinject.tracking.search.config import SECTION, SPACE, Dim, SearchConfig, overlay
from diffinject.tracking.search.objective import (TRIAL_FAILURES, Pipeline, PruneDuringTraining, TrialFailed, TrialSetup,
                                                  ValidationCurve)
from diffinject.tracking.search.reporting import BEST_PARAMS, PLOTS, SEARCH_JSON
from diffinject.tracking.search.study import METRIC_ATTR, WORKERS_ATTR, open_storage, run_search

__all__ = [
    "BEST_PARAMS", "Dim", "METRIC_ATTR", "PLOTS", "SEARCH_JSON", "SECTION", "SPACE", "TRIAL_FAILURES", "WORKERS_ATTR",
    "Pipeline", "PruneDuringTraining", "SearchConfig", "TrialFailed", "TrialSetup", "ValidationCurve",
    "open_storage", "overlay", "run_search",
]
