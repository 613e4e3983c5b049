"""Stage `inject`: generate the synthetic pool from cached inversions -> data/synthetic/ (PNG +
manifest.parquet), a content | style | result grid, and the quality report metrics/inject.json.

With `injection.auto` (the default), a pilot first chooses the setting (operator, sites, window, gamma,
label rule) for this dataset, without a bias label (diffusion/pilot.py; the valid split's labels say how far
the biased model's misses can be trusted): every candidate's scores go to inject.json, a row of its images
to metrics/plots/inject/pilot.png. With `auto: false` the params'
setting is used and `label_from: auto` is decided from the probes (metrics/probe.json).

The content's features at the injected sites are recomputed once from its inversion path (x_t at
every step), so any operator, site or schedule reuses the same inversions.

Resumable: batches land in data/.synthetic-partial-<key>/ (outside the DVC output, so DVC does not
delete them) with one marker file each; a re-run with the same params skips finished batches, and the
noise of every batch comes from its own seeded generator, so the files equal an uninterrupted run's.
The pilot is seeded too: a resumed run repeats it (about a minute) and reaches the same choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from diffinject.config import StageParams, load_params, slice_of
from diffinject.data.manifest import INFO_NAME, MANIFEST_NAME, read_manifest
from diffinject.data.tensors import ImageTensors, load_images, load_split, num_classes_of
from diffinject.devices import barrier, inference_device, rank_and_world
from diffinject.diffusion.injection import collect_manifest, generate_pool, make_pairs
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.inversion_store import CONTENT, STYLE, load_inverted
from diffinject.diffusion.lora import WEIGHTS, attach_adapter, read_adapter
from diffinject.diffusion.model import DiffusionConfig, load_diffusion
from diffinject.diffusion.pilot import conflict_trust, run_pilot
from diffinject.diffusion.pilot_grid import candidate_grid
from diffinject.diffusion.precision import autocast, resolve_precision
from diffinject.diffusion.probes import decide_label_from
from diffinject.diffusion.sampler import InjectionSampler, capture_features
from diffinject.diffusion.sites import site_names
from diffinject.errors import DiffinjectError, first_line
from diffinject.fsutil import atomic_dir, write_json
from diffinject.imaging import save_grid, save_labelled_rows
from diffinject.models.checkpoint import load_classifier
from diffinject.models.classifier import to_unit_float
from diffinject.models.training import TrainerConfig, predict_logits
from diffinject.stages.paths import METRICS, MODELS, PREPARED, model_dir
from diffinject.diffusion.synthetic_quality import pool_report, to_grey

INVERSIONS = Path("data/inversions")
FAIR = MODELS / "fair"  # stage fair_finetune's adapter
PROBE = METRICS / "probe.json"
OUT = Path("data/synthetic")
PLOTS = METRICS / "plots" / "inject"
GRID_ROWS = 16
PILOT_SHOWN = 10  # pilot images per candidate in pilot.png
# Models the pilot may read a label fidelity from (never the biased one: it is the bias proxy).
REFERENCES = ("lff", "disent", "lc", "vanilla")
# Sources whose bias is the LfF colour we applied, so the measured colour is the bias attribute.
COLOUR_BIASED_SOURCES = ("mnist5k", "idx")
PARAMS = StageParams({"trainer": TrainerConfig, "diffusion": slice_of(DiffusionConfig, "precision"),
                      "injection": InjectionParams})


def work_dir(root: Path, cfg: InjectionParams, seed: int, precision: str, label_from: str) -> Path:
    """Partial results are only reused by a run with the same params, label rule, precision, seed,
    inversions and (generator fair) adapter."""
    digest = hashlib.sha256(json.dumps({"cfg": vars(cfg), "seed": seed, "precision": precision, "label_from": label_from},
                                       sort_keys=True).encode())
    for path in (root / INVERSIONS / CONTENT, root / INVERSIONS / STYLE, *([root / FAIR / WEIGHTS] if cfg.generator == "fair" else [])):
        digest.update(path.read_bytes())
    return root / "data" / f".synthetic-partial-{digest.hexdigest()[:16]}"


def quality_report(root: Path, manifest: pd.DataFrame, pool: pd.DataFrame, images: torch.Tensor,
                   trainer_cfg: TrainerConfig) -> dict[str, Any]:
    """metrics/inject.json's quality part, from the evaluation-only judges and the vanilla model where
    they exist (a missing one is noted). `manifest` is data/prepared's (already read by the stage)."""
    prepared = root / PREPARED
    info = json.loads((prepared / INFO_NAME).read_text()) if (prepared / INFO_NAME).is_file() else {}
    n_classes, shape = num_classes_of(manifest), tuple(images.shape[1:])
    targets = torch.tensor(pool["target"].to_numpy())  # a copy: the manifest's arrays are read-only views
    judged = bias = vanilla = reference = None
    notes = []
    if (model_dir(root, "judge") / "model.json").is_file():
        judge, _, meta = load_classifier(model_dir(root, "judge"), num_classes=n_classes, image_shape=shape)
        view = to_grey(images) if meta.get("view", "grey") == "grey" else images  # what the judge was trained on
        judged = predict_logits(judge, ImageTensors(view, targets, torch.tensor(pool["id"].to_numpy()), "synthetic"),
                                1024, trainer_cfg).argmax(1).numpy()
    else:
        notes.append("label_fidelity: no models/judge (run train_judge)")
    if (model_dir(root, "bias_judge") / "model.json").is_file():
        bias_judge, _, _ = load_classifier(model_dir(root, "bias_judge"), image_shape=shape)
        bias = predict_logits(bias_judge, ImageTensors(images, targets, torch.tensor(pool["id"].to_numpy()), "synthetic"),
                              1024, trainer_cfg).argmax(1).numpy()
    else:
        notes.append("bias_conflict_fraction: no models/bias_judge (run train_judge; folder sources need bias labels)")
    if (model_dir(root, "vanilla") / "model.json").is_file():
        vanilla, _, _ = load_classifier(model_dir(root, "vanilla"), num_classes=n_classes, image_shape=shape)
        reference = load_split(prepared, "test", manifest).images
    else:
        notes.append("frechet_distance: no models/vanilla (run vanilla)")
    colour_biased = info.get("source") in COLOUR_BIASED_SOURCES and info.get("bias", "colour") == "colour"
    report = pool_report(images, pool, n_classes, colour_biased, judged, vanilla, reference,
                         bias, None if bias is None else aligned_bias(manifest))
    if notes:
        report["not_measured"] = notes
    return report


