"""How `inject` and `fair_finetune` choose the injection setting of a run (`settle_injection`): the keys
the params set are obeyed; with `injection.auto` the pilot (diffusion/pilot.py) chooses the keys left
`auto` on the models this repository has trained, its grid restricted to the values set; with
`auto: false` a key left `auto` takes the hand-chosen value and the label rule comes from the probes'
metrics/probe.json; with `generator: fair`, the setting models/fair's adapter was fine-tuned for.
Reads no bias label."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from diffinject.data.tensors import ImageTensors, load_split, num_classes_of
from diffinject.diffusion.conditioning import is_class_conditional
from diffinject.diffusion.injection_params import (AUTO, GUIDANCE_GRID, GUIDANCE_KEYS, PILOT_KEYS, Candidate, InjectionParams,
                                                   restrict)
from diffinject.diffusion.lora import attach_adapter, read_adapter
from diffinject.diffusion.pilot import conflict_trust, run_pilot
from diffinject.diffusion.pilot_grid import candidate_grid
from diffinject.diffusion.pool_filter import make_judge, probabilities
from diffinject.diffusion.probes import decide_label_from
from diffinject.diffusion.reader_guidance import ReaderGuidance
from diffinject.diffusion.sampler import content_features
from diffinject.diffusion.sites import site_names
from diffinject.errors import DiffinjectError, first_line
from diffinject.imaging import save_labelled_rows
from diffinject.models.checkpoint import load_classifier
from diffinject.models.classifier import predictor
from diffinject.stages.paths import FAIR, METRICS, PLOTS, PREPARED, PROBE, model_dir

PILOT_SHOWN = 10  # pilot images per candidate in pilot.png
# Models the pilot may read a label fidelity from (never the biased one: it is the bias proxy).
REFERENCES = ("lff", "disent", "lc", "vanilla")


def resolve_label_from(root: Path, cfg: InjectionParams) -> dict[str, Any]:
    """{"label_from": content|style, ...}: as set, or for `auto` the probes' decision and its numbers."""
    if cfg.label_from != "auto":
        return {"label_from": cfg.label_from, "decided_by": "params"}
    if not (root / PROBE).is_file():
        raise DiffinjectError(f"{root / PROBE}: not found; injection.label_from auto needs the probes (run `python -m diffinject probe`)")
    try:
        probe = json.loads((root / PROBE).read_text())
    except (OSError, ValueError) as exc:
        raise DiffinjectError(f"{root / PROBE}: not valid JSON ({first_line(exc)}); re-run `python -m diffinject probe`") from exc
    if not isinstance(probe, dict) or not isinstance(probe.get("curves"), dict):
        raise DiffinjectError(f"{root / PROBE}: expected a JSON object with the probes' curves; re-run `python -m diffinject probe`")
    unknown = [site for site in cfg.sites() if site not in probe["curves"]]
    if unknown:
        raise DiffinjectError(f"{root / PROBE}: no probe of site {unknown[0]!r} (re-run the probe stage)")
    try:
        decision = decide_label_from(probe, cfg.sites(), cfg.operator, cfg.t_edit, cfg.t_max)
    except ValueError as exc:
        raise DiffinjectError(f"params 'injection.t_edit' / 'injection.t_max': {exc}") from exc
    return {**decision, "decided_by": "probe"}


@dataclasses.dataclass
class Settled:
    """The setting a run injects with, and how each key got its value."""

    cfg: InjectionParams  # every key resolved (none `auto`)
    decision: dict[str, Any]  # the label rule and what decided it
    chosen_by: dict[str, str]  # per key of PILOT_KEYS: params | pilot | hand-chosen (auto: false) | probe | fair adapter
    pilot_report: dict[str, Any] | None = None
    features: Any = None  # the contents' features at every site the pilot captured, for the pool to reuse


def settle_injection(root: Path, cfg: InjectionParams, unet, scheduler, contents, styles, manifest: pd.DataFrame,
                     train: ImageTensors, seed: int, device: torch.device) -> Settled:
    """The one place a run's injection setting is decided (inject and fair_finetune). The set keys are
    checked against this UNet and T first: a typo is an error, pilot or not."""
    known = site_names(unet)
    conditional = is_class_conditional(unet)
    cfg.check_against_model(known, int(scheduler.config.num_train_timesteps), conditional)
    fixed = cfg.fixed()
    unguided = [] if conditional else [key for key in GUIDANCE_KEYS if getattr(cfg, key) == AUTO]
    cfg = dataclasses.replace(cfg, **{key: None for key in unguided})  # an unconditional DDPM: no guidance to choose
    settled = _settle(root, cfg, fixed, known, conditional, unet, scheduler, contents, styles, manifest, train, seed, device)
    if cfg.generator != "fair":
        settled.chosen_by.update({key: "unconditional DDPM" for key in unguided})
    return settled


