"""The register stage and the registry: one parent run per pipeline run with everything it names, the
champion alias moving only on a better validation metric, promote by hand, models:/NAME@champion
predicting on a batch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from diffinject import cli
from diffinject.data.tensors import load_split
from diffinject.errors import DiffinjectError
from diffinject.models.checkpoint import load_classifier, save_classifier
from diffinject.models.classifier import to_unit_float
from diffinject.models.networks import NetConfig, build_network
from diffinject.stages import register, summary
from diffinject.tracking import metrics_files, model_logging, registry, registry_config

CURVE = [{"epoch": e, "train_acc": 0.5 + e / 10, "valid_acc": 0.4 + e / 10} for e in (1, 2, 3)]


def make_pipeline_root(root: Path, prepared: Path, valid_acc: float, seed: int = 0) -> Path:
    """What `dvc repro` leaves before register: data/prepared, models/debiased, metrics, plots, dvc.lock."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared)
    torch.manual_seed(seed)
    cfg = NetConfig("mlp", 10, (3, 28, 28))
    (root / "models" / "debiased").mkdir(parents=True)
    save_classifier(root / "models" / "debiased", build_network(cfg), cfg, {"stage": "debiased"})
    metrics = root / "metrics"
    (metrics / "plots" / "train").mkdir(parents=True)
    (metrics / "plots" / "prepare").mkdir(parents=True)
    (metrics / "eval.json").write_text(json.dumps({"debiased": {"valid": {"acc": valid_acc}, "test": {"acc": valid_acc - 0.02}}}))
    (metrics / "debiased.json").write_text(json.dumps({"best_epoch": 3, "valid": {"acc": valid_acc}}))
    (metrics / "inject.json").write_text(json.dumps({"label_fidelity": 0.8, "label_from": "content"}))
    with (metrics / "plots" / "train" / "debiased.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CURVE[0]))
        writer.writeheader()
        writer.writerows(CURVE)
    (metrics / "plots" / "prepare" / "samples_train.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "prepare": {"outs": [{"path": "data/prepared", "md5": "0123456789abcdef0123456789abcdef.dir"}]},
        "train_debiased": {"deps": [{"path": "data/prepared", "md5": "0123456789abcdef0123456789abcdef.dir"},
                                    {"path": "data/synthetic", "md5": "fedcba9876543210fedcba9876543210.dir"},
                                    {"path": "src/diffinject/stages/train_debiased.py", "md5": "not a data set"}],
                           "outs": [{"path": "models/debiased", "md5": f"{seed:032x}.dir"},
                                    {"path": "metrics/debiased.json", "md5": "ignored"}]},
    }}))
    return root


def params(model_name: str, **registry_keys) -> dict:
    return {"seed": 0, "injection": {"h_gamma": 0.7, "n_samples": 400}, "debiased": {"epochs": 3, "pool": None},
            "registry": {"model_name": model_name, "candidates": None, **registry_keys}}


