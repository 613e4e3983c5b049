"""Golden numbers for the diffusion maths: slerp, the h-space hook, DDIM steps, inversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffinject.diffusion.ddim import ddim_generate, ddim_invert, ddim_step, eps_from_v, timestep_grid
from diffinject.diffusion.hspace import rescale_to, slerp
from diffinject.diffusion.injection_params import InjectionParams
from diffinject.diffusion.model import DiffusionConfig, build_scheduler
from diffinject.diffusion.sampler import InjectionSampler
from diffinject.diffusion.shared_encoder import SharedEncoder
from diffinject.diffusion.sites import SiteHook
from tests.conftest import H_SLERP, PLAIN_DDIM, invert_with_h, tiny_unet


def test_slerp_endpoints():
    a, b = torch.randn(4, 8, 3, 3), torch.randn(4, 8, 3, 3)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)


def test_slerp_preserves_norm_of_equal_norm_inputs():
    a = torch.randn(5, 32, 7, 7)
    b = rescale_to(torch.randn(5, 32, 7, 7), a)  # h_c' = h_c·‖h‖/‖h_c‖
    torch.testing.assert_close(b.flatten(1).norm(dim=1), a.flatten(1).norm(dim=1))
    for gamma in (0.1, 0.5, 0.7, 0.9):
        torch.testing.assert_close(slerp(a, b, gamma).flatten(1).norm(dim=1), a.flatten(1).norm(dim=1))


def test_slerp_formula_at_half():
    # orthogonal unit vectors: the midpoint is (a + b) / √2
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)]]))
    # 60° apart: the midpoint is at 30°
    c = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]])
    torch.testing.assert_close(slerp(a, c, 0.5), torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]]))


def test_slerp_parallel_vectors_interpolate_linearly():
    a = torch.tensor([[2.0, 0.0]])
    torch.testing.assert_close(slerp(a, a, 0.3), a)


def test_hook_captures_mid_block_output():
    unet, _ = tiny_unet()
    seen = {}
    handle = unet.mid_block.register_forward_hook(lambda m, i, o: seen.setdefault("h", o.detach().clone()))
    hook = SiteHook(unet)
    x, t = torch.randn(3, 3, 28, 28), torch.tensor([10, 500, 900])
    with torch.no_grad(), hook.capture(["h"]):
        unet(x, t)
    handle.remove()
    (h,) = hook.captured["h"]
    torch.testing.assert_close(h, seen["h"])
    assert h.shape == (3, 16, 14, 14)


def test_hook_replacing_h_with_itself_changes_nothing():
    unet, _ = tiny_unet()
    hook = SiteHook(unet)
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([100, 700])
    with torch.no_grad():
        with hook.capture(["h"]):
            plain = unet(x, t).sample
        (h,) = hook.captured["h"]
        for operator in ("slerp", "channel_stats"):
            for gamma in (0.0, 0.5, 1.0):
                with hook.inject({"h": (h,)}, operator, gamma):
                    torch.testing.assert_close(unet(x, t).sample, plain, atol=1e-5, rtol=1e-5)
        with hook.inject({"h": (torch.randn_like(h),)}, "slerp", 1.0):
            assert not torch.allclose(unet(x, t).sample, plain, atol=1e-3)
    hook.remove()


def test_timestep_grid_matches_asyrp_seq_inv():
    np.testing.assert_array_equal(timestep_grid(5, 1000), [0, 250, 500, 749, 999])


def test_ddim_step_is_its_own_inverse_for_a_fixed_eps():
    a_t, a_next = torch.tensor(0.9), torch.tensor(0.5)
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    up = ddim_step(x, eps, eps, a_t, a_next)
    torch.testing.assert_close(ddim_step(up, eps, eps, a_next, a_t), x)
    # Eq. 12 by hand
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    torch.testing.assert_close(up, a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps)


def test_a_stochastic_step_without_noise_is_a_clear_error():
    a_t, a_next = torch.tensor(0.5), torch.tensor(0.9)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"eta 1.0 > 0 .* needs `noise`"):
        ddim_step(x, x, x, a_t, a_next, eta=1.0)
    assert ddim_step(x, x, x, a_t, a_next, eta=1.0, noise=torch.zeros_like(x)).shape == x.shape


def test_asymmetric_step_takes_x0_from_injected_eps_and_direction_from_original():
    a_t, a_next = torch.tensor(0.3), torch.tensor(0.6)
    x, eps, eps_inj = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2)
    got = ddim_step(x, eps_inj, eps, a_t, a_next, dir_scale=0.9985)
    x0 = (x - (1 - a_t).sqrt() * eps_inj) / a_t.sqrt()
    torch.testing.assert_close(got, a_next.sqrt() * x0 + 0.9985 * (1 - a_next).sqrt() * eps)


class ZeroEps(torch.nn.Module):
    """A 'denoiser' predicting ε = 0: DDIM then maps x_t = √ᾱ_t·x_0 exactly, a closed form."""

    def __init__(self):
        super().__init__()
        self.mid_block = torch.nn.Identity()
        self.up_blocks = torch.nn.ModuleList()  # no decoder: h is its only site
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        out = type("Out", (), {})()
        out.sample = self.mid_block(torch.zeros_like(x))
        return out


def test_inversion_closed_form_with_zero_eps():
    scheduler = build_scheduler(DiffusionConfig(prediction_type="epsilon"))
    x0 = torch.randn(2, 3, 8, 8)
    inv, hs = invert_with_h(ZeroEps(), scheduler, x0, 10)
    torch.testing.assert_close(inv.x_T, scheduler.alphas_cumprod[999].sqrt() * x0)
    assert hs.shape == (10, 2, 3, 8, 8)
    with InjectionSampler(ZeroEps(), scheduler, InjectionParams(h_gamma=0.0, t_boost=-1, dt_lambda=1.0, n_gen_step=10, **H_SLERP)) as sampler:
        torch.testing.assert_close(sampler.generate(inv.x_T, hs, inv.timesteps), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ddim_generate(ZeroEps(), scheduler, inv.x_T, 10), x0, atol=1e-4, rtol=1e-4)


def test_plain_ddim_is_the_sampler_with_nothing_injected_bit_for_bit():
    """ddim_generate (train_diffusion's reconstruction) is the injection sampler at h_gamma 0."""
    unet, scheduler = tiny_unet()
    x0 = torch.rand(3, 3, 28, 28) * 2 - 1
    with torch.no_grad():
        x_T = ddim_invert(unet, scheduler, x0, 7).x_T
        with InjectionSampler(unet, scheduler, InjectionParams(n_gen_step=7, **PLAIN_DDIM)) as sampler:
            by_sampler = sampler.generate(x_T, None, None)
        assert torch.equal(ddim_generate(unet, scheduler, x_T, 7), by_sampler)


@pytest.mark.parametrize("t_edit", [0, 500])
def test_shared_encoder_generation_equals_two_full_passes(t_edit):
    unet, scheduler = tiny_unet()
    torch.manual_seed(0)
    content, style = torch.rand(4, 3, 28, 28) * 2 - 1, torch.rand(4, 3, 28, 28) * 2 - 1
    with torch.no_grad():
        c, c_hs = invert_with_h(unet, scheduler, content, 8)
        s = ddim_invert(unet, scheduler, style, 8)
    cfg = InjectionParams(h_gamma=0.7, t_edit=t_edit, t_boost=300, n_gen_step=8, **H_SLERP)
    out = {}
    for share in (True, False):
        with InjectionSampler(unet, scheduler, cfg, share_encoder=share) as sampler:
            out[share] = sampler.generate(s.x_T, c_hs, c.timesteps, torch.Generator().manual_seed(1))
    assert torch.equal(out[True], out[False])
    assert all("forward" not in m.__dict__ for m in [unet.conv_in, *unet.down_blocks, unet.mid_block])
    # no hook is left on the UNet after the `with` block
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    with pytest.raises(RuntimeError, match="inside `with InjectionSampler"):
        sampler.generate(s.x_T, c_hs, c.timesteps)


def test_shared_encoder_replays_the_recorded_encoder_once():
    unet, _ = tiny_unet()
    encoder = SharedEncoder(unet)
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([100, 700])
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="no complete recorded pass"):
            with encoder.replay():
                pass
        with encoder.record():
            recorded = unet(x, t).sample
        with encoder.replay():  # the encoder's outputs are x's, whatever the input: it is not recomputed
            replayed = unet(torch.randn_like(x), t).sample
        assert torch.equal(replayed, recorded)
        with pytest.raises(RuntimeError):  # one replay per recorded pass
            with encoder.replay():
                pass
        assert not torch.equal(unet(torch.randn_like(x), t).sample, recorded)  # forwards are restored