def _settle(root: Path, cfg: InjectionParams, fixed: dict, known: list[str], conditional: bool, unet, scheduler,
            contents, styles, manifest: pd.DataFrame, train: ImageTensors, seed: int, device: torch.device) -> Settled:
    if cfg.generator == "fair":
        check_fair_supported(unet)
        cfg, features = use_fair_adapter(root, cfg, unet, contents)
        return Settled(cfg, {"label_from": cfg.label_from, "decided_by": "fair adapter (models/fair/adapter.json)"},
                       {key: "fair adapter" for key in PILOT_KEYS}, features=features)
    if not cfg.auto:
        cfg = cfg.with_hand_chosen()
        decision = resolve_label_from(root, cfg)
        cfg = dataclasses.replace(cfg, label_from=decision["label_from"])
        return Settled(cfg, decision, {key: "params" if key in fixed else "probe" if key == "label_from"
                                       else "hand-chosen (auto: false)" for key in PILOT_KEYS})
    candidates, skipped = pilot_candidates(cfg, known, conditional)
    if len(candidates) == 1 and not guidance_left(cfg, conditional):  # every key set: nothing left to choose
        cfg = dataclasses.replace(cfg, **candidates[0].as_params())
        return Settled(cfg, {"label_from": cfg.label_from, "decided_by": "params"}, {key: "params" for key in PILOT_KEYS})
    row_of = {int(i): k for k, i in enumerate(train.ids.tolist())}
    originals = train.images[[row_of[int(i)] for i in contents.ids]]
    cfg, report, features = choose_injection(root, cfg, candidates, skipped, unet, scheduler, contents, styles, manifest,
                                             originals, seed, device)
    report["fixed_by_params"] = sorted(fixed)
    return Settled(cfg, {"label_from": cfg.label_from, "decided_by": "params" if "label_from" in fixed else "pilot"},
                   {key: "params" if key in fixed else "pilot" for key in PILOT_KEYS}, report, features)


def guidance_left(cfg: InjectionParams, conditional: bool) -> bool:
    """Whether a class-conditional DDPM's guidance keys are (partly) left to the pilot's guidance round."""
    return conditional and any(getattr(cfg, key) == AUTO for key in GUIDANCE_KEYS)


def rule_leaders(candidates: list[Candidate], rows: list[dict]) -> list[Candidate]:
    """Per label rule, in grid order, the first round's best candidate among those that reached its last
    rung: the label condition interacts with the rule (under label:style it is the class the style was
    inverted under, under label:content another), so each rule's best gets its own guidance round."""
    leaders = []
    for rule in dict.fromkeys(c.label_from for c in candidates):
        of_rule = [k for k, c in enumerate(candidates) if c.label_from == rule]
        deepest = max(rows[k]["rungs"] for k in of_rule)
        finalists = [k for k in of_rule if rows[k]["rungs"] == deepest]
        leaders.append(candidates[max(finalists, key=lambda k: rows[k]["score"])])  # max keeps the first of equals
    return leaders


def guidance_candidates(winner: Candidate, fixed: dict) -> list[Candidate]:
    """The guidance round for one setting: it at each (scale, window scale) of GUIDANCE_GRID,
    the keys the params set taking their values."""
    return restrict([dataclasses.replace(winner, guidance_scale=g, window_guidance_scale=w) for g, w in GUIDANCE_GRID], fixed)


def pilot_candidates(cfg: InjectionParams, known: list[str], conditional: bool = False) -> tuple[list[Candidate], list[str]]:
    """(the grid restricted to the keys the params set, the names of those skipped for a site this UNet
    lacks or a window that ends before `injection.t_edit`); a grid left empty is a one-line error. On a
    class-conditional UNet a guidance scale left `auto` is 1 in this grid (the guidance round varies it)."""
    grid = candidate_grid(cfg.pilot_grid)
    if conditional:
        grid = [dataclasses.replace(c, guidance_scale=1.0 if c.guidance_scale is None else c.guidance_scale) for c in grid]
    grid = restrict(grid, cfg.fixed())
    candidates = [c for c in grid if set(c.sites) <= set(known) and (c.t_max is None or c.t_max >= cfg.t_edit)]
    if not candidates:
        raise DiffinjectError(f"params 'injection.pilot_grid': no candidate injects only at sites of this UNet ({', '.join(known)}) "
                              f"within a window that ends at or after injection.t_edit ({cfg.t_edit})")
    return candidates, [c.name for c in grid if c not in candidates]