def test_parent_run_names_params_metrics_data_hashes_plots_and_child_curves(store_root, prepared_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "zesty-lamb")
    root = make_pipeline_root(tmp_path / "run", prepared_mnist, valid_acc=0.6)
    result = register.run(params("m-logged"), root)
    client = MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.run_name == "zesty-lamb" and parent.data.tags["dvc.exp_name"] == "zesty-lamb"
    assert parent.data.params["injection.h_gamma"] == "0.7" and parent.data.params["debiased.pool"] == "null"
    assert parent.data.params["dvc.data/prepared.md5"] == "0123456789abcdef0123456789abcdef.dir"
    assert "dvc.metrics/debiased.json.md5" not in parent.data.params
    assert parent.data.metrics["debiased.valid.acc"] == 0.6 and parent.data.metrics["inject/label_fidelity"] == 0.8
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "plots/prepare")}
    assert artifacts == {"plots/prepare/samples_train.png"}
    assert {a.path for a in client.list_artifacts(result["run_id"], "pipeline")} == {"pipeline/dvc.lock"}
    (child,) = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result['run_id']}'")
    assert child.info.run_name == "debiased" and child.data.params["debiased.epochs"] == "3"
    history = client.get_metric_history(child.info.run_id, "valid_acc")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.5), (2, 0.6), (3, 0.7)]
    assert json.loads((root / "metrics" / "register.json").read_text())["version"] == 1
    # the UI's Datasets column: DVC-versioned inputs, name = DVC path, digest = md5
    seen = lambda run: {(d.dataset.name, d.dataset.digest, d.dataset.source_type, {t.key: t.value for t in d.tags}[  # noqa: E731
        "mlflow.data.context"]) for d in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert seen(parent) == {("data/prepared", "0123456789abcdef0123456789abcdef.dir", "dvc", "prepare")}
    assert seen(child) == {("data/prepared", "0123456789abcdef0123456789abcdef.dir", "dvc", "training"),
                           ("data/synthetic", "fedcba9876543210fedcba9876543210.dir", "dvc", "training")}


def test_champion_moves_only_when_the_validation_metric_improves(store_root, prepared_mnist, tmp_path, capsys):
    name = "m-promotion"
    seen = []
    for i, acc in enumerate((0.50, 0.40, 0.50, 0.55)):  # first, worse, tie, better
        seen.append(register.run(params(name), make_pipeline_root(tmp_path / f"r{i}", prepared_mnist, acc, seed=i)))
    assert [(d["version"], d["alias"], d["promoted"]) for d in seen] == [
        (1, "champion", True), (2, "challenger", False), (3, "challenger", False), (4, "champion", True)]
    assert seen[1]["reason"] == "debiased.valid.acc=0.4000 is not higher than champion version 1's 0.5000 (maximize)"
    assert seen[3]["previous_champion"] == 1 and seen[3]["previous_value"] == 0.5
    assert "version 2 not promoted, alias challenger: debiased.valid.acc=0.4000 is not higher" in capsys.readouterr().out
    client = MlflowClient()
    assert int(client.get_model_version_by_alias(name, registry.CHAMPION).version) == 4
    assert int(client.get_model_version_by_alias(name, registry.CHALLENGER).version) == 3


def add_candidate(root: Path, name: str, valid_acc: float, seed: int = 7) -> None:
    """A second DiffInject-based model folder and its metrics beside make_pipeline_root's debiased."""
    torch.manual_seed(seed)
    cfg = NetConfig("mlp", 10, (3, 28, 28))
    (root / "models" / name).mkdir(parents=True)
    save_classifier(root / "models" / name, build_network(cfg), cfg, {"stage": name})
    results = json.loads((root / "metrics" / "eval.json").read_text())
    results[name] = {"valid": {"acc": valid_acc}, "test": {"acc": valid_acc}}
    (root / "metrics" / "eval.json").write_text(json.dumps(results))


def test_the_best_candidate_on_valid_is_registered_and_compared_with_any_champion(store_root, prepared_mnist, tmp_path):
    name = "m-candidates"
    both = {"candidates": ["debiased", "debiased_lff"]}
    first = make_pipeline_root(tmp_path / "r0", prepared_mnist, 0.50)
    add_candidate(first, "debiased_lff", 0.60)
    d0 = register.run(params(name, **both), first)
    assert (d0["model"], d0["metric"], d0["value"], d0["promoted"]) == ("debiased_lff", "debiased_lff.valid.acc", 0.6, True)
    assert d0["candidates"] == {"debiased.valid.acc": 0.5, "debiased_lff.valid.acc": 0.6}
    # the next run's best is the plain debiased model, below the debiased_lff champion: compared anyway
    second = make_pipeline_root(tmp_path / "r1", prepared_mnist, 0.55)
    add_candidate(second, "debiased_lff", 0.52)
    d1 = register.run(params(name, **both), second)
    assert (d1["model"], d1["promoted"], d1["previous_value"]) == ("debiased", False, 0.6)
    assert d1["reason"] == "debiased.valid.acc=0.5500 is not higher than champion version 1's 0.6000 (maximize)"
    version = MlflowClient().get_model_version(name, "1")
    assert version.tags["diffinject.model"] == "debiased_lff" and version.tags[registry.TAG_METRIC] == "debiased_lff.valid.acc"
    # a candidate without metrics is named
    third = make_pipeline_root(tmp_path / "r2", prepared_mnist, 0.55)
    with pytest.raises(metrics_files.MissingMetricError, match=r"params 'registry.candidates': metric 'debiased_lff.valid.acc' not found"):
        register.run(params(name, **both), third)


def test_candidates_ties_go_to_the_first_listed_and_nan_never_wins():
    cfg = registry_config.RegistryConfig(candidates=["debiased", "debiased_lff"])
    assert registry_config.best_candidate({"debiased.valid.acc": 0.7, "debiased_lff.valid.acc": 0.7}, cfg) == "debiased.valid.acc"
    assert registry_config.best_candidate({"debiased.valid.acc": float("nan"), "debiased_lff.valid.acc": 0.1}, cfg) == "debiased_lff.valid.acc"
    gaps = registry_config.RegistryConfig(metric="debiased.valid.dp_gap", direction="minimize", candidates=["debiased", "x"])
    assert registry_config.best_candidate({"debiased.valid.dp_gap": 0.3, "x.valid.dp_gap": 0.2}, gaps) == "x.valid.dp_gap"
    with pytest.raises(DiffinjectError, match=r"params 'registry.candidates': empty"):
        registry_config.RegistryConfig(candidates=[]).check()


def test_a_metric_that_needs_bias_labels_is_refused_unless_the_user_says_so(store_root, prepared_mnist, tmp_path, capsys):
    with pytest.raises(DiffinjectError, match=r"params 'registry.metric': worst_group_acc needs the validation split's "
                                              r"bias labels.*registry.use_bias_labels: true"):
        registry_config.RegistryConfig(metric="debiased.valid.worst_group_acc").check()
    assert not registry_config.RegistryConfig().reads_bias_labels
    root = make_pipeline_root(tmp_path / "run", prepared_mnist, valid_acc=0.6)
    results = json.loads((root / "metrics" / "eval.json").read_text())
    results["debiased"]["valid"]["conflict_acc"] = 0.4
    (root / "metrics" / "eval.json").write_text(json.dumps(results))
    with pytest.raises(DiffinjectError, match=r"conflict_acc needs the validation split's bias labels"):
        register.run(params("m-bias-labels", metric="debiased.valid.conflict_acc"), root)
    out = register.run(params("m-bias-labels", metric="debiased.valid.conflict_acc", use_bias_labels=True), root)
    assert out["selection_reads_bias_labels"] and out["value"] == 0.4
    assert "register: selection with validation bias labels" in capsys.readouterr().out
    version = MlflowClient().get_model_version("m-bias-labels", str(out["version"]))
    assert version.tags["diffinject.selection"] == registry_config.WITH_BIAS_LABELS


def test_the_generator_is_compared_with_the_best_non_generative_model():
    cfg = registry_config.RegistryConfig()
    metrics = {"debiased.valid.acc": 0.70, "debiased_lc.valid.acc": 0.75, "lff.valid.acc": 0.78, "lc.valid.acc": 0.72,
               "biased.valid.acc": 0.99, "debiased_lff.test.acc": 0.99, "vanilla.valid.conflict_acc": 0.99,
               "inject/label_fidelity": 0.9}
    out = registry_config.generator_comparison(metrics, cfg)
    assert (out["generator_model"], out["non_generative_model"], out["helped"]) == ("debiased_lc", "lff", False)
    assert out["margin"] == pytest.approx(-0.03)
    assert registry_config.generator_line(out).startswith("the generator did not help here: best DiffInject-based debiased_lc")
    assert "(-3.0 points)" in registry_config.generator_line(out)
    gaps = registry_config.RegistryConfig(metric="debiased.valid.dp_gap", direction="minimize", use_bias_labels=True)
    out = registry_config.generator_comparison({"debiased.valid.dp_gap": 0.1, "lff.valid.dp_gap": 0.3}, gaps)
    assert out["helped"] and out["margin"] == pytest.approx(0.2)  # a lower gap is better
    assert registry_config.generator_comparison({"debiased.valid.acc": 0.7}, cfg) is None  # no baseline evaluated


def test_register_says_whether_the_generator_helped_and_baselines_can_be_champions(store_root, prepared_mnist, tmp_path, capsys):
    root = make_pipeline_root(tmp_path / "run", prepared_mnist, 0.50)
    add_candidate(root, "lc", 0.62)
    out = register.run(params("m-any-kind", candidates=["debiased", "lc"]), root)
    assert out["model"] == "lc" and out["generator_vs_non_generative"]["helped"] is False  # the champion of any kind
    log = capsys.readouterr().out
    assert "the generator did not help here: best DiffInject-based debiased valid.acc 0.5000 vs best non-generative lc 0.6200" in log
    text = summary.run({}, root)
    assert "the generator did not help here" in text


def test_minimize_direction_and_a_champion_without_the_metric():
    cfg = registry_config.RegistryConfig(metric="debiased.valid.dp_gap", direction="minimize")

    class Version:
        version = "7"

    assert registry.decide(0.1, Version, 0.2, cfg)[0] is True
    assert registry.decide(0.3, Version, 0.2, cfg)[0] is False
    promoted, why = registry.decide(0.1, Version, None, cfg)
    assert not promoted and "has no recorded debiased.valid.dp_gap" in why
    assert registry.decide(float("nan"), None, None, cfg) == (False, "debiased.valid.dp_gap is NaN")


@pytest.mark.parametrize("fmt", ["pickle", "pt2"])
def test_champion_loads_from_the_registry_and_predicts_a_batch(store_root, prepared_mnist, tmp_path, fmt):
    name = f"m-serve-{fmt}"
    root = make_pipeline_root(tmp_path / "run", prepared_mnist, valid_acc=0.6)
    register.run(params(name, serialization_format=fmt), root)
    batch = to_unit_float(load_split(prepared_mnist, "test").images[:9]).numpy()  # (9, 3, 28, 28) in [0, 1]
    net, _, _ = load_classifier(root / "models" / "debiased")
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(batch)
    np.testing.assert_allclose(np.asarray(served), expected, rtol=1e-5, atol=1e-5)
    model = mlflow.pytorch.load_model(f"models:/{name}@champion")
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(batch)).numpy(), expected, rtol=1e-5, atol=1e-5)
    requirements = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion")) / "requirements.txt"
    lines = requirements.read_text().splitlines()  # ours, pinned, plus the mlflow line MLflow adds
    assert set(lines) - {f"mlflow=={mlflow.__version__}"} == set(model_logging.pip_requirements(fmt))
    assert f"torch=={torch.__version__.split('+')[0]}" in lines


