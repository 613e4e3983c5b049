"""The fair generator's fine-tuning loop (the maths is in diffusion/fair.py): LoRA on the UNet, trained
on injection rollouts from the cached inversions with the alignment loss against the biased classifier's
view and a preservation loss against the un-tuned rollout of the same pair and noise.

Resumable: every `fair.checkpoint_every` steps the adapter, the optimiser and the curve go to one file;
each step draws its label, pairs and assignment from a generator seeded by (seed, step), so a resumed
run computes what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffinject.diffusion.fair import (
    FairConfig,
    adjusted_scales,
    alignment_loss,
    alignment_targets,
    as_classifier_input,
    gate_timestep,
    preservation_loss,
    rollout_head,
    rollout_tail,
)
from diffinject.diffusion.injection import Pairs
from diffinject.diffusion.inversion_store import InvertedSet
from diffinject.diffusion.lora import LoRAConv2d, TimestepGate, adapter_tensors, add_lora, load_adapter_tensors, set_enabled
from diffinject.diffusion.sampler import InjectionSampler
from diffinject.diffusion.sites import Features
from diffinject.fsutil import atomic_file

STATE = "state.pt"


@dataclass
class PairBatch:
    """Rows of a Pairs table and what generating them needs."""

    contents: InvertedSet
    styles: InvertedSet
    features: Features  # site -> tensors (n_steps, |contents|, ...)
    pairs: Pairs

    def inputs(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, Features]:
        c, s = self.pairs.content[rows], self.pairs.style[rows]
        return (self.styles.x_T[s].to(device),
                {site: tuple(f[:, c].to(device) for f in tensors) for site, tensors in self.features.items()})


@dataclass
class FairRun:
    layers: dict[str, LoRAConv2d]
    curve: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def other_values(logits: torch.Tensor, label: int) -> torch.Tensor:
    """The biased classifier's logits with the label's own column masked out. For an image labelled y,
    its y-logit mixes the shape's evidence with the bias's, the others carry the bias alone: reading the
    attribute among them, the alignment moves the bias between conflicting values and never asks the
    image to stop showing y (unmasked, label fidelity fell: docs/fair_generator.md)."""
    masked = logits.clone()
    masked[:, label] = torch.finfo(logits.dtype).min / 2
    return masked


def fine_tune(unet: nn.Module, sampler: InjectionSampler, data: PairBatch, targets: np.ndarray, biased: nn.Module,
              reference: nn.Module | None, cfg: FairConfig, seed: int, autocast: Callable[[], contextlib.AbstractContextManager],
              checkpoint: Path | None = None, on_step: Callable[[int, dict[str, float]], None] | None = None) -> FairRun:
    """Fine-tune LoRA layers added to `unet` (the sampler's) for `cfg.steps` steps. `targets` (n,) are
    the labels of `data.pairs`; `biased` reads the bias attribute, `reference` (fair.preserve:
    reference) the label. Inside `with sampler:`."""
    device = next(unet.parameters()).device
    for net in (biased, reference):
        if net is not None:
            net.requires_grad_(False).eval()
    run = FairRun(add_lora(unet, cfg.rank, cfg.alpha, seed=seed))
    TimestepGate(unet, run.layers, gate_timestep(sampler, cfg.grad_steps))  # its hook lives on the UNet
    weights = [getattr(layer, part).weight for layer in run.layers.values() for part in ("down", "up")]
    optimiser = torch.optim.AdamW(weights, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        load_adapter_tensors(run.layers, state["adapter"])
        optimiser.load_state_dict(state["optimiser"])
        run.curve, run.resumed_from = state["curve"], state["step"]
    scales = adjusted_scales(sampler, cfg.grad_steps)
    labels = np.unique(targets)
    by_label = {int(y): np.flatnonzero(targets == y) for y in labels}
    for step in range(run.resumed_from, cfg.steps):
        rng = np.random.default_rng([seed, step])
        # one label per step, every label once per round in a seeded order (the seed: one prompt per step)
        label = int(np.random.default_rng([seed, step // len(labels)]).permutation(labels)[step % len(labels)])
        rows = rng.choice(by_label[label], cfg.batch_size, replace=len(by_label[label]) < cfg.batch_size)
        x_T, content = data.inputs(rows, device)
        generator = step_generator(seed, step, device)
        with autocast():
            x = rollout_head(sampler, x_T, content, data.contents.timesteps, cfg.grad_steps, generator)
            state = generator.get_state()
            base = None
            if cfg.preserve != "none":
                set_enabled(run.layers, False)
                base = rollout_tail(sampler, x, content, data.contents.timesteps, None, cfg.grad_steps, generator)
                set_enabled(run.layers, True)
                generator.set_state(state)  # the fair tail draws the noise the base tail drew
            fair = rollout_tail(sampler, x, content, data.contents.timesteps, scales, cfg.grad_steps, generator)
            seen = biased(as_classifier_input(fair)).float()
            logits = other_values(seen, label)
        probs = F.softmax(logits.detach(), 1).cpu().numpy().astype(np.float64)
        assigned = alignment_targets(probs, label, rng, cfg.assignment_draws, cfg.uncertainty_threshold)
        align = alignment_loss(logits, torch.as_tensor(assigned, device=device))
        preserve = preservation_loss(cfg.preserve, fair, base, reference) if base is not None else align * 0.0
        loss = align + cfg.preserve_weight * preserve
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        row = {"step": step + 1, "label": label, "loss": loss.item(), "alignment": align.item(),
               "preservation": preserve.item(), "assigned": float((assigned >= 0).mean()),
               "conflict_biased_view": float((seen.detach().argmax(1) != label).float().mean())}
        run.curve.append(row)
        if on_step is not None:
            on_step(step, row)
        if checkpoint is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            with atomic_file(checkpoint) as tmp:
                torch.save({"step": step + 1, "adapter": adapter_tensors(run.layers), "optimiser": optimiser.state_dict(),
                            "curve": run.curve}, tmp)
    return run


@torch.no_grad()
def generate_both(sampler: InjectionSampler, layers: dict[str, LoRAConv2d], data: PairBatch, batch_size: int, seed: int,
                  tail: int, autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, fair) images in [-1, 1] of every pair of `data`: one shared head, then the last `tail`
    steps without and with the adapter, from the same noise."""
    device = next(sampler.unet.parameters()).device
    out: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    n = len(data.pairs.content)
    for b, start in enumerate(range(0, n, batch_size)):
        x_T, content = data.inputs(np.arange(start, min(n, start + batch_size)), device)
        generator = step_generator(seed, b, device)
        with autocast():
            x = rollout_head(sampler, x_T, content, data.contents.timesteps, tail, generator)
            state = generator.get_state()
            for enabled in (False, True):
                set_enabled(layers, enabled)
                generator.set_state(state)
                out[enabled].append(rollout_tail(sampler, x, content, data.contents.timesteps, None, tail, generator).float().cpu())
    set_enabled(layers, True)
    return torch.cat(out[False]), torch.cat(out[True])
