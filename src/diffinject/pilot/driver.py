"""The pilot's driver: with `injection.auto`, the candidates left to it (the grid restricted to the keys
the params set, on this UNet's sites), the models it reads (the biased one as the bias proxy and the
reference), its first round and, on a class-conditional DDPM, its guidance round; it draws
metrics/plots/inject/pilot.png and returns the winner with the report metrics/inject.json keeps.
Reads no bias label."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from diffinject.data.tensors import load_split, num_classes_of
from diffinject.diffusion.conditioning import is_class_conditional
from diffinject.diffusion.injection_params import AUTO, GUIDANCE_KEYS, InjectionParams
from diffinject.diffusion.sampler import content_features
from diffinject.errors import DiffinjectError
from diffinject.imaging import save_labelled_rows
from diffinject.models.classifier import predictor
from diffinject.pilot.candidates import GUIDANCE_GRID, Candidate, candidate_grid, restrict
from diffinject.pilot.references import REFERENCES, load_models, resolve_reference
from diffinject.pilot.rounds import run_pilot
from diffinject.pilot.scoring import conflict_trust
from diffinject.stages.paths import PLOTS, PREPARED, model_dir

PILOT_SHOWN = 10  # pilot images per candidate in pilot.png


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