def choose_injection(root: Path, cfg: InjectionParams, candidates: list[Candidate], skipped: list[str], unet, scheduler,
                     contents, styles, manifest: pd.DataFrame, originals: torch.Tensor, seed: int, device: torch.device):
    """The pilot: (its winner as the injection params, the pilot's report — every candidate's scores;
    picture metrics/plots/inject/pilot.png —, the contents' features at every site it captured, for
    the pool to reuse). Reads no bias label: the models are the biased one (bias proxy) and
    `injection.pilot_reference`; `originals` are the contents' train images."""
    shape = tuple(styles.x_T.shape[1:])
    n_classes = num_classes_of(manifest)
    reference = resolve_reference(root, cfg.pilot_reference)
    # the others that exist are scored beside (comparison only: benchmarks/pilot_proxy.py)
    others = [name for name in REFERENCES if name != reference and (model_dir(root, name) / "model.json").is_file()]
    models = load_models(root, ("biased", reference, *others), n_classes, shape, device, "injection.auto", "injection.auto")
    sites = sorted({site for c in candidates for site in c.sites})
    features = content_features(unet, contents, sites, cfg.batch_size)
    # how far a miss of the biased model can be read as a conflict: its accuracy on the unbiased valid split
    predict_biased = predictor(models["biased"], device)
    valid = load_split(root / PREPARED, "valid", manifest)
    biased_valid_acc = float((predict_biased(valid.images) == valid.targets.numpy()).mean())
    trust = conflict_trust(biased_valid_acc, n_classes)
    others = {name: predictor(models[name], device) for name in others}

    def pilot(candidates: list[Candidate], desc: str):
        progress = tqdm(total=len(candidates), desc=desc, unit="candidate")
        result = run_pilot(unet, scheduler, cfg, contents, styles, features, candidates, cfg.pilot_size,
                           seed, cfg.batch_size, predict_biased, predictor(models[reference], device),
                           originals, on_candidate=lambda name: progress.update(1), other_references=others,
                           trust=trust, rungs=cfg.pilot_rungs)
        progress.close()
        return result

    result = pilot(candidates, "inject: pilot")
    winner, best = candidates[result.winner], result.rows[result.winner]
    guidance = None
    scales = []
    if guidance_left(cfg, is_class_conditional(unet)):
        for leader in rule_leaders(candidates, result.rows):
            scales += [c for c in guidance_candidates(leader, cfg.fixed()) if c not in scales]
    if len(scales) > 1:  # the guidance round, around each label rule's best setting
        guided = pilot(scales, "inject: pilot, guidance")
        guidance = {"winner": scales[guided.winner].name, "rungs": guided.rungs, "candidates": guided.rows}
        print(f"inject: the guidance round chose {scales[guided.winner].name} ("
              + ", ".join(f"{row['name'].rpartition(' label:')[2]}: {row['score']:.3f}" for row in guided.rows) + ")")
        winner, best = scales[guided.winner], guided.rows[guided.winner]
    save_labelled_rows([(f"{row['name']}\nscore {row['score']:.3f} (conflict {row['conflict']:.2f}, fidelity "
                         f"{row['fidelity']:.2f}, diversity {row['diversity']:.2f})", pool.images[:PILOT_SHOWN])
                        for row, pool in zip(result.rows, result.pools)], root / PLOTS / "inject" / "pilot.png")
    scores = ", ".join(f"{row['score']:.3f}" for row in result.rows)
    print(f"inject: pilot chose {winner.name} (score {best['score']:.3f} [{best['score_low']:.3f}, {best['score_high']:.3f}] "
          f"on {best['n_images']} images, {len(result.rungs)} rung(s): {' -> '.join(str(len(r)) for r in result.rungs)} "
          f"candidates; all: {scores}; conflict trust {trust:.2f}, biased valid acc {biased_valid_acc:.3f})")
    chosen = dataclasses.replace(cfg, **winner.as_params())
    report = {"reference": reference, "n_per_candidate": cfg.pilot_size, "winner": winner.name,
              "biased_valid_acc": round(biased_valid_acc, 4), "conflict_trust": round(trust, 4),
              "rungs": result.rungs,
              "candidates": result.rows, **({"skipped": skipped} if skipped else {}),
              **({"guidance": guidance} if guidance is not None else {})}
    return chosen, report, features


