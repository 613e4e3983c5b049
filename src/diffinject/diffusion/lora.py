"""Low-rank adapters (LoRA, Hu et al. 2022) on a UNet2DModel's convolutions, saved as one small file.

The fair generator (diffusion/fair.py) fine-tunes only these. The seed (finetune-fair-diffusion) puts
LoRA on attention projections through diffusers; our UNet has no attention (model.build_unet), so its
ResNet blocks' 3x3 convolutions (`conv1`, `conv2`) carry the adapter instead. peft supports Conv2d
LoRA too, but importing it needs transformers and accelerate (about 17 MB of wheels the pipeline uses
nowhere else); the adapter is this module's 40 lines:

    W x  ->  W x + (alpha / rank) · B (A x)

A: a conv with W's kernel, stride and padding to `rank` channels; B: a 1x1 conv back, zero at the
start, so a fresh adapter changes no output bit. A `TimestepGate` opens the adapter only on UNet calls
at t <= its bound: the fair generator adapts the late steps it was trained on and leaves the rest of
the trajectory (the shape) to the base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from diffinject.errors import DiffinjectError, first_line

TARGETS = ("conv1", "conv2")  # ResnetBlock2D's convolutions
WEIGHTS, META = "adapter.safetensors", "adapter.json"


class LoRAConv2d(nn.Module):
    """A frozen Conv2d plus a trainable low-rank update; `enabled = False` gives the frozen conv alone."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base, self.scale, self.enabled, self.open = base, alpha / rank, True, True
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5, generator=generator)  # as nn.Conv2d's own init
        nn.init.zeros_(self.up.weight)
        self.to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out + self.scale * self.up(self.down(x)) if self.enabled and self.open else out


class TimestepGate:
    """Opens `layers` on a UNet call at timestep <= max_t and closes them otherwise (None: always open)."""

    def __init__(self, unet: nn.Module, layers: dict[str, LoRAConv2d], max_t: int | None):
        self.layers, self.max_t = layers, max_t
        self.handle = unet.register_forward_pre_hook(self._gate, with_kwargs=True)

    def _gate(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        is_open = self.max_t is None or int(torch.as_tensor(t).max()) <= self.max_t
        for layer in self.layers.values():
            layer.open = is_open

    def remove(self) -> None:
        self.handle.remove()


def add_lora(unet: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS,
             seed: int = 0) -> dict[str, LoRAConv2d]:
    """Wrap every Conv2d of `unet` named one of `targets`; freeze the rest. -> name -> adapter layer.
    A's initial weights come from `seed` (same seed, same adapter)."""
    unet.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    wrapped = {}
    for name, module in list(unet.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Conv2d):
                layer = LoRAConv2d(child, rank, alpha, generator)
                setattr(module, child_name, layer)
                wrapped[f"{name}.{child_name}" if name else child_name] = layer
    if not wrapped:
        raise DiffinjectError(f"the UNet has no Conv2d named {' or '.join(targets)} to adapt")
    return wrapped


def set_enabled(layers: dict[str, LoRAConv2d], enabled: bool) -> None:
    for layer in layers.values():
        layer.enabled = enabled


def adapter_tensors(layers: dict[str, LoRAConv2d]) -> dict[str, torch.Tensor]:
    return {f"{name}.{part}": getattr(layer, part).weight.detach().float().cpu().contiguous()
            for name, layer in layers.items() for part in ("down", "up")}


def load_adapter_tensors(layers: dict[str, LoRAConv2d], tensors: dict[str, torch.Tensor]) -> None:
    for name, layer in layers.items():
        for part in ("down", "up"):
            getattr(layer, part).weight.data.copy_(tensors[f"{name}.{part}"])


def save_adapter(layers: dict[str, LoRAConv2d], out: Path, meta: dict[str, Any]) -> None:
    """`out`/adapter.safetensors (the A and B weights) and `out`/adapter.json (rank, alpha, `meta`)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_tensors(layers), str(out / WEIGHTS))
    (out / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_adapter(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a saved adapter; a one-line error for a missing or broken one."""
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise DiffinjectError(f"{folder}: no trained adapter ({META} and {WEIGHTS}); run `python -m diffinject fair_finetune` "
                              "with injection.generator: fair")
    try:
        meta = json.loads((folder / META).read_text())
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise DiffinjectError(f"{folder}: not a readable adapter ({first_line(exc)}); re-run `python -m diffinject fair_finetune`") from exc
    if not isinstance(meta, dict) or not {"rank", "alpha"} <= set(meta):
        raise DiffinjectError(f"{folder / META}: expected a JSON object with rank and alpha; re-run `python -m diffinject fair_finetune`")
    return tensors, meta


def attach_adapter(unet: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, LoRAConv2d]:
    """A saved adapter on `unet` (its layers, gated at meta's `max_timestep`), with a one-line error when
    its layers do not fit this UNet."""
    layers = add_lora(unet, int(meta["rank"]), float(meta["alpha"]), tuple(meta.get("targets", TARGETS)))
    for name, layer in layers.items():
        for part in ("down", "up"):
            saved = tensors.get(f"{name}.{part}")
            if saved is None or saved.shape != getattr(layer, part).weight.shape:
                raise DiffinjectError(f"adapter layer {name!r} does not fit this UNet (was it trained on another DDPM?)")
    if set(tensors) != {f"{name}.{part}" for name in layers for part in ("down", "up")}:
        raise DiffinjectError("the adapter's layers are not this UNet's (was it trained on another DDPM?)")
    load_adapter_tensors(layers, tensors)
    TimestepGate(unet, layers, meta.get("max_timestep"))
    return layers
