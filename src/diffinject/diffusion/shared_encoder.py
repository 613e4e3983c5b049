"""Run a UNet's encoder once for the two noise predictions of an injection step.

At every injected step the sampler needs ε_θ(x_t, t) and ε̃ = ε_θ(x_t, t | h ← slerp(h, h_c', γ)) for
the same x_t and t. Everything up to and including the middle block (conv_in, the down blocks with the
skip connections they emit, h itself) is identical in the two passes: only the decoder sees the
injected h (skip connections come from the style path, docs/design.md). So the first pass records those
modules' outputs and the second replays them instead of recomputing them; the h-space hook on
`mid_block` still runs on the replayed h. The result is bit-for-bit the same as two full passes
(tests/test_diffusion_maths.py) and saves the encoder's share of the second pass.

Works for any diffusers UNet2DModel-like network whose forward calls `conv_in`, each of `down_blocks`
and `mid_block` exactly once (UNet2DModel's forward does); the modules' `forward` is swapped per
instance for the duration of a `record()` / `replay()` block, so hooks and attributes stay in place.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from torch import nn


class SharedEncoder:
    """with enc.record(): unet(x, t)   -> outputs of conv_in, down blocks and mid block are kept
    with enc.replay(): unet(x, t)   -> those modules return the kept outputs (same x and t only)"""

    def __init__(self, unet: nn.Module):
        if not self.fits(unet):
            raise ValueError("the UNet has no conv_in / down_blocks / mid_block; its encoder cannot be shared")
        self.modules: list[nn.Module] = [unet.conv_in, *unet.down_blocks, unet.mid_block]
        self._outputs: dict[int, Any] = {}

    @staticmethod
    def fits(unet: nn.Module) -> bool:
        """Whether `unet` has UNet2DModel's encoder layout."""
        return all(getattr(unet, name, None) is not None for name in ("conv_in", "down_blocks", "mid_block"))

    @contextlib.contextmanager
    def _swapped(self, make_forward: Callable[[int, nn.Module], Callable[..., Any]]) -> Iterator[None]:
        for k, module in enumerate(self.modules):
            module.forward = make_forward(k, module)  # instance attribute shadows the class's forward
        try:
            yield
        finally:
            for module in self.modules:
                del module.forward

    @contextlib.contextmanager
    def record(self) -> Iterator["SharedEncoder"]:
        self._outputs = {}

        def make_forward(k: int, module: nn.Module) -> Callable[..., Any]:
            original = type(module).forward

            def forward(*args: Any, **kwargs: Any) -> Any:
                self._outputs[k] = out = original(module, *args, **kwargs)
                return out

            return forward

        with self._swapped(make_forward):
            yield self

    @contextlib.contextmanager
    def replay(self) -> Iterator["SharedEncoder"]:
        if len(self._outputs) != len(self.modules):
            raise RuntimeError("SharedEncoder.replay: no complete recorded pass to replay (run one under record() first)")

        def make_forward(k: int, module: nn.Module) -> Callable[..., Any]:
            return lambda *args, **kwargs: self._outputs[k]

        try:
            with self._swapped(make_forward):
                yield self
        finally:
            self._outputs = {}  # a replay is good for one pass: never serve a stale x_t
