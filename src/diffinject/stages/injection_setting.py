"""How `inject` and `fair_finetune` choose the injection setting of a run (`settle_injection`): the keys
the params set are obeyed; with `injection.auto` the pilot (pilot/driver.py) chooses the keys left
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

from diffinject.data.tensors import ImageTensors, num_classes_of
from diffinject.diffusion.conditioning import is_class_conditional
from diffinject.diffusion.injection_params import AUTO, GUIDANCE_KEYS, PILOT_KEYS, InjectionParams
from diffinject.diffusion.lora import attach_adapter, read_adapter
from diffinject.diffusion.model import thread_invariant_pointwise_convs
from diffinject.diffusion.operators import OPERATORS
from diffinject.diffusion.pool_filter import make_judge, probabilities
from diffinject.diffusion.probes import decide_label_from
from diffinject.diffusion.reader_guidance import ReaderGuidance
from diffinject.diffusion.sampler import content_features
from diffinject.diffusion.sites import site_names
from diffinject.errors import DiffinjectError, first_line
from diffinject.models.classifier import predictor
from diffinject.pilot.driver import choose_injection, guidance_left, pilot_candidates
from diffinject.pilot.references import load_models, resolve_reference
from diffinject.stages.paths import FAIR, PROBE

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
    cfg.check_against_model(known, int(scheduler.config.num_train_timesteps), conditional, tuple(OPERATORS))
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


def pool_judge(root: Path, cfg: InjectionParams, manifest: pd.DataFrame, shape: tuple[int, ...], device: torch.device):
    """`injection.filter`: the judge of each generated image (diffusion/pool_filter.py), on the biased
    model and `injection.pilot_reference`, the pilot's two models; (judge, the reference's name)."""
    reference = resolve_reference(root, cfg.pilot_reference)
    nets = load_models(root, ("biased", reference), num_classes_of(manifest), shape, device, "injection.filter",
                       "injection.filter.enabled")
    return make_judge(cfg.filter, probabilities(nets[reference], device), predictor(nets["biased"], device)), reference


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
    thread_invariant_pointwise_convs(unet)  # the adapter's own 1x1 convolutions too (diffusion/model.py)
    return cfg, features
