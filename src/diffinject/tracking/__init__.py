"""MLflow tracking, the model registry and the Optuna search. The only package that knows MLflow and
Optuna; it reads DVC's dvc.lock as YAML and never imports DVC.

store     where the MLflow store, its artifacts and the Optuna storage live (the main repository's mlruns/)
runs      one parent run per pipeline run: params, metrics, plots, git commit, DVC hashes, child runs
registry  log + register a classifier; champion moves only on a better validation metric; promote
search    the Optuna study: per-trial folders, MLflow child runs, failures, pruning, outputs
"""