def test_eps_from_v_recovers_the_noise():
    scheduler = build_scheduler(DiffusionConfig(prediction_type="v_prediction"))
    x0, eps = torch.rand(3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 8, 8)
    for t in (0, 500, 999):
        timesteps = torch.full((3,), t)
        x_t = scheduler.add_noise(x0, eps, timesteps)
        v = scheduler.get_velocity(x0, eps, timesteps)
        torch.testing.assert_close(eps_from_v(v, x_t, scheduler.alphas_cumprod[t]), eps, atol=1e-5, rtol=1e-5)


def test_v_and_epsilon_models_give_the_same_inversion():
    """A v-predicting network that is exactly the ε network in v form inverts to the same x_T."""
    unet, _ = tiny_unet()
    by_type = {kind: build_scheduler(DiffusionConfig(prediction_type=kind)) for kind in ("epsilon", "v_prediction")}
    a = by_type["epsilon"].alphas_cumprod

    class AsV(torch.nn.Module):  # v = √ᾱ·ε − √(1−ᾱ)·x0, with x0 implied by x_t and ε
        def __init__(self, inner):
            super().__init__()
            self.inner, self.mid_block = inner, inner.mid_block

        def forward(self, x, timestep):
            eps = self.inner(x, timestep).sample
            a_t = a[timestep].view(-1, 1, 1, 1)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            return type("Out", (), {"sample": a_t.sqrt() * eps - (1 - a_t).sqrt() * x0})()

    x0 = torch.rand(2, 3, 28, 28) * 2 - 1
    with torch.no_grad():
        by_eps = ddim_invert(unet, by_type["epsilon"], x0, 6)
        by_v = ddim_invert(AsV(unet), by_type["v_prediction"], x0, 6)
    torch.testing.assert_close(by_v.x_T, by_eps.x_T, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        ddim_invert(unet, DDPMScheduler(prediction_type="sample"), x0, 6)
