"""Benchmark: our batched, cached injection against a faithful reference of the official loop.

The official DiffStyle/DiffInject code handles one (content, style) pair at a time with batch 1: it
loads the model for the pair, DDIM-inverts the content (recomputing its h) and the style, then
generates. Ours inverts every content and style image once, in batches, and generates all pairs in
batches from the cache. Same UNet, steps and pairs; images per second of each and their ratio, side by
side in one run. Peak RSS of `invert` and `inject` alone is measured in subprocesses.

    python benchmarks/injection_speed.py [--quick] [--model models/diffusion]

Without --model, an untrained UNet of the default `diffusion.*` architecture is used: speed does not
depend on the weights. Prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _setup(model: str | None, tmp: Path) -> Path:
    from diffinject.config import load_params, section
    from diffinject.diffusion.model import DiffusionConfig, build_scheduler, build_unet, save_diffusion

    if model:
        return Path(model)
    cfg = section(load_params(REPO / "params.yaml"), "diffusion", DiffusionConfig)
    torch.manual_seed(0)
    save_diffusion(build_unet(cfg, 28, 3), build_scheduler(cfg), tmp / "diffusion")
    return tmp / "diffusion"


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from diffinject.data.prepare import DataConfig, prepare
    from diffinject.data.tensors import load_split

    with tempfile.TemporaryDirectory() as d:
        prepare(DataConfig(), 0, Path(d))
        train = load_split(d, "train")
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(train), generator=g)[: 2 * n]
    return train.images[rows[:n]], train.images[rows[n:]]  # content, style


def reference_loop(model_dir: Path, contents, styles, cfg) -> float:
    """One pair at a time, batch 1, model loaded per pair, content h recomputed per pair."""
    from diffinject.diffusion.model import load_diffusion, to_model_range, to_uint8
    from diffinject.diffusion.sampler import InjectionSampler, ddim_invert

    start = time.perf_counter()
    for k in range(len(contents)):
        unet, scheduler = load_diffusion(model_dir)
        unet.eval()
        with torch.no_grad():
            c = ddim_invert(unet, scheduler.alphas_cumprod, to_model_range(contents[k:k + 1]), cfg.n_gen_step, keep_h=True)
            s = ddim_invert(unet, scheduler.alphas_cumprod, to_model_range(styles[k:k + 1]), cfg.n_gen_step, keep_h=False)
            sampler = InjectionSampler(unet, scheduler.alphas_cumprod, cfg)
            to_uint8(sampler.generate(s.x_T, c.hs, c.timesteps, torch.Generator().manual_seed(k)))
            sampler.close()
    return time.perf_counter() - start


def ours(model_dir: Path, contents, styles, cfg, batch_size: int) -> tuple[float, float, float]:
    """Batched inversion of every image once, then batched generation of all pairs from the cache."""
    from diffinject.diffusion.model import load_diffusion, to_model_range, to_uint8
    from diffinject.diffusion.sampler import InjectionSampler, ddim_invert

    start = time.perf_counter()
    unet, scheduler = load_diffusion(model_dir)
    unet.eval()
    hs, c_T, s_T = [], [], []
    with torch.no_grad():
        for b in range(0, len(contents), batch_size):
            c = ddim_invert(unet, scheduler.alphas_cumprod, to_model_range(contents[b:b + batch_size]), cfg.n_gen_step, keep_h=True)
            s = ddim_invert(unet, scheduler.alphas_cumprod, to_model_range(styles[b:b + batch_size]), cfg.n_gen_step, keep_h=False)
            hs.append(c.hs), c_T.append(c.x_T), s_T.append(s.x_T)
        timesteps = c.timesteps
        inverted = time.perf_counter()
        sampler = InjectionSampler(unet, scheduler.alphas_cumprod, cfg)
        for i, b in enumerate(range(0, len(contents), batch_size)):
            to_uint8(sampler.generate(s_T[i], hs[i], timesteps, torch.Generator().manual_seed(i)))
        sampler.close()
    end = time.perf_counter()
    return end - start, inverted - start, end - inverted


def _peak_child(kind: str, model_dir: Path, n: int, batch_size: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(model_dir), str(n), str(batch_size)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def _child(kind: str, model_dir: str, n: int, batch_size: int) -> None:
    from diffinject.diffusion.injection import InjectionParams
    from diffinject.diffusion.model import load_diffusion, to_model_range
    from diffinject.diffusion.sampler import InjectionSampler, ddim_invert

    contents, styles = _images(n)
    cfg = InjectionParams().sampler_config()
    unet, scheduler = load_diffusion(model_dir)
    unet.eval()
    with torch.no_grad():
        for b in range(0, n, batch_size):
            c = ddim_invert(unet, scheduler.alphas_cumprod, to_model_range(contents[b:b + batch_size]), cfg.n_gen_step, keep_h=True)
            if kind == "inject":
                sampler = InjectionSampler(unet, scheduler.alphas_cumprod, cfg)
                sampler.generate(c.x_T, c.hs, c.timesteps, torch.Generator().manual_seed(b))
                sampler.close()
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 pairs instead of 128")
    parser.add_argument("--model", default=None, help="a diffusers UNet folder (default: untrained default architecture)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    from diffinject.diffusion.injection import InjectionParams

    n_pairs = 16 if args.quick else 128
    n_reference = 4 if args.quick else 16  # the reference is slow: time a subset, report per image
    cfg = InjectionParams().sampler_config()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _setup(args.model, Path(tmp))
        contents, styles = _images(n_pairs)
        ref_seconds = reference_loop(model_dir, contents[:n_reference], styles[:n_reference], cfg)
        total, inv_s, gen_s = ours(model_dir, contents, styles, cfg, args.batch_size)
        peak_invert = _peak_child("invert", model_dir, n_pairs, args.batch_size)
        peak_inject = _peak_child("inject", model_dir, n_pairs, args.batch_size)
    ref_ips, our_ips = n_reference / ref_seconds, n_pairs / total
    result = {
        "benchmark": "injection_speed",
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "steps": cfg.n_gen_step,
        "reference_pairs": n_reference,
        "reference_images_per_s": round(ref_ips, 3),
        "ours_pairs": n_pairs,
        "ours_images_per_s": round(our_ips, 3),
        "speedup": round(our_ips / ref_ips, 1),
        "ours_invert_seconds_per_pair": round(inv_s / n_pairs, 4),
        "ours_generate_seconds_per_pair": round(gen_s / n_pairs, 4),
        "peak_rss_mib_invert": round(peak_invert),
        "peak_rss_mib_inject": round(peak_inject),
    }
    print(f"reference (batch 1, reload per pair): {ref_ips:.2f} img/s; ours (batched, cached): {our_ips:.2f} img/s; "
          f"{result['speedup']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
