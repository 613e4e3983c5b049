"""The model registry: register a version of `registry.model_name` (the classifier model_logging.py logged),
and move the alias `champion` only when the new version beats the current champion on the validation
metric `registry.metric`; otherwise the version gets the alias `challenger` and the reason is printed.

Each version carries its metric as tags (`diffinject.metric`, `diffinject.metric_value`), so the
comparison does not depend on the run still existing; a champion registered under another metric is
compared through its run's metrics, and if it has none the new version is not promoted (promote it by
hand with `python -m diffinject promote VERSION`).

Registering a version and setting its alias are two calls: a run killed between them leaves a version
without an alias, which the next run with the same model files finishes (`cut_short_version`).

`registry.*` and the comparison rule (what counts as better): registry_config.py.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from diffinject.errors import DiffinjectError
from diffinject.tracking.registry_config import RegistryConfig, better, same_measure

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_METRIC = "diffinject.metric"
TAG_VALUE = "diffinject.metric_value"
TAG_PROMOTION = "diffinject.promotion"  # why the version got its alias
# sha256 of the registered models/<model>/ files: how a re-run recognises the version a killed run left
TAG_FILES = "diffinject.model_sha256"
TAG_FINISHED_BY = "diffinject.finished_by_run"  # the run that gave a cut-short version its alias


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def aliases_of(client: MlflowClient, name: str) -> dict[str, int] | None:
    """alias -> version of registered model `name`; None when there is no such model."""
    try:
        return {alias: int(version) for alias, version in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """None when there is no such model or no such alias. (An alias missing from a model that exists is
    INVALID_PARAMETER_VALUE to MLflow's SQL store, not RESOURCE_DOES_NOT_EXIST: hence the alias map.)"""
    aliases = aliases_of(client, name) or {}
    return client.get_model_version(name, str(aliases[alias])) if alias in aliases else None


def recorded_value(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """The version's value of `metric`'s measure (valid.acc of whichever candidate it was): its tag, else
    its run's metric, else None."""
    if same_measure(version.tags.get(TAG_METRIC, ""), metric) and TAG_VALUE in version.tags:
        return float(version.tags[TAG_VALUE])
    if version.run_id:
        try:
            value = client.get_run(version.run_id).data.metrics.get(metric)
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            value = None
        return value
    return None


def model_files_sha256(folder: Path) -> str:
    """One sha256 over the files of a models/<model>/ folder (model.pt, model.json), names included."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cut_short_version(client: MlflowClient, name: str, files_sha256: str) -> ModelVersion | None:
    """The newest version of `name` when a killed `register` left it behind: it holds these very model
    files (TAG_FILES), no alias points at it, and its run is FAILED (the stale-run check at this run's
    start marks a killed one so). Giving it its alias, instead of registering the same files again,
    leaves the registry as an uninterrupted run would."""
    aliases = aliases_of(client, name)
    versions = client.search_model_versions(f"name = '{name}'") if aliases is not None else []
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    if int(newest.version) in aliases.values() or newest.tags.get(TAG_FILES) != files_sha256 or not newest.run_id:
        return None
    try:
        status = client.get_run(newest.run_id).info.status
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    return newest if status == "FAILED" else None


@dataclass
class Decision:
    """What happened to a new version (also written to metrics/register.json)."""

    model_name: str
    version: int
    metric: str
    value: float
    alias: str  # champion | challenger
    promoted: bool
    reason: str
    previous_champion: int | None
    previous_value: float | None
    run_id: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(value: float, champion: ModelVersion | None, champion_value: float | None, cfg: RegistryConfig,
           metric: str | None = None) -> tuple[bool, str]:
    """(promote?, why) for a new version whose `metric` (default `cfg.metric`) is `value`."""
    metric = metric or cfg.metric
    if math.isnan(value):
        return False, f"{metric} is NaN"
    if champion is None:
        return True, f"no champion yet; {metric}={value:.4f}"
    if champion_value is None:
        return False, (f"champion version {champion.version} has no recorded {metric} (registered under another "
                       f"registry.metric?); promote by hand with `python -m diffinject promote VERSION`")
    word = "higher" if cfg.direction == "maximize" else "lower"
    if better(value, champion_value, cfg.direction):
        return True, f"{metric}={value:.4f} is {word} than champion version {champion.version}'s {champion_value:.4f}"
    return False, (f"{metric}={value:.4f} is not {word} than champion version {champion.version}'s "
                   f"{champion_value:.4f} ({cfg.direction})")


def register(client: MlflowClient, model_uri: str | None, run_id: str, value: float, cfg: RegistryConfig,
             tags: dict[str, str] | None = None, metric: str | None = None,
             cut_short: ModelVersion | None = None) -> Decision:
    """Register `model_uri` as a new version of `cfg.model_name` and give it `champion` when it beats the
    current champion on the measure of `metric` (default `cfg.metric`; the champion may be another
    candidate), else `challenger`. With `cut_short` (see cut_short_version) that version is finished
    instead: tagged and given its alias, nothing registered. Prints the decision and its reason."""
    metric = metric or cfg.metric
    champion = version_by_alias(client, cfg.model_name, CHAMPION)
    champion_value = recorded_value(client, champion, metric) if champion is not None else None
    promoted, reason = decide(value, champion, champion_value, cfg, metric)
    version_tags = {TAG_METRIC: metric, TAG_VALUE: repr(float(value)), TAG_PROMOTION: reason, **(tags or {})}
    if cut_short is None:
        if model_uri is None:
            raise ValueError("register: a model_uri is needed unless a cut-short version is finished")
        mv = mlflow.register_model(model_uri, cfg.model_name, tags=version_tags)
    else:
        mv = cut_short
        for key, tag in {**version_tags, TAG_FINISHED_BY: run_id}.items():
            client.set_model_version_tag(cfg.model_name, mv.version, key, tag)
        print(f"register: {cfg.model_name} version {mv.version} holds these model files but its run {mv.run_id} "
              "was killed before the alias was set; finishing it instead of registering them again")
    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(cfg.model_name, alias, mv.version)
    verdict = "promoted to champion" if promoted else "not promoted, alias challenger"
    print(f"register: {cfg.model_name} version {mv.version} {verdict}: {reason}")
    return Decision(
        model_name=cfg.model_name, version=int(mv.version), metric=metric, value=float(value), alias=alias,
        promoted=promoted, reason=reason, previous_champion=int(champion.version) if champion else None,
        previous_value=champion_value, run_id=run_id,
    )


def promote(client: MlflowClient, name: str, version: int) -> int | None:
    """Move `champion` to `version` by hand; returns the previous champion's version (None if none). The
    `challenger` alias is removed when it pointed at the promoted version."""
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        listed = ", ".join(map(str, versions)) if versions else "none (run the register stage first)"
        raise DiffinjectError(f"registered model {name!r} has no version {version} (versions: {listed})") from exc
    previous = version_by_alias(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), TAG_PROMOTION, "promoted by hand (python -m diffinject promote)")
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and int(challenger.version) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    before = f"version {previous.version}" if previous else "no champion"
    print(f"promote: {name} champion moved from {before} to version {version}")
    return int(previous.version) if previous else None
