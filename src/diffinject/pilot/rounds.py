"""A round of the pilot: each candidate generates its pilot images from the same pairs and noise and is
scored (scoring.py); successive halving gives the candidates still tied with the best more images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from diffinject.diffusion.injection import batch_generator, pair_labels, pairs_for
from diffinject.diffusion.inversion_store import InvertedSet
from diffinject.diffusion.model import to_uint8
from diffinject.diffusion.sampler import InjectionSampler
from diffinject.diffusion.sites import Features
from diffinject.pilot.candidates import Candidate
from diffinject.pilot.scoring import bootstrap_interval, image_terms, nearest_distance, still_in_the_race

# Added to the pipeline seed: the pilot's pairs and noise are not the pool's first batch replayed.
SEED_OFFSET = 104_729
RUNG_OFFSET = 15_485_863  # times the rung: each rung of successive halving draws new pairs and noise


@dataclass
class PilotPool:
    images: torch.Tensor  # (n, C, H, W) uint8
    targets: np.ndarray  # (n,) the synthetic labels


def generate_pilot(unet, scheduler, candidate: Candidate, base_config, contents: InvertedSet, styles: InvertedSet,
                   features: Features, n: int, seed: int, batch_size: int) -> PilotPool:
    """n pilot images of one candidate; the pairs and noise depend only on the seed and the label rule,
    so candidates of one rule are compared on the same pairs."""
    pairs = pairs_for(contents, styles, n, seed + SEED_OFFSET, candidate.label_from, base_config.pairing)
    config = replace(base_config, **candidate.as_params())  # the window starts at the params' t_edit
    device = next(unet.parameters()).device
    labels = pair_labels(pairs, contents, styles, candidate.label_from)
    chunks = []
    with InjectionSampler(unet, scheduler, config) as sampler:
        for b, start in enumerate(range(0, n, batch_size)):
            c, s = pairs.content[start:start + batch_size], pairs.style[start:start + batch_size]
            site_features = {site: tuple(f[:, c].to(device) for f in features[site]) for site in candidate.sites}
            x = sampler.generate(styles.x_T[s].to(device), site_features, contents.timesteps,
                                 batch_generator(seed + SEED_OFFSET, b, device), labels=labels[start:start + batch_size])
            chunks.append(to_uint8(x).cpu())
    return PilotPool(torch.cat(chunks), labels)


@dataclass
class PilotResult:
    rows: list[dict]  # per candidate: name, its injection keys, the scores over all its images and their interval
    winner: int  # index into rows
    pools: list[PilotPool]  # each candidate's first rung
    rungs: list[list[str]]  # the candidates each rung generated for


def run_pilot(unet, scheduler, base_config, contents: InvertedSet, styles: InvertedSet, features: Features,
              candidates: Sequence[Candidate], n: int, seed: int, batch_size: int,
              predict_biased: Callable[[torch.Tensor], np.ndarray],
              predict_reference: Callable[[torch.Tensor], np.ndarray],
              originals: torch.Tensor, on_candidate: Callable[[str], None] | None = None,
              other_references: dict[str, Callable[[torch.Tensor], np.ndarray]] | None = None,
              trust: float = 1.0, rungs: int = 0) -> PilotResult:
    """Generate and score every candidate; `originals` are the mined images as uint8 (the contents).
    `other_references` (name -> predictor) are scored beside, as `score_<name>`, for comparison only;
    `trust` weighs the conflict term (`conflict_trust`).

    Successive halving: after each rung, a candidate the paired bootstrap tells apart from the best
    (`still_in_the_race`) is out; while more than one is left and `rungs` remain, the survivors generate
    as many new images again (new pairs and noise), so a near-tie is decided by more images, not by
    noise. The winner has the best mean over all its images; a tie goes to the earlier candidate. Each
    row's `score_low` / `score_high` is its own 95 % bootstrap interval, for the report."""
    reference_distance = float(np.median(nearest_distance(originals, originals, exclude_self=True)))
    terms: list[dict[str, list[np.ndarray]]] = [{} for _ in candidates]
    pools: list[PilotPool] = []
    alive, history = list(range(len(candidates))), []
    for rung in range(rungs + 1):
        history.append([candidates[k].name for k in alive])
        for k in alive:
            size = n if rung == 0 else sum(len(v) for v in terms[k]["score"])
            pool = generate_pilot(unet, scheduler, candidates[k], base_config, contents, styles, features, size,
                                  seed + rung * RUNG_OFFSET, batch_size)
            biased, distance = predict_biased(pool.images), nearest_distance(pool.images, originals)
            found = image_terms(pool.targets, biased, predict_reference(pool.images), distance, reference_distance, trust)
            for name, predict in (other_references or {}).items():
                other = image_terms(pool.targets, biased, predict(pool.images), distance, reference_distance, trust)
                found[f"score_{name}"], found[f"fidelity_{name}"] = other["score"], other["fidelity"]
            for key, values in found.items():
                terms[k].setdefault(key, []).append(values)
            if rung == 0:
                pools.append(pool)
                if on_candidate is not None:
                    on_candidate(candidates[k].name)
        alive = [alive[i] for i in still_in_the_race([np.concatenate(terms[k]["score"]) for k in alive], seed + rung)]
        if len(alive) == 1:
            break
    rows = []
    for k, candidate in enumerate(candidates):
        scores = np.concatenate(terms[k]["score"])
        low, high = bootstrap_interval(scores, seed)
        row = {"name": candidate.name, **candidate.as_params(),
               **{key: round(float(np.mean(np.concatenate(v))), 4) for key, v in terms[k].items()},
               "score_low": round(low, 4), "score_high": round(high, 4), "n_images": int(len(scores)),
               "rungs": sum(candidate.name in names for names in history)}
        rows.append(row)
    finalists = alive  # in grid order: argmax keeps the first of equal means
    winner = finalists[int(np.argmax([float(np.mean(np.concatenate(terms[k]["score"]))) for k in finalists]))]
    return PilotResult(rows, winner, pools, history)
