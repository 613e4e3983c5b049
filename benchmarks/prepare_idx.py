"""Benchmark: `prepare` + `validate` on the full Fashion-MNIST IDX folder (70,000 images).

Side by side in one run: our `prepare` (split, LfF colouring, 4 writer threads, manifest, DisEnt
folders) against a bare single-threaded loop that colours the same images and writes them as PNGs into
one folder, so the ratio shows what the stage adds over the unavoidable encoding cost. Each measurement runs in its own process, so peak RSS is its own.

    python benchmarks/prepare_idx.py [--quick] [--path /usr/share/datasets/fashion-mnist]

Prints one JSON object on the last line.
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

from _idx_subset import write_idx_subset  # benchmarks/ is on sys.path: run as python benchmarks/NAME.py

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
QUICK_IMAGES = 7000


def _child(kind: str, src: str, out: str, limit: int) -> None:
    """Runs inside a subprocess; prints {"seconds": ..., "n": ...}."""
    import numpy as np
    from PIL import Image

    from diffinject.data.colour import LFF_PALETTE, colorize
    from diffinject.data.manifest import read_manifest
    from diffinject.data.prepare import DataConfig, prepare
    from diffinject.data.sources import load_idx_folder
    from diffinject.data.validation import ValidateConfig, validate_prepared

    start = time.perf_counter()
    if kind == "bare_png_loop":
        grey = load_idx_folder(src)
        images = grey.images[:limit] if limit else grey.images
        # The same kind of pixels prepare writes: coloured digits compress (and so encode) slower than grey.
        rgb = colorize(images, grey.targets[: len(images)] % len(LFF_PALETTE), 0.005, np.random.default_rng(0))
        for i, im in enumerate(rgb):
            Image.fromarray(im).save(Path(out) / f"{i}.png", format="PNG")
        n = len(rgb)
    elif kind == "prepare":
        summary = prepare(DataConfig(source="idx", path=src), seed=0, out=Path(out))
        n = sum(summary.n_images.values())
    elif kind == "validate":
        manifest = read_manifest(out)
        report = validate_prepared(Path(out), manifest, 10, 1.0, ValidateConfig())
        assert report.success, report.to_json()["failures"]
        n = len(manifest)
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "n": n, "peak_rss_mib": peak_mib}))


def _measure(kind: str, src: str, out: str, limit: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, src, out, str(limit)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"use {QUICK_IMAGES} images instead of all")
    parser.add_argument("--path", default=DEFAULT_PATH, help="an IDX folder (default: Debian's Fashion-MNIST)")
    args = parser.parse_args()
    if not Path(args.path).is_dir():
        raise SystemExit(f"{args.path}: not found (apt-get install dataset-fashion-mnist, or pass --path)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = write_idx_subset(args.path, QUICK_IMAGES, tmp) if args.quick else args.path
        (tmp / "bare").mkdir()
        (tmp / "prepared").mkdir()
        bare = _measure("bare_png_loop", src, str(tmp / "bare"), 0)
        ours = _measure("prepare", src, str(tmp / "prepared"), 0)
        check = _measure("validate", src, str(tmp / "prepared"), 0)
    result = {
        "benchmark": "prepare_idx",
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "n_images": ours["n"],
        "prepare_seconds": round(ours["seconds"], 2),
        "prepare_images_per_s": round(ours["n"] / ours["seconds"]),
        "prepare_peak_rss_mib": round(ours["peak_rss_mib"]),
        "bare_png_loop_seconds": round(bare["seconds"], 2),
        "prepare_vs_bare_loop_time_ratio": round(ours["seconds"] / bare["seconds"], 3),
        "validate_seconds": round(check["seconds"], 2),
        "validate_peak_rss_mib": round(check["peak_rss_mib"]),
    }
    print(f"prepare: {result['n_images']} images in {result['prepare_seconds']} s "
          f"({result['prepare_images_per_s']} img/s, peak {result['prepare_peak_rss_mib']} MiB); "
          f"bare PNG loop {result['bare_png_loop_seconds']} s; validate {result['validate_seconds']} s")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5], int(sys.argv[5]))
    else:
        main()