def aligned_bias(manifest: pd.DataFrame) -> np.ndarray:
    """(n_classes,) the bias value each class's aligned train samples carry (evaluation only)."""
    train = manifest[(manifest["split"] == "train") & manifest["aligned"].fillna(False).astype(bool)]
    by_class = train.groupby("target")["bias"].agg(lambda b: int(b.mode().iloc[0]))
    return np.array([by_class.get(c, -1) for c in range(num_classes_of(manifest))])


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


def choose_injection(root: Path, cfg: InjectionParams, unet, scheduler, contents, styles, manifest: pd.DataFrame,
                     originals: torch.Tensor, seed: int, device: torch.device):
    """`injection.auto`: (the pilot's winner as the injection params, the pilot's report — every
    candidate's scores; picture metrics/plots/inject/pilot.png —, the contents' features at every site
    it captured, for the pool to reuse). Reads no bias label: the models are the biased one (bias proxy)
    and `injection.pilot_reference`; `originals` are the contents' train images."""
    shape = tuple(styles.x_T.shape[1:])
    n_classes = num_classes_of(manifest)
    reference = resolve_reference(root, cfg.pilot_reference)
    models = {}
    # the others that exist are scored beside (comparison only: benchmarks/pilot_proxy.py)
    others = [name for name in REFERENCES if name != reference and (model_dir(root, name) / "model.json").is_file()]
    for name in ("biased", reference, *others):
        models[name], _, _ = load_classifier(model_dir(root, name), num_classes=n_classes, image_shape=shape,
                                             missing_hint=f"injection.auto needs models/{name}: run `dvc repro {name}` "
                                                          "(or set injection.auto: false)")
        models[name] = models[name].to(device).eval()
    known = site_names(unet)  # a smaller UNet has fewer skip sites: its candidates that need more are skipped
    grid = candidate_grid(cfg.pilot_grid)
    candidates = [c for c in grid if set(c.sites) <= set(known)]
    skipped = [c.name for c in grid if c not in candidates]
    if not candidates:
        raise DiffinjectError(f"params 'injection.pilot_grid': no candidate injects only at sites of this UNet ({', '.join(known)})")
    sites = sorted({site for c in candidates for site in c.sites})
    features = content_features(unet, contents, sites, cfg.batch_size)
    # how far a miss of the biased model can be read as a conflict: its accuracy on the unbiased valid split
    predict_biased = predictor(models["biased"], device)
    valid = load_split(root / PREPARED, "valid", manifest)
    biased_valid_acc = float((predict_biased(valid.images) == valid.targets.numpy()).mean())
    trust = conflict_trust(biased_valid_acc, n_classes)
    progress = tqdm(total=len(candidates), desc="inject: pilot", unit="candidate")
    result = run_pilot(unet, scheduler, cfg.sampler_config(), contents, styles, features, candidates, cfg.pilot_size,
                       seed, cfg.batch_size, predict_biased, predictor(models[reference], device),
                       originals, on_candidate=lambda name: progress.update(1),
                       other_references={name: predictor(models[name], device) for name in others}, trust=trust)
    progress.close()
    winner = candidates[result.winner]
    save_labelled_rows([(f"{row['name']}\nscore {row['score']:.3f} (conflict {row['conflict']:.2f}, fidelity "
                         f"{row['fidelity']:.2f}, diversity {row['diversity']:.2f})", pool.images[:PILOT_SHOWN])
                        for row, pool in zip(result.rows, result.pools)], root / PLOTS / "pilot.png")
    scores = ", ".join(f"{row['score']:.3f}" for row in result.rows)
    print(f"inject: pilot chose {winner.name} (score {result.rows[result.winner]['score']:.3f}; all: {scores}; "
          f"conflict trust {trust:.2f}, biased valid acc {biased_valid_acc:.3f})")
    chosen = dataclasses.replace(cfg, **winner.as_params())
    report = {"reference": reference, "n_per_candidate": cfg.pilot_size, "winner": winner.name,
              "biased_valid_acc": round(biased_valid_acc, 4), "conflict_trust": round(trust, 4),
              "candidates": result.rows, **({"skipped": skipped} if skipped else {})}
    return chosen, report, features


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


