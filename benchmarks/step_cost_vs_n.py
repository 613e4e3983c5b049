"""Does a training step cost more when the train set is larger? Side by side in one run: each trainer
(vanilla, LfF, DisEnt, LC) on a small and a large random uint8 train set of 28x28 RGB images, for the
same number of optimisation steps (epochs chosen so that steps match) and the same 500-image valid set;
prints the time per step for both sizes and their ratio (1.0 = the step does not depend on the data size).

    python benchmarks/step_cost_vs_n.py            # 4,000 vs 53,330 images, ~1,600 steps each
    python benchmarks/step_cost_vs_n.py --quick    # ~300 steps each
    python benchmarks/step_cost_vs_n.py --smoke    # 8 steps on 512 vs 1,024 images: checks the script runs, measures nothing

The pipeline's stages at these sizes: docs/benchmarks.md (every stage's cost at 4,000 and 53,330 train images).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from diffinject.data.tensors import ImageTensors
from diffinject.models.disent import train_disent
from diffinject.models.disent_config import DisEntConfig
from diffinject.models.lc import LCConfig, train_lc
from diffinject.models.lff import LfFConfig, train_lff
from diffinject.models.configs import TrainConfig
from diffinject.models.trainer import TrainerConfig
from diffinject.models.training import train_classifier

TRAINERS = {"vanilla": (TrainConfig, train_classifier), "lff": (LfFConfig, train_lff),
            "disent": (DisEntConfig, train_disent), "lc": (LCConfig, train_lc)}


def images(n: int, seed: int) -> ImageTensors:
    g = torch.Generator().manual_seed(seed)
    return ImageTensors(torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (n,), generator=g), torch.arange(n), f"random-{n}")


def seconds_per_step(name: str, train: ImageTensors, valid: ImageTensors, steps: int) -> float:
    config, fit = TRAINERS[name]
    steps_per_epoch = math.ceil(len(train) / 256)
    epochs = max(1, round(steps / steps_per_epoch))
    cfg = config(epochs=epochs, select="last")
    trainer = TrainerConfig(accelerator="cpu", enable_progress_bar=False)
    start = time.perf_counter()
    fit(train, valid, 10, cfg, trainer, 0, name)
    return (time.perf_counter() - start) / (epochs * steps_per_epoch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~300 steps per trainer and size instead of ~1,600")
    parser.add_argument("--smoke", action="store_true",
                        help="8 steps on 512 vs 1,024 images (unless --small/--large): a test that the script runs, not a measurement")
    parser.add_argument("--small", type=int, default=None, help="images of the small train set (default 4000; --smoke 512)")
    parser.add_argument("--large", type=int, default=None, help="images of the large train set (default 53330; --smoke 1024)")
    args = parser.parse_args(argv)
    steps = 8 if args.smoke else 300 if args.quick else 1600
    if args.small is None:
        args.small = 512 if args.smoke else 4000
    if args.large is None:
        args.large = 1024 if args.smoke else 53330
    valid = images(64 if args.smoke else 500, 1)
    small, large = images(args.small, 2), images(args.large, 3)
    result = {"steps": steps, "small": args.small, "large": args.large, "threads": torch.get_num_threads()}
    for name in TRAINERS:
        a = seconds_per_step(name, small, valid, steps)
        b = seconds_per_step(name, large, valid, steps)
        result[name] = {"ms_per_step_small": round(1e3 * a, 2), "ms_per_step_large": round(1e3 * b, 2),
                        "large_over_small": round(b / a, 2)}
        print(f"{name:8s} {1e3 * a:6.2f} ms/step at {args.small}, {1e3 * b:6.2f} at {args.large}: x{b / a:.2f}", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
