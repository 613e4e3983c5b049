"""Stage `fair_finetune`: the fair generator (seed: finetune-fair-diffusion, diffusion/fair.py) -> models/fair/
(adapter.safetensors, adapter.json), metrics/fair.json, metrics/plots/fair/.

With `injection.generator: fair` it chooses the injection setting as `inject` does (the same seeded pilot,
or the params with `injection.auto: false`), fine-tunes a LoRA adapter on that setting's rollouts from
the cached inversions (alignment to a balanced conflict distribution in the biased classifier's view,
adjusted gradients, preservation of the label), and then generates `fair.eval_size` pairs with the base
and the fair generator from the same noise for the before/after table: bias deviation from the target,
conflict fraction, label fidelity and faithful conflicts, read by the evaluation-only judges (the bias
judge, not the model the fine-tuning optimised against) and, beside, by the biased model. `inject`
then generates the pool with the adapter on the setting recorded in adapter.json.

With `injection.generator: base` (the default) it only records that no adapter is trained (a second),
so the default pipeline does not pay for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from diffinject.config import StageParams, slice_of
from diffinject.data.manifest import read_manifest
from diffinject.data.tensors import load_split, num_classes_of
from diffinject.devices import inference_device
from diffinject.diffusion.fair import FairConfig, gate_timestep
from diffinject.diffusion.fair_training import STATE, PairBatch, fine_tune, generate_both
from diffinject.diffusion.injection import pair_labels, pairs_for
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.inversion_store import CONTENT, STYLE, load_inverted
from diffinject.diffusion.lora import META, TARGETS, save_adapter
from diffinject.diffusion.model import DiffusionConfig, load_diffusion, to_uint8
from diffinject.diffusion.precision import autocast, resolve_precision
from diffinject.diffusion.sampler import InjectionSampler, content_features
from diffinject.diffusion.synthetic_quality import bias_deviation, to_grey
from diffinject.errors import DiffinjectError
from diffinject.fsutil import atomic_dir, atomic_file, write_json
from diffinject.imaging import save_labelled_rows
from diffinject.models import disent_net
from diffinject.models.checkpoint import load_classifier
from diffinject.models.classifier import predictor
from diffinject.models.trainer import TrainerConfig
from diffinject.pilot.references import resolve_reference
from diffinject.stages.injection_setting import check_fair_supported, settle_injection
from diffinject.stages.paths import DIFFUSION, FAIR, FAIR_RESUME, INVERSIONS, METRICS, PLOTS, PREPARED, model_dir
from diffinject.stages.pool_quality import aligned_bias

SHOWN = 12  # pairs in base_vs_fair.png
# The injection keys an adapter is fine-tuned for; `inject` generates with exactly these.
SETTING_KEYS = ("operator", "site", "schedule", "replace_steps", "t_edit", "t_max", "t_boost", "dt_lambda", "n_gen_step", "h_gamma")
PARAMS = StageParams({"trainer": TrainerConfig, "diffusion": slice_of(DiffusionConfig, "precision"),
                      "injection": InjectionParams, "fair": FairConfig})


def resume_file(root: Path, params: dict[str, Any], seed: int) -> Path:
    """A checkpoint is only resumed by a run with the same params, seed and inversions (which change
    with the DDPM, as in inject's partial batches)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode() + str(seed).encode())
    for path in (root / INVERSIONS / CONTENT, root / INVERSIONS / STYLE):
        if path.is_file():
            digest.update(path.read_bytes())
    return root / FAIR_RESUME / digest.hexdigest()[:16] / STATE


def labelled_pairs(contents, styles, n: int, seed: int, label_from: str, pairing: str):
    """(Pairs, labels): n pairs made as the pool's are (conflicting by the bias proxy), and their labels."""
    pairs = pairs_for(contents, styles, n, seed, label_from, pairing)
    return pairs, pair_labels(pairs, contents, styles, label_from)


def judge_view(root: Path, name: str, n_classes: int | None, shape, device: torch.device):
    """(predict(uint8 images) -> classes, or None when models/<name> is absent)."""
    if not (model_dir(root, name) / "model.json").is_file():
        return None
    net, _, meta = load_classifier(model_dir(root, name), num_classes=n_classes, image_shape=shape)
    predict = predictor(net.to(device).eval(), device)
    grey = name == "judge" and meta.get("view", "grey") == "grey"
    return (lambda images: predict(to_grey(images))) if grey else predict


def before_after(images: dict[str, torch.Tensor], targets: np.ndarray, n_classes: int, judges: dict[str, Any],
                 aligned: np.ndarray | None) -> dict[str, dict[str, float]]:
    """Per generator: the bias judge's deviation and conflicts, the label judge's fidelity, both at once,
    and the biased model's view (what was optimised)."""
    table = {}
    for name, pool in images.items():
        row: dict[str, float] = {}
        seen = judges["biased"](pool)
        row["biased_view_deviation"] = bias_deviation(targets, seen, n_classes)
        row["biased_view_conflict"] = float(np.mean(seen != targets))
        label_ok = judges["judge"](pool) == targets if judges["judge"] is not None else None
        if label_ok is not None:
            row["label_fidelity"] = float(label_ok.mean())
        if judges["bias_judge"] is not None and aligned is not None:
            bias = judges["bias_judge"](pool)
            row["bias_deviation"] = bias_deviation(targets, bias, max(n_classes, int(bias.max()) + 1))
            conflict = bias != aligned[targets]
            row["bias_conflict_fraction"] = float(conflict.mean())
            if label_ok is not None:
                row["faithful_conflict_fraction"] = float((conflict & label_ok).mean())
        table[name] = {k: round(v, 4) for k, v in row.items()}
    return table


def write_base_only(root: Path) -> dict[str, Any]:
    """`injection.generator: base`: every output of the stage (DVC wants them all), saying so."""
    note = "injection.generator is base: no adapter; `dvc exp run -S injection.generator=fair` trains one"
    with atomic_dir(root / FAIR) as tmp:
        (tmp / META).write_text(json.dumps({"trained": False, "generator": "base"}) + "\n")
    save_labelled_rows([("injection.generator: base, no fair adapter\n(dvc exp run -S injection.generator=fair)",
                         torch.zeros((1, 3, 28, 28), dtype=torch.uint8))], root / PLOTS / "fair" / "base_vs_fair.png")  # a blank tile
    write_curve(root / PLOTS / "fair" / "curve.csv", [])
    report = {"generator": "base", "trained": False, "note": note}
    write_json(root / METRICS / "fair.json", report)
    return report


def run(params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, fair_cfg, trainer_cfg, seed = p.injection, p.fair, p.trainer, p.seed
    if cfg.generator != "fair":
        return write_base_only(root)
    device = inference_device(trainer_cfg.accelerator)
    contents = load_inverted(root / INVERSIONS / CONTENT)
    styles = load_inverted(root / INVERSIONS / STYLE)
    manifest = read_manifest(root / PREPARED)
    n_classes, shape = num_classes_of(manifest), tuple(styles.x_T.shape[1:])
    unet, scheduler = load_diffusion(root / DIFFUSION, image_shape=shape)
    unet = unet.to(device).eval()
    check_fair_supported(unet)
    precision = resolve_precision(p.diffusion.precision, device)
    train = load_split(root / PREPARED, "train", manifest)
    with autocast(precision, device):
        # as inject settles it, but for the adapter it is about to train: the base generator's setting
        settled = settle_injection(root, dataclasses.replace(cfg, generator="base"), unet, scheduler, contents, styles,
                                   manifest, train, seed, device)
    cfg, label_from, pilot_report = dataclasses.replace(settled.cfg, generator="fair"), settled.cfg.label_from, settled.pilot_report
    features = ({s: settled.features[s] for s in cfg.sites()} if settled.features is not None
                else content_features(unet, contents, cfg.sites(), cfg.batch_size))
    hint = "injection.generator fair needs models/{}: run `dvc repro {}`"
    biased, _, _ = load_classifier(model_dir(root, "biased"), num_classes=n_classes, image_shape=shape,
                                   missing_hint=hint.format("biased", "train_biased"))
    reference = None
    if fair_cfg.preserve == "reference":
        name = resolve_reference(root, cfg.pilot_reference)
        reference, _, _ = load_classifier(model_dir(root, name), num_classes=n_classes, image_shape=shape,
                                          missing_hint=hint.format(name, name), architectures=(disent_net,))
        reference = reference.to(device)
    # enough pairs for every label's batches, drawn apart from the pool's (seed + 1)
    pairs, labels = labelled_pairs(contents, styles, max(4 * n_classes * fair_cfg.batch_size, len(contents.ids)), seed + 1,
                                   label_from, cfg.pairing)
    try:
        sampler = InjectionSampler(unet, scheduler, cfg)
    except ValueError as exc:
        raise DiffinjectError(f"params 'injection': {exc}") from exc
    if fair_cfg.grad_steps > len(sampler.steps):
        raise DiffinjectError(f"params 'fair.grad_steps': got {fair_cfg.grad_steps}, the generation has only {len(sampler.steps)} steps")
    amp = lambda: autocast(precision, device)  # noqa: E731
    checkpoint = resume_file(root, {"injection": dataclasses.asdict(cfg), "fair": dataclasses.asdict(fair_cfg),
                                    "precision": precision}, seed)
    start = time.perf_counter()
    progress = tqdm(total=fair_cfg.steps, desc="fair_finetune", unit="step")
    with sampler:
        run_ = fine_tune(unet, sampler, PairBatch(contents, styles, features, pairs), labels, biased.to(device), reference,
                         fair_cfg, seed, amp, checkpoint,
                         on_step=lambda step, row: (progress.update(1), progress.set_postfix(loss=f"{row['loss']:.3f}")))
        progress.close()
        seconds = time.perf_counter() - start
        # the before/after table on pairs made as the pool's first ones
        eval_pairs, targets = labelled_pairs(contents, styles, fair_cfg.eval_size, seed, label_from, cfg.pairing)
        base, fair = generate_both(sampler, run_.layers, PairBatch(contents, styles, features, eval_pairs), cfg.batch_size, seed,
                                   fair_cfg.grad_steps, amp)
    images = {"base": to_uint8(base), "fair": to_uint8(fair)}
    judges = {"biased": predictor(biased.eval(), device), "judge": judge_view(root, "judge", n_classes, shape, device),
              "bias_judge": judge_view(root, "bias_judge", None, shape, device)}
    aligned = aligned_bias(manifest) if "aligned" in manifest and manifest["aligned"].notna().any() else None
    table = before_after(images, targets, n_classes, judges, aligned)
    setting = {key: getattr(cfg, key) for key in SETTING_KEYS}
    setting["site"] = list(cfg.sites())
    meta = {"trained": True, "generator": "fair", "rank": fair_cfg.rank, "alpha": fair_cfg.alpha, "targets": list(TARGETS),
            "injection": setting, "label_from": label_from, "steps": fair_cfg.steps, "seed": seed,
            "max_timestep": gate_timestep(sampler, fair_cfg.grad_steps)}
    with atomic_dir(root / FAIR) as tmp:
        save_adapter(run_.layers, tmp, meta)
    save_labelled_rows([("base", images["base"][:SHOWN]), ("fair", images["fair"][:SHOWN])], root / PLOTS / "fair" / "base_vs_fair.png")
    write_curve(root / PLOTS / "fair" / "curve.csv", run_.curve)
    report = {"generator": "fair", "trained": True, "setting": setting, "label_from": label_from,
              "n_eval": int(len(targets)), "before_after": table, "seconds": round(seconds, 1),
              "seconds_per_step": round(seconds / max(1, fair_cfg.steps - run_.resumed_from), 3),
              "resumed_from": run_.resumed_from, "precision": precision,
              "not_measured": [] if judges["bias_judge"] is not None else ["bias judge: no models/bias_judge (run train_judge)"]}
    if pilot_report is not None:
        report["pilot_winner"] = pilot_report["winner"]
    write_json(root / METRICS / "fair.json", report)
    if checkpoint.parent.is_dir():
        shutil.rmtree(checkpoint.parent)
    print(f"fair_finetune: {fair_cfg.steps} steps in {seconds:.1f} s -> {root / FAIR}; before/after {table}")
    return report


def write_curve(path: Path, curve: list[dict[str, float]]) -> None:
    with atomic_file(path) as tmp:
        pd.DataFrame(curve, columns=list(curve[0]) if curve else ["step", "alignment", "preservation"]).to_csv(tmp, index=False)