def predictor(net: torch.nn.Module, device: torch.device, batch_size: int = 1024):
    """uint8 images -> the network's predicted classes (numpy), in eval mode and without gradients."""
    @torch.no_grad()
    def predict(images: torch.Tensor) -> np.ndarray:
        return torch.cat([net(to_unit_float(images[i:i + batch_size].to(device))).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)]).numpy()
    return predict


def content_features(unet, contents, sites, batch_size: int):
    """site -> tensors (n_steps, |contents|, ...) recomputed from the contents' inversion paths."""
    if contents.xs is None:
        if contents.hs is not None and tuple(sites) == ("h",):
            return {"h": (contents.hs,)}  # an older cache: h only
        raise DiffinjectError("data/inversions/content.safetensors has no inversion path (xs); re-run `python -m diffinject invert`")
    return capture_features(unet, contents.xs, contents.timesteps, sites, batch_size)


def run(params: dict[str, Any], root: Path = Path("."), on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, trainer_cfg, seed = p.injection, p.trainer, p.seed
    device = inference_device(trainer_cfg.accelerator)
    contents = load_inverted(root / INVERSIONS / CONTENT)
    styles = load_inverted(root / INVERSIONS / STYLE)
    manifest = read_manifest(root / PREPARED)
    n = cfg.pool_size(int((manifest["split"] == "train").sum()))
    unet, scheduler = load_diffusion(root / MODELS / "diffusion", image_shape=tuple(styles.x_T.shape[1:]))
    unet = unet.to(device).eval()
    precision = resolve_precision(p.diffusion.precision, device)
    train = load_split(root / PREPARED, "train", manifest)
    row_of = {int(i): k for k, i in enumerate(train.ids.tolist())}
    pilot_report = pilot_features = None
    known = site_names(unet)
    if not cfg.auto and not set(cfg.sites()) <= set(known):  # a typo in the param, not a stale probe
        wrong = next(site for site in cfg.sites() if site not in known)
        raise DiffinjectError(f"params 'injection.site': {wrong!r} is not a site of this UNet (expected some of {', '.join(known)})")
    if cfg.generator == "fair":
        with autocast(precision, device):
            cfg, pilot_features = use_fair_adapter(root, cfg, unet, contents)
        decision = {"label_from": cfg.label_from, "decided_by": "fair adapter (models/fair/adapter.json)"}
    elif cfg.auto:
        originals = train.images[[row_of[int(i)] for i in contents.ids]]
        with autocast(precision, device):
            cfg, pilot_report, pilot_features = choose_injection(root, cfg, unet, scheduler, contents, styles, manifest,
                                                                 originals, seed, device)
        decision = {"label_from": cfg.label_from, "decided_by": "pilot"}
    else:
        decision = resolve_label_from(root, cfg)
    label_from = decision["label_from"]
    pairs = make_pairs(contents.targets.numpy(), styles.targets.numpy(), n, seed, label_from,
                       None if contents.proxy is None else contents.proxy.numpy(),
                       None if styles.proxy is None else styles.proxy.numpy())
    try:
        sampler = InjectionSampler(unet, scheduler, cfg.sampler_config())
    except ValueError as exc:
        raise DiffinjectError(f"params 'injection': {exc}") from exc
    work = work_dir(root, cfg, seed, precision, label_from)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rank, world = rank_and_world()
    with sampler, autocast(precision, device):  # leaving the sampler removes its hook from the UNet
        # the pilot captured every candidate's sites already: the winner's are among them
        features = ({site: pilot_features[site] for site in cfg.sites()} if pilot_features is not None
                    else content_features(unet, contents, cfg.sites(), cfg.batch_size))
        generate_pool(sampler, contents, features, styles, pairs, label_from, cfg.batch_size, seed, work,
                      rank=rank, world_size=world, on_batch=on_batch)
    seconds = time.perf_counter() - start
    barrier()  # rank 0 collects every rank's batches: wait for the slowest
    if rank != 0:
        return {}
    n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
    pool = collect_manifest(work, n_batches, cfg.sampler_config(), label_from)
    with atomic_dir(root / OUT) as tmp:
        shutil.copytree(work / "images", tmp / "images")
        pool.to_parquet(tmp / MANIFEST_NAME, index=False)
    shutil.rmtree(work)
    images = load_images(root / OUT, list(pool["path"]))
    # content | style | result rows for the first pairs
    shown = pool.head(GRID_ROWS)
    triples = torch.stack([
        train.images[[row_of[int(i)] for i in shown["content_id"]]],
        train.images[[row_of[int(i)] for i in shown["style_id"]]],
        images[: len(shown)],
    ], 1).flatten(0, 1)
    save_grid(triples, root / PLOTS / "content_style_injected.png", nrow=6)
    report = quality_report(root, manifest, pool, images, trainer_cfg)
    if pilot_report is not None:
        report["pilot"] = pilot_report
    report.update(label_rule=decision, operator=cfg.operator, site="+".join(cfg.sites()), schedule=cfg.schedule,
                  injected_steps=sum(step.inject for step in sampler.steps))
    report.update(seconds=round(seconds, 2), seconds_per_image=round(seconds / max(1, n), 4), precision=precision)
    write_json(root / METRICS / "inject.json", report)
    print(f"inject: {n} synthetic samples in {seconds:.1f} s -> {root / OUT}; quality {report}")
    return report


def main(params_path: str = "params.yaml") -> None:
    run(load_params(params_path))