def pool_judge(root: Path, cfg: InjectionParams, manifest: pd.DataFrame, shape: tuple[int, ...], device: torch.device):
    """`injection.filter`: the judge of each generated image (diffusion/pool_filter.py), on the biased
    model and `injection.pilot_reference`, the pilot's two models; (judge, the reference's name)."""
    reference = resolve_reference(root, cfg.pilot_reference)
    nets = load_models(root, ("biased", reference), num_classes_of(manifest), shape, device, "injection.filter",
                       "injection.filter.enabled")
    return make_judge(cfg.filter, probabilities(nets[reference], device), predictor(nets["biased"], device)), reference


def load_models(root: Path, names, n_classes: int, shape: tuple[int, ...], device: torch.device, needed_by: str,
                switch: str, off: str = "false") -> dict:
    """name -> the trained classifier in models/<name>, in eval mode on `device`; a missing one is a
    one-line error naming what needs it and the param (`switch`) and value (`off`) that turn that off."""
    models = {}
    for name in names:
        models[name], _, _ = load_classifier(model_dir(root, name), num_classes=n_classes, image_shape=shape,
                                             missing_hint=f"{needed_by} needs models/{name}: run `dvc repro {name}` "
                                                          f"(or set {switch}: {off})")
        models[name] = models[name].to(device).eval()
    return models


def reader_guidance(root: Path, cfg: InjectionParams, manifest: pd.DataFrame, shape: tuple[int, ...],
                    device: torch.device) -> tuple[ReaderGuidance | None, dict[str, Any] | None]:
    """`injection.reader_guidance`'s guide — the reference model (`pilot_reference`) as the label
    reader — and what metrics/inject.json says of it; (None, None) when the scale is 0."""
    if cfg.reader_guidance == 0:
        return None, None
    reference = resolve_reference(root, cfg.pilot_reference)
    reader = load_models(root, (reference,), num_classes_of(manifest), shape, device, "injection.reader_guidance",
                         "injection.reader_guidance", off="0")[reference]
    for weight in reader.parameters():
        weight.requires_grad_(False)  # only the image gets a gradient
    return (ReaderGuidance(reader, cfg.reader_guidance, cfg.reader_t_max),
            {"scale": cfg.reader_guidance, "t_max": cfg.reader_t_max, "reader": reference})


def resolve_reference(root: Path, name: str) -> str:
    """`injection.pilot_reference`, or for `auto` the reference model with the best valid accuracy in
    metrics/<model>.json (labels only: the valid split's accuracy reads no bias label)."""
    if name != "auto":
        return name
    valid = {}
    for model in REFERENCES:
        path = root / METRICS / f"{model}.json"
        if path.is_file() and (model_dir(root, model) / "model.json").is_file():
            valid[model] = json.loads(path.read_text()).get("valid", {}).get("acc", float("-inf"))
    if not valid:
        raise DiffinjectError(f"params 'injection.pilot_reference': auto needs one of {', '.join(REFERENCES)} trained "
                              f"(models/<name> and metrics/<name>.json; run `dvc repro lff`)")
    return max(valid, key=valid.get)  # the first listed wins a tie


def check_fair_supported(unet) -> None:
    """The fair generator fine-tunes and generates unconditional rollouts: a class-conditional DDPM's
    guidance is not part of them yet, so the pair is refused rather than mixed."""
    if is_class_conditional(unet):
        raise DiffinjectError("params 'injection.generator': fair does not support a class-conditional DDPM yet "
                              "(set diffusion.class_conditional: false, or injection.generator: base)")


def use_fair_adapter(root: Path, cfg: InjectionParams, unet, contents):
    """`injection.generator: fair`: (the injection setting models/fair's adapter was fine-tuned for, the
    contents' features at its sites from the base UNet, as in fine-tuning), and the adapter attached to
    `unet`. The adapter learnt that setting's rollouts, so no pilot runs again."""
    tensors, meta = read_adapter(root / FAIR)
    try:
        cfg = dataclasses.replace(cfg, **meta["injection"], label_from=meta["label_from"], auto=False)
    except (KeyError, TypeError) as exc:
        raise DiffinjectError(f"{root / FAIR / 'adapter.json'}: lacks the injection setting ({exc}); re-run `python -m diffinject fair_finetune`") from exc
    features = content_features(unet, contents, cfg.sites(), cfg.batch_size)
    attach_adapter(unet, tensors, meta)
    return cfg, features
