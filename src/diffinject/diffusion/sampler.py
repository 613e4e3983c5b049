"""The injection sampler (DiffInject; DiffStyle / InjectFusion, Jeong et al. 2024), batched: the plan of
generation steps and the generation from a style's x_T with a content image's UNet features mixed in,
plus the capture of those features on an inversion path. The DDIM maths it steps with is
diffusion/ddim.py; the sites are diffusion/sites.py, the operators diffusion/operators.py; docs/design.md has the update.

The official code runs one (content, style) pair per process with batch 1; here every tensor carries a
batch dimension, inversions are cached and reused across h_gamma values.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn
from tqdm import tqdm

from diffinject.diffusion.conditioning import Guidance, guided_output, is_class_conditional
from diffinject.diffusion.ddim import alpha_bar, checked_prediction_type, ddim_step, predict_eps, timestep_grid
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.operators import OPERATORS
from diffinject.diffusion.reader_guidance import ReaderGuidance
from diffinject.diffusion.shared_encoder import SharedEncoder
from diffinject.diffusion.sites import H_SITE, Features, SiteHook, check_sites
from diffinject.errors import DiffinjectError

# Asyrp / DiffInject scale the noise-direction term by dt_lambda only early in generation, for
# t >= 950 of the 1000-step schedule (InjectFusion's `dt_end`): 0.95·T for a schedule of T steps.
DT_LAMBDA_FROM_FRACTION = 0.95


@dataclass(frozen=True)
class Step:
    """One generation step t -> t_next and what happens on it."""

    t: int
    t_next: int  # -1: the last step, to x_0
    inject: bool  # the content's features enter ε̃ (else ε̃ = ε)
    eta: float  # 0: deterministic DDIM, 1: the quality boost's stochastic step
    dir_scale: float  # dt_lambda or 1


def plan_steps(config: InjectionParams, num_train_timesteps: int) -> list[Step]:
    """The generation steps, descending, of `config.schedule` (docs/design.md, "The official schedule")."""
    config = config.with_hand_chosen()
    config.check()
    dt_from = DT_LAMBDA_FROM_FRACTION * num_train_timesteps
    if config.schedule == "every_step":
        grid = timestep_grid(config.n_gen_step, num_train_timesteps)
        replace = set(int(t) for t in grid)
    else:
        grid = timestep_grid(config.n_gen_step, num_train_timesteps, floor=True)
        replace = set(int(t) for t in timestep_grid(config.replace_steps, num_train_timesteps, floor=True))
    descending = [int(t) for t in grid[::-1]]
    steps = []
    for t, t_next in zip(descending, descending[1:] + [-1]):
        if t not in replace:  # official schedule only: plain DDIM between replace steps
            steps.append(Step(t, t_next, inject=False, eta=0.0, dir_scale=1.0))
            continue
        dir_scale = config.dt_lambda if t >= dt_from else 1.0
        eta = 1.0 if t <= config.t_boost else 0.0
        if config.schedule == "official" and dir_scale != 1.0:
            eta = 0.0  # InjectFusion's dt_lambda branch recomputes x_{t-1} without the noise term
        in_window = config.t_edit <= t and (config.t_max is None or t <= config.t_max)
        steps.append(Step(t, t_next, inject=in_window and config.h_gamma > 0, eta=eta, dir_scale=dir_scale))
    if config.h_gamma > 0 and not any(step.inject for step in steps):
        # else the "synthetic" pool would silently be plain reconstructions of the styles
        window = f"t_edit {config.t_edit} .. t_max {'none' if config.t_max is None else config.t_max}"
        raise ValueError(f"the window {window} holds none of the {len(steps)} {config.schedule} generation steps "
                         f"(timesteps {descending[-1]} .. {descending[0]} of {num_train_timesteps}): nothing would be injected")
    return steps


def _content_at(content: Features, index: int) -> Features:
    return {site: tuple(t[index] for t in tensors) for site, tensors in content.items()}


class InjectionSampler:
    """Generates from style x_T with a content image's features mixed into chosen UNet sites.

    At each step of the plan (`plan_steps`), on injected steps:
        ε = ε_θ(x_t, t)                                                        (1)
        ε̃ = ε_θ(x_t, t | site ← operator(site, content's site, h_gamma))      (2)
        x_{t−1} = √ᾱ_{t−1}·P_t(ε̃) + √(1−ᾱ_{t−1}−σ²)·ε·λ_t + σ·z                (3)
    with σ from the step's eta and λ_t its dt_lambda scale; on other steps ε̃ = ε. The content's
    features at step t are those stored at the nearest inversion timestep. ε and ε̃ share the encoder
    pass (conv_in, down blocks, mid block: `SharedEncoder`) unless share_encoder is False; the up-block
    sites are in the decoder, so the replay still sees them injected. A network without UNet2DModel's
    encoder layout runs two full passes, and says so once.

    With a `reader` (ReaderGuidance), both ε and ε̃ of the late generation steps are moved up a label
    reader's log p(y | x̂_0), y the synthetic label.

    A class-conditional UNet generates under the synthetic labels with guidance scale
    `injection.guidance_scale` (diffusion/conditioning.py), in (1) and (2) alike, and on injected steps
    with `injection.window_guidance_scale` where that is set.

    A context manager: the site hooks are on the UNet only inside `with InjectionSampler(...) as s:`.
    """

    def __init__(self, unet: nn.Module, scheduler: DDPMScheduler, config: InjectionParams, share_encoder: bool = True,
                 reader: ReaderGuidance | None = None):
        self.prediction_type = checked_prediction_type(scheduler)
        self.unet = unet
        self.reader = reader  # label-reader guidance on the late steps (diffusion/reader_guidance.py)
        self.alphas_cumprod = scheduler.alphas_cumprod
        # the stages settle every key first (stages/injection_setting.py); a library caller that leaves
        # one `auto` gets the hand-chosen value, never in place of a set one
        self.config = config = config.with_hand_chosen()
        self.sites = config.sites()
        check_sites(self.sites, unet)
        config.check_operator(tuple(OPERATORS))
        self.steps = plan_steps(config, len(self.alphas_cumprod))
        self.conditional = is_class_conditional(unet)
        self.share_encoder = share_encoder and SharedEncoder.fits(unet)
        if share_encoder and not self.share_encoder:
            warnings.warn(f"{type(unet).__name__} lacks UNet2DModel's conv_in / down_blocks / mid_block: each injected "
                          "step runs two full UNet passes instead of sharing the encoder", stacklevel=2)
        self.hook: SiteHook | None = None
        self.encoder: SharedEncoder | None = None

    def __enter__(self) -> "InjectionSampler":
        self.hook = SiteHook(self.unet)
        self.encoder = SharedEncoder(self.unet) if self.share_encoder else None
        return self

    def __exit__(self, *exc_info) -> None:
        if self.hook is not None:
            self.hook.remove()
        self.hook = self.encoder = None

    def guidance(self, labels: torch.Tensor | np.ndarray | None, injected: bool = False) -> Guidance | None:
        """The synthetic labels as the condition of a class-conditional UNet (None: the null class), on
        an injected step or another."""
        if labels is None:
            return None
        scale = self.config.guidance_scale
        if injected and self.config.window_guidance_scale is not None:
            scale = self.config.window_guidance_scale
        return Guidance(torch.as_tensor(labels, dtype=torch.long), 1.0 if scale is None else float(scale))

    def _eps_pair(self, x: torch.Tensor, timestep: torch.Tensor, a_t: torch.Tensor,
                  content_here: Features, guidance: Guidance | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(1) ε and (2) ε̃ at one injected step; the second pass replays the first's encoder."""
        cfg = self.config
        if guidance is not None and guidance.doubles_batch and self.conditional:
            # the conditional and null halves run as one batch: each half gets the same content
            content_here = {site: tuple(torch.cat([f, f]) for f in tensors) for site, tensors in content_here.items()}
        with self.encoder.record() if self.encoder else contextlib.nullcontext():
            eps = predict_eps(self.unet, x, timestep, a_t, self.prediction_type, guidance)
        with self.encoder.replay() if self.encoder else contextlib.nullcontext(), \
                self.hook.inject(content_here, cfg.operator, cfg.h_gamma):
            eps_inj = predict_eps(self.unet, x, timestep, a_t, self.prediction_type, guidance)
        return eps, eps_inj

    @torch.no_grad()
    def generate(self, x_T: torch.Tensor, content: Features | torch.Tensor | None, content_timesteps: np.ndarray | None,
                 generator: torch.Generator | None = None, progress: bool = False,
                 labels: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """x_T: (B, C, H, W) style latents; content: site -> tensors of shape (n_inv, B, ...) on the
        inversion grid `content_timesteps` (a bare tensor is h), or None for plain DDIM; labels (B,): the
        synthetic labels, the condition of a class-conditional UNet."""
        if self.hook is None:
            raise RuntimeError("InjectionSampler.generate: use it inside `with InjectionSampler(...) as sampler:`")
        if isinstance(content, torch.Tensor):
            content = {H_SITE: (content,)}
        if content is not None:
            missing = [site for site in self.sites if site not in content]
            if missing:
                raise ValueError(f"content features lack site {missing[0]!r} (have {', '.join(content)})")
            content = {site: content[site] for site in self.sites}
        x, guidance = x_T, {injected: self.guidance(labels, injected) for injected in (False, True)}
        for step in tqdm(self.steps, desc="inject: DDIM steps", disable=not progress, leave=False):
            x = self.step(x, step, content, content_timesteps, generator, guidance=guidance[step.inject and content is not None])
        return x

    def step(self, x: torch.Tensor, step: Step, content: Features | None, content_timesteps: np.ndarray | None,
             generator: torch.Generator | None = None, eps_grad_scale: float | None = None,
             guidance: Guidance | None = None) -> torch.Tensor:
        """One step of the plan, x_t -> x_{t_next}, (1)-(3). With `eps_grad_scale` (the fair generator's
        adjusted direct fine-tuning, diffusion/fair.py) the UNet sees x_t detached, so the gradient
        reaches x_t only through the update's linear terms, and the gradient of ε and ε̃ is scaled."""
        x_in = x.detach() if eps_grad_scale is not None else x
        timestep = torch.full((x.shape[0],), step.t, device=x.device, dtype=torch.long)
        a_t, a_next = alpha_bar(self.alphas_cumprod, step.t).to(x), alpha_bar(self.alphas_cumprod, step.t_next).to(x)
        if content is not None and step.inject:
            here = _content_at(content, int(np.abs(content_timesteps - step.t).argmin()))
            eps, eps_inj = self._eps_pair(x_in, timestep, a_t, here, guidance)  # (1), (2)
        else:
            eps = eps_inj = predict_eps(self.unet, x_in, timestep, a_t, self.prediction_type, guidance)  # (1); ε̃ = ε
        if self.reader is not None and guidance is not None and a_next > a_t and self.reader.applies(step.t):
            shift = self.reader.eps_shift(x_in, eps_inj, a_t, guidance.labels)  # generation steps only
            eps, eps_inj = (eps - shift, eps_inj - shift) if eps_inj is not eps else (eps - shift,) * 2
        if eps_grad_scale is not None and eps.requires_grad:
            scale = float(eps_grad_scale)
            eps.register_hook(lambda grad: grad * scale)
            if eps_inj is not eps:
                eps_inj.register_hook(lambda grad: grad * scale)
        noise = None
        if step.eta > 0:  # z of (3)
            noise = torch.randn(x.shape, generator=generator, device=x.device if generator is None else generator.device).to(x)
        # (3): x_0 from ε̃, the direction from ε (Asyrp's asymmetric step)
        return ddim_step(x, eps_inj, eps, a_t, a_next, eta=step.eta, dir_scale=step.dir_scale, noise=noise,
                         clip_x0=self.config.clip_x0)


@torch.no_grad()
def capture_features(unet: nn.Module, xs: torch.Tensor, timesteps: np.ndarray, sites: Sequence[str],
                     batch_size: int = 256, labels: torch.Tensor | None = None) -> Features:
    """The features at `sites` of images on their inversion path: xs (n_steps, N, C, H, W) is x_t at each
    of `timesteps` -> site -> tensors of shape (n_steps, N, ...) in fp32, on the CPU. A class-conditional
    UNet sees the images' `labels` (N,), the classes they were inverted under (else the null class)."""
    check_sites(sites, unet)
    hook = SiteHook(unet)
    per_step: list[Features] = []
    try:
        for i, t in enumerate(timesteps):
            chunks: list[Features] = []
            for start in range(0, xs.shape[1], batch_size):
                x = xs[i, start:start + batch_size].to(next(unet.parameters()).device)
                timestep = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
                guidance = None if labels is None else Guidance(labels[start:start + batch_size])
                with hook.capture(sites):
                    guided_output(unet, x, timestep, guidance)
                chunks.append({s: tuple(f.cpu() for f in hook.captured[s]) for s in sites})
            per_step.append({s: tuple(torch.cat([c[s][k] for c in chunks]) for k in range(len(chunks[0][s]))) for s in sites})
    finally:
        hook.remove()
    return {s: tuple(torch.stack([p[s][k] for p in per_step]) for k in range(len(per_step[0][s]))) for s in sites}


def content_features(unet, contents, sites, batch_size: int):
    """site -> tensors (n_steps, |contents|, ...) recomputed from the contents' inversion paths."""
    if contents.xs is None:
        if contents.hs is not None and tuple(sites) == ("h",):
            return {"h": (contents.hs,)}  # an older cache: h only
        raise DiffinjectError("data/inversions/content.safetensors has no inversion path (xs); re-run `python -m diffinject invert`")
    return capture_features(unet, contents.xs, contents.timesteps, sites, batch_size, labels=contents.targets)