def test_promote_by_hand_through_the_cli(store_root, prepared_mnist, tmp_path, monkeypatch, capsys):
    name = "m-by-hand"
    for i, acc in enumerate((0.6, 0.5)):
        register.run(params(name), make_pipeline_root(tmp_path / f"r{i}", prepared_mnist, acc, seed=i))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params(name)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["promote", "2"]) == 0
    client = MlflowClient()
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2
    with pytest.raises(mlflow.exceptions.MlflowException):  # challenger pointed at version 2: removed
        client.get_model_version_by_alias(name, "challenger")
    assert "champion moved from version 1 to version 2" in capsys.readouterr().out
    assert cli.main(["promote", "9"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: registered model '{name}' has no version 9 (versions: 1, 2)"]


def test_a_test_split_metric_is_refused(store_root, prepared_mnist, tmp_path):
    root = make_pipeline_root(tmp_path / "run", prepared_mnist, valid_acc=0.6)
    with pytest.raises(DiffinjectError, match=r"'debiased.test.acc' is on the test split; model selection and search use the valid split only"):
        register.run(params("m-test", metric="debiased.test.acc"), root)


def test_a_missing_metric_fails_before_anything_is_logged(store_root, prepared_mnist, tmp_path):
    root = make_pipeline_root(tmp_path / "run", prepared_mnist, valid_acc=0.6)
    (root / "metrics" / "eval.json").write_text(json.dumps({"vanilla": {"valid": {"acc": 0.5}}}))
    with pytest.raises(metrics_files.MissingMetricError, match="'debiased.valid.acc' not found"):
        register.run(params("m-missing"), root)
    assert MlflowClient().search_registered_models("name = 'm-missing'") == []


class AliasStepFailed(RuntimeError):
    """Stands in for a process dying between registering a version and setting its alias."""


def fail_at_the_alias(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AliasStepFailed("gone before the alias")
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fail)


def test_a_version_its_run_left_without_an_alias_is_finished_not_registered_again(store_root, prepared_mnist, tmp_path,
                                                                                  monkeypatch, capsys):
    name = "m-cut-short"
    root = make_pipeline_root(tmp_path / "run", prepared_mnist, valid_acc=0.6)
    with monkeypatch.context() as mp:
        fail_at_the_alias(mp)
        with pytest.raises(AliasStepFailed):
            register.run(params(name), root)
    client = MlflowClient()
    (left,) = client.search_model_versions(f"name = '{name}'")
    assert client.get_run(left.run_id).info.status == "FAILED" and not client.get_registered_model(name).aliases
    result = register.run(params(name), root)
    assert "finishing it instead of registering them again" in capsys.readouterr().out
    assert (result["version"], result["alias"], result["previous_champion"]) == (1, "champion", None)
    (version,) = client.search_model_versions(f"name = '{name}'")
    assert version.tags[registry.TAG_FINISHED_BY] == result["run_id"] != left.run_id
    assert version.tags[registry.TAG_PROMOTION] == "no champion yet; debiased.valid.acc=0.6000"
    assert int(client.get_model_version_by_alias(name, registry.CHAMPION).version) == 1
    assert registry.promote(client, name, 1) == 1  # no challenger alias anywhere: not an error


def test_a_cut_short_version_of_other_files_is_left_and_a_new_one_registered(store_root, prepared_mnist, tmp_path,
                                                                             monkeypatch):
    """Retrained between the kill and the re-run: the left version holds other files, so it is not
    the one to finish; a version that has an alias, or whose run finished, never is."""
    name = "m-cut-short-other"
    with monkeypatch.context() as mp:
        fail_at_the_alias(mp)
        with pytest.raises(AliasStepFailed):
            register.run(params(name), make_pipeline_root(tmp_path / "a", prepared_mnist, 0.6, seed=1))
    result = register.run(params(name), make_pipeline_root(tmp_path / "b", prepared_mnist, 0.6, seed=2))
    assert (result["version"], result["alias"]) == (2, "champion")
    client = MlflowClient()
    files = client.get_model_version(name, "2").tags[registry.TAG_FILES]
    assert registry.cut_short_version(client, name, files) is None  # version 2 has the alias
    assert registry.cut_short_version(client, name, client.get_model_version(name, "1").tags[registry.TAG_FILES]) is None
