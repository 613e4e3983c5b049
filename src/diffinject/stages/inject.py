"""Stage `inject`: generate the synthetic pool from cached inversions -> data/synthetic/ (PNG +
manifest.parquet), a content | style | result grid, and the quality report metrics/inject.json.

The keys of the setting (operator, site, t_max, h_gamma, label_from, and on a class-conditional DDPM
guidance_scale and window_guidance_scale) are each a value or `auto`; a set value is obeyed. With
`injection.auto` (the default), a pilot first chooses the keys left `auto` for this dataset, without a
bias label (the pilot/ package; the valid split's labels say how far the biased model's misses can be
trusted): every candidate's scores go to inject.json, a row of its images to
metrics/plots/inject/pilot.png. With `auto: false` a key left `auto` takes the hand-chosen value and
`label_from: auto` is decided from the probes (metrics/probe.json). inject.json's `chosen_by` says which
key came from where (stages/injection_setting.py).

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

import torch

from diffinject.config import StageParams, slice_of
from diffinject.data.manifest import MANIFEST_NAME, read_manifest
from diffinject.data.tensors import load_images, load_split
from diffinject.devices import barrier, inference_device, rank_and_world
from diffinject.diffusion.injection import class_quota, collect_manifest, generate_pool, pair_labels, pairs_for
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.pool_filter import filter_report
from diffinject.diffusion.inversion_store import CONTENT, STYLE, load_inverted
from diffinject.diffusion.lora import WEIGHTS
from diffinject.diffusion.model import DiffusionConfig, load_diffusion
from diffinject.diffusion.precision import autocast, resolve_precision
from diffinject.diffusion.sampler import InjectionSampler, content_features
from diffinject.errors import DiffinjectError
from diffinject.fsutil import atomic_dir, write_json
from diffinject.imaging import save_grid
from diffinject.models.checkpoint import WEIGHTS_NAME
from diffinject.models.trainer import TrainerConfig
from diffinject.stages.injection_setting import pool_judge, reader_guidance, settle_injection
from diffinject.stages.paths import DIFFUSION, FAIR, INVERSIONS, METRICS, PLOTS, PREPARED, SYNTHETIC, model_dir
from diffinject.stages.pool_quality import quality_report

GRID_ROWS = 16
PARAMS = StageParams({"trainer": TrainerConfig, "diffusion": slice_of(DiffusionConfig, "precision"),
                      "injection": InjectionParams})


def work_dir(root: Path, cfg: InjectionParams, seed: int, precision: str, label_from: str,
             reader: str | None = None) -> Path:
    """Partial results are only reused by a run with the same params, label rule, precision, seed,
    inversions, (generator fair) adapter and (reader guidance) reader."""
    digest = hashlib.sha256(json.dumps({"cfg": dataclasses.asdict(cfg), "seed": seed, "precision": precision, "label_from": label_from},
                                       sort_keys=True).encode())
    for path in (root / INVERSIONS / CONTENT, root / INVERSIONS / STYLE, *([root / FAIR / WEIGHTS] if cfg.generator == "fair" else []),
                 *([model_dir(root, reader) / WEIGHTS_NAME] if reader else [])):
        digest.update(path.read_bytes())
    return root / "data" / f".synthetic-partial-{digest.hexdigest()[:16]}"


def run(params: dict[str, Any], root: Path = Path("."), on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    p = PARAMS.load(params)
    cfg, trainer_cfg, seed = p.injection, p.trainer, p.seed
    device = inference_device(trainer_cfg.accelerator)
    contents = load_inverted(root / INVERSIONS / CONTENT)
    styles = load_inverted(root / INVERSIONS / STYLE)
    manifest = read_manifest(root / PREPARED)
    n = cfg.pool_size(int((manifest["split"] == "train").sum()))
    unet, scheduler = load_diffusion(root / DIFFUSION, image_shape=tuple(styles.x_T.shape[1:]))
    unet = unet.to(device).eval()
    precision = resolve_precision(p.diffusion.precision, device)
    train = load_split(root / PREPARED, "train", manifest)
    row_of = {int(i): k for k, i in enumerate(train.ids.tolist())}
    with autocast(precision, device):
        settled = settle_injection(root, cfg, unet, scheduler, contents, styles, manifest, train, seed, device)
    cfg, decision, pilot_report, pilot_features = settled.cfg, settled.decision, settled.pilot_report, settled.features
    label_from = decision["label_from"]
    judge = reference = None
    if cfg.filter.enabled:
        judge, reference = pool_judge(root, cfg, manifest, tuple(styles.x_T.shape[1:]), device)
    # with the filter, the tries: their first n pairs are the unfiltered pool's, whose class mix it keeps
    pairs = pairs_for(contents, styles, cfg.tries(len(train)), seed, label_from, cfg.pairing)
    quota = class_quota(pair_labels(pairs, contents, styles, label_from), n) if judge is not None else None
    reader, reader_report = reader_guidance(root, cfg, manifest, tuple(styles.x_T.shape[1:]), device)
    try:
        sampler = InjectionSampler(unet, scheduler, cfg, reader=reader)
    except ValueError as exc:
        raise DiffinjectError(f"params 'injection': {exc}") from exc
    work = work_dir(root, cfg, seed, precision, label_from, None if reader_report is None else reader_report["reader"])
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rank, world = rank_and_world()
    with sampler, autocast(precision, device):  # leaving the sampler removes its hook from the UNet
        # the pilot captured every candidate's sites already: the winner's are among them
        features = ({site: pilot_features[site] for site in cfg.sites()} if pilot_features is not None
                    else content_features(unet, contents, cfg.sites(), cfg.batch_size))
        generate_pool(sampler, contents, features, styles, pairs, label_from, cfg.batch_size, seed, work,
                      rank=rank, world_size=world, on_batch=on_batch, judge=judge, quota=quota)
    seconds = time.perf_counter() - start
    barrier()  # rank 0 collects every rank's batches: wait for the slowest
    if rank != 0:
        return {}
    n_batches = (len(pairs.content) + cfg.batch_size - 1) // cfg.batch_size
    pool, tries = collect_manifest(work, n_batches, cfg, label_from, quota)
    filtered = (filter_report(tries, quota, cfg.filter) | {"reference": reference}) if judge is not None else None
    if pool.empty:
        raise DiffinjectError(f"params 'injection.filter': none of {len(tries)} generated images passed (reference "
                              f"{reference} read the label of {filtered['reads_label_rate']:.0%} with confidence >= "
                              f"{cfg.filter.min_confidence}, the biased model missed {filtered['conflict_rate']:.0%}); "
                              "lower injection.filter.min_confidence or set injection.filter.enabled: false")
    if filtered is not None and "short_by" in filtered:
        print(f"inject: the filter kept {filtered['kept']} of the {n} pool images wanted after {len(tries)} tries "
              f"(injection.filter.max_tries {cfg.filter.max_tries}); the pool is {filtered['short_by']} short and "
              "train_debiased draws from it with replacement")
    with atomic_dir(root / SYNTHETIC) as tmp:
        for rel in pool["path"]:  # with the filter, kept images past the pool's size stay behind
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / rel, tmp / rel)
        pool.to_parquet(tmp / MANIFEST_NAME, index=False)
    shutil.rmtree(work)
    images = load_images(root / SYNTHETIC, list(pool["path"]))
    # content | style | result rows for the first pairs
    shown = pool.head(GRID_ROWS)
    triples = torch.stack([
        train.images[[row_of[int(i)] for i in shown["content_id"]]],
        train.images[[row_of[int(i)] for i in shown["style_id"]]],
        images[: len(shown)],
    ], 1).flatten(0, 1)
    save_grid(triples, root / PLOTS / "inject" / "content_style_injected.png", nrow=6)
    report = quality_report(root, manifest, pool, images, trainer_cfg)
    if pilot_report is not None:
        report["pilot"] = pilot_report
    if filtered is not None:
        report["filter"] = filtered
    if reader_report is not None:
        report["reader_guidance"] = reader_report
    report.update(label_rule=decision, operator=cfg.operator, site="+".join(cfg.sites()), schedule=cfg.schedule,
                  t_edit=cfg.t_edit, t_max=cfg.t_max, h_gamma=cfg.h_gamma, guidance_scale=cfg.guidance_scale,
                  window_guidance_scale=cfg.window_guidance_scale,
                  chosen_by=settled.chosen_by,
                  injected_steps=sum(step.inject for step in sampler.steps))
    report.update(seconds=round(seconds, 2), seconds_per_image=round(seconds / max(1, len(pool)), 4), precision=precision)
    write_json(root / METRICS / "inject.json", report)
    print(f"inject: {len(pool)} synthetic samples in {seconds:.1f} s -> {root / SYNTHETIC}; quality {report}")
    return report
