"""MLflow tracking, the model registry and the Optuna search. The only package that knows MLflow and
Optuna; it reads DVC's dvc.lock as YAML and never imports DVC.

store            where the MLflow store, its artifacts and the Optuna storage live (the main repository's mlruns/)
metrics_files    metrics/*.json as metric keys, a required metric, the training curves metrics/plots/train/*.csv
dvc_lock         dvc.lock: the DVC md5 of every data set and model, its data sets as MLflow dataset inputs
stale_runs       which process owns a run; runs left RUNNING by a process that is gone are marked FAILED
runs             one parent run per pipeline run: params, metrics, plots, git commit, DVC hashes, child runs
registry_config  registry.*: the selection metric, its direction, the candidates, what counts as better
model_logging    log a classifier as an MLflow model (input example, signature, pinned requirements)
registry         register a version; champion moves only on a better validation metric; promote
search           the Optuna study: per-trial folders, MLflow child runs, failures, pruning, outputs
"""
