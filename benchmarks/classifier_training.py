"""Benchmark: classifier training on CPU — our Lightning setup against Lightning's barebones floor and a
plain PyTorch loop — and the peak memory of `train_biased` on the 60,000-image Fashion-MNIST train file.

1. Throughput. The LfF MLP trained with GCE on the prepared Colored-MNIST train split (4,000 images,
   batch 256), validated every epoch (500 images) with the best epoch's weights kept, exactly as the
   `train_biased` stage does, by three sides: `diffinject.models.training.train_classifier` (our
   Lightning setup, the default `trainer.*` params including the progress bar); Lightning's floor,
   `Trainer(barebones=True)` (no progress bar, logging, profiler or checkpointing) on the same module
   minus its one `self.log` per epoch, which barebones Trainers refuse; and a hand-written loop doing
   the same work (same network, initial weights, data loader, Adam, loss, validation and weight copy).
   Each round runs the three back to back in one process, in an order that rotates from round to round.
   The headline ratio is the median over rounds of our time / plain time, with its quartiles: pairing
   cancels the slow drifts of a shared VM (the same run varies by ±20 % here) and the median drops
   rounds hit by another process. floor / plain is what any Trainer costs on this workload, ours /
   floor what our features add. The fastest run of each side gives samples/s. Each wall time covers
   the whole call (Trainer construction included).
   Host contention shows as runs slower than their side's fastest (each side repeats identical work): a
   round is "quiet" when our run and the plain run both took at most QUIET_TOLERANCE x their side's
   fastest run; the median ratio over the quiet rounds is reported next to the headline, with the plain
   loop's spread (slowest / fastest run). On a busy host Lightning's Python bookkeeping slows down more
   than the matrix products, so contended rounds read higher.
   The same comparison runs again on the Fashion-MNIST train split of part 2 (~53,000 images, 3 epochs),
   where Lightning's fixed cost per epoch weighs 13x less per sample (keys `fashion_*`).
2. Peak memory. `python -m diffinject train_biased` in a child process on Fashion-MNIST prepared with
   `data.source: idx` (the IDX train file's 60,000 images become ~53,300 train + ~6,700 valid at the
   default 0.8/0.1 fractions; t10k stays the test split), ru_maxrss of that process via wait4.

    python benchmarks/classifier_training.py [--quick] [--path /usr/share/datasets/fashion-mnist]

--quick: fewer epochs and repeats, and a 7,000-image Fashion-MNIST subset. --smoke: one epoch and one
round of everything on a 2,000-image subset, a test that the script runs (its figures mean nothing).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _idx_subset import write_idx_subset  # benchmarks/ is on sys.path: run as python benchmarks/NAME.py

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
QUICK_IMAGES = 7000
# Epochs per timed training run: the default of the vanilla and debiased stages (quick: a short run, where
# Trainer construction weighs more).
EPOCHS, QUICK_EPOCHS = 50, 10
REPEATS, QUICK_REPEATS = 9, 3
SMOKE_IMAGES, SMOKE_EPOCHS, SMOKE_REPEATS = 2000, 1, 1  # --smoke: every measurement once, as short as it goes
# Epochs of the peak-memory run (peak memory does not grow with epochs; time does).
MEMORY_EPOCHS = 2
# Throughput again on the prepared Fashion-MNIST train split (~53,000 images), where Lightning's fixed
# per-epoch cost is spread over 13x more samples than on the 4,000-image Colored MNIST.
FASHION_EPOCHS, FASHION_REPEATS = 3, 5
NVML_CHECK_VAR = "PYTORCH_NVML_BASED_CUDA_CHECK"
# A round is quiet when our run and the plain run are within 10 % of their side's fastest (same work each time).
QUIET_TOLERANCE = 1.10


@contextlib.contextmanager
def without_lightning_environment():
    """The environment of a script that never imports Lightning: Lightning sets
    PYTORCH_NVML_BASED_CUDA_CHECK=1 at import, which makes every Adam step probe NVML (see
    diffinject.devices.skip_failing_nvml_probe), a cost a plain PyTorch script does not pay."""
    saved = os.environ.pop(NVML_CHECK_VAR, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[NVML_CHECK_VAR] = saved


def plain_loop(train, valid, num_classes: int, cfg, seed: int) -> float:
    """The same work as `train_classifier`, written out by hand, in a plain script's environment;
    returns wall seconds."""
    with without_lightning_environment():
        return _plain_loop(train, valid, num_classes, cfg, seed)


def _plain_loop(train, valid, num_classes: int, cfg, seed: int) -> float:
    import lightning
    import torch

    from diffinject.data.loaders import EVAL_BATCH_FACTOR, make_loader
    from diffinject.models.classifier import to_unit_float
    from diffinject.models.losses import per_sample_loss
    from diffinject.models.training import build_net

    start = time.perf_counter()
    lightning.seed_everything(seed, workers=True, verbose=False)
    net, _ = build_net(cfg, num_classes, train.shape, "biased")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_loader = make_loader(train, cfg.batch_size, shuffle=True, seed=seed)
    valid_loader = make_loader(valid, EVAL_BATCH_FACTOR * cfg.batch_size, shuffle=False)
    best, best_state = float("-inf"), None
    for _ in range(cfg.epochs):
        net.train()
        loss_sum = correct = 0.0
        for images, targets, _ in train_loader:
            logits = net(to_unit_float(images))
            loss = per_sample_loss(cfg.loss, logits, targets, cfg.gce_q).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum = loss_sum + loss.detach() * len(targets)
            correct = correct + (logits.detach().argmax(1) == targets).sum()
        train_metrics = [float(loss_sum) / len(train), float(correct) / len(train)]  # the epoch's curve row
        net.eval()
        valid_loss = hits = 0
        with torch.inference_mode():
            for images, targets, _ in valid_loader:
                logits = net(to_unit_float(images))
                valid_loss = valid_loss + per_sample_loss(cfg.loss, logits, targets, cfg.gce_q).sum()
                hits = hits + (logits.argmax(1) == targets).sum()
        acc = float(hits) / len(valid)
        train_metrics.append(float(valid_loss) / len(valid))
        if acc > best:
            best, best_state = acc, {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert best_state is not None
    return time.perf_counter() - start


def barebones_lightning(train, valid, num_classes: int, cfg, trainer_cfg, seed: int) -> float:
    """Lightning's floor on the same work: a barebones Trainer training the same module, without its
    per-epoch `self.log`; returns wall seconds."""
    import lightning

    from diffinject.data.loaders import ImageDataModule
    from diffinject.models.classifier import ClassifierModule, EpochSelector
    from diffinject.models.trainer import quiet_worker_warning
    from diffinject.models.training import build_net
    from diffinject.quiet import quiet_lightning

    class UnloggedModule(ClassifierModule):
        def log(self, *args, **kwargs) -> None:  # barebones Trainers raise on self.log
            pass

    start = time.perf_counter()
    lightning.seed_everything(seed, workers=True, verbose=False)
    net, _ = build_net(cfg, num_classes, train.shape, "biased")
    module = UnloggedModule(net, loss=cfg.loss, gce_q=cfg.gce_q, lr=cfg.lr, weight_decay=cfg.weight_decay)
    module.selector = EpochSelector(cfg.select)
    quiet_lightning()  # as build_trainer does: no cloud-logger advert or pytree deprecation warning per fit
    trainer = lightning.Trainer(barebones=True, accelerator=trainer_cfg.accelerator, devices=1,
                                precision=trainer_cfg.precision, deterministic=trainer_cfg.deterministic,
                                max_epochs=cfg.epochs, num_sanity_val_steps=0)
    with quiet_worker_warning():
        trainer.fit(module, datamodule=ImageDataModule(train, valid, cfg.batch_size, seed))
    assert module.selector.state is not None
    return time.perf_counter() - start


def throughput(prepared: Path, epochs: int, repeats: int) -> dict:
    from diffinject.config import load_params, section
    from diffinject.data.manifest import read_manifest
    from diffinject.data.tensors import load_split, num_classes_of
    from diffinject.models.configs import TrainConfig
    from diffinject.models.trainer import TrainerConfig
    from diffinject.models.training import train_classifier

    params = load_params(REPO / "params.yaml")
    trainer_cfg = section(params, "trainer", TrainerConfig)
    cfg = section(params, "biased", TrainConfig)
    cfg.epochs, cfg.select = epochs, "best"
    manifest = read_manifest(prepared)
    train, valid = load_split(prepared, "train", manifest), load_split(prepared, "valid", manifest)
    num_classes = num_classes_of(manifest)
    plain_loop(train, valid, num_classes, cfg, 0)  # warm-up: first-touch allocations, oneDNN kernels
    def lightning_run() -> float:
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the progress bar draws on stdout; keep stdout for results
            train_classifier(train, valid, num_classes, cfg, trainer_cfg, 0, "biased")
        return time.perf_counter() - start

    sides = {
        "lightning": lightning_run,
        "floor": lambda: barebones_lightning(train, valid, num_classes, cfg, trainer_cfg, 0),
        "plain": lambda: plain_loop(train, valid, num_classes, cfg, 0),
    }
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for _ in range(repeats):
        # Rotate which side goes first, so a drift within a round (or the cost of following another
        # side: allocator state, caches) does not always land on the same side.
        for name in order:
            seconds[name].append(sides[name]())
        order = order[1:] + order[:1]
    lightning_s, floor_s, plain_s = seconds["lightning"], seconds["floor"], seconds["plain"]
    samples = epochs * len(train)
    lt, pt = min(lightning_s), min(plain_s)
    return {
        "throughput_train_images": len(train),
        "throughput_epochs": epochs,
        "throughput_repeats": repeats,
        "lightning_samples_per_s": round(samples / lt),
        "plain_samples_per_s": round(samples / pt),
        **ratio_statistics(lightning_s, plain_s),
        "fastest_run_time_ratio": round(lt / pt, 3),
        "floor_overhead_pct": overhead_pct(statistics.median(f / p for f, p in zip(floor_s, plain_s))),
        "lightning_over_floor_pct": overhead_pct(statistics.median(l / f for l, f in zip(lightning_s, floor_s))),
        "lightning_seconds": [round(s, 3) for s in lightning_s],
        "floor_seconds": [round(s, 3) for s in floor_s],
        "plain_seconds": [round(s, 3) for s in plain_s],
    }


def overhead_pct(ratio: float) -> float:
    return round(100 * (ratio - 1), 1)


def ratio_statistics(lightning_s: list[float], plain_s: list[float]) -> dict:
    """The median Lightning / plain time ratio over all rounds, its quartiles, and the median over the
    quiet rounds (both runs within QUIET_TOLERANCE of their side's fastest run; None if there is none)."""
    ratios = [l / p for l, p in zip(lightning_s, plain_s)]
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratio, ratio, ratio]
    fastest_l, fastest_p = min(lightning_s), min(plain_s)
    quiet = [r for r, l, p in zip(ratios, lightning_s, plain_s)
             if l <= QUIET_TOLERANCE * fastest_l and p <= QUIET_TOLERANCE * fastest_p]
    return {
        "lightning_over_plain_time_ratio": round(ratio, 3),
        "lightning_overhead_pct": overhead_pct(ratio),
        "lightning_overhead_pct_quartiles": [overhead_pct(quartiles[0]), overhead_pct(quartiles[2])],
        "quiet_rounds": len(quiet),
        "lightning_overhead_pct_quiet_rounds": overhead_pct(statistics.median(quiet)) if quiet else None,
        "plain_time_spread": round(max(plain_s) / fastest_p, 3),  # ~1.0 on an idle host
    }


def overhead_text(tp: dict) -> str:
    """"13.5 % (quartiles 11.9 to 15.3 %; quiet rounds: 13.5 %, 9 of 9; plain-loop spread x1.09)" from a
    `throughput` result."""
    low, high = tp["lightning_overhead_pct_quartiles"]
    quiet = tp["lightning_overhead_pct_quiet_rounds"]
    quiet_text = f"{quiet} %, {tp['quiet_rounds']} of" if quiet is not None else "none of"
    return (f"{tp['lightning_overhead_pct']} % (quartiles {low} to {high} %; quiet rounds: {quiet_text} "
            f"{tp['throughput_repeats']}; plain-loop spread x{tp['plain_time_spread']}); Lightning's floor "
            f"(barebones Trainer) {tp['floor_overhead_pct']} %, ours over the floor {tp['lightning_over_floor_pct']} %")


def peak_memory(src: str, root: Path, epochs: int = MEMORY_EPOCHS) -> dict:
    """Prepare `src` under root/data/prepared, then time train_biased (`epochs`) in a child process."""
    from diffinject.config import load_params
    from diffinject.stages import prepare

    params = load_params(REPO / "params.yaml")
    params["data"] = dict(params.get("data") or {}, source="idx", path=src)
    params["biased"] = dict(params.get("biased") or {}, epochs=epochs)
    params["trainer"] = dict(params.get("trainer") or {}, enable_progress_bar=False)
    start = time.perf_counter()
    info = prepare.run(params, root)  # -> root/data/prepared, root/metrics/plots/prepare
    prepare_s = time.perf_counter() - start
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "diffinject", "train_biased"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train_biased failed:\n{output}")
    return {
        "fashion_images": info["n_images"],
        "fashion_prepare_seconds": round(prepare_s, 1),
        "train_biased_epochs": epochs,
        "train_biased_seconds": round(seconds, 1),
        "train_biased_peak_rss_mib": round(usage.ru_maxrss / 1024),  # Linux: kilobytes
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs/repeats and a Fashion-MNIST subset")
    parser.add_argument("--smoke", action="store_true",
                        help="one epoch, one round, a 2,000-image subset: a test that the script runs, not a measurement")
    parser.add_argument("--path", default=DEFAULT_PATH, help="an IDX folder (default: Debian's Fashion-MNIST)")
    parser.add_argument("--skip-throughput", action="store_true", help="only the peak-memory measurement")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for the throughput runs (default: torch's, one per core)")
    args = parser.parse_args()
    if not Path(args.path).is_dir():
        raise SystemExit(f"{args.path}: not found (apt-get install dataset-fashion-mnist, or pass --path)")
    from diffinject.data.prepare import DataConfig, prepare

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = {
        "benchmark": "classifier_training",
        "quick": args.quick,
        "smoke": args.smoke,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_throughput:
            prepared = tmp / "cmnist"
            prepared.mkdir()
            prepare(DataConfig(), seed=0, out=prepared)
            result.update(throughput(prepared, SMOKE_EPOCHS if args.smoke else QUICK_EPOCHS if args.quick else EPOCHS,
                                     SMOKE_REPEATS if args.smoke else QUICK_REPEATS if args.quick else REPEATS))
            print(f"training {result['throughput_train_images']} images x {result['throughput_epochs']} epochs: "
                  f"Lightning {result['lightning_samples_per_s']} samples/s, plain loop {result['plain_samples_per_s']} "
                  f"samples/s, overhead {overhead_text(result)}", flush=True)
        fashion = tmp / "fashion"
        fashion.mkdir()
        subset = SMOKE_IMAGES if args.smoke else QUICK_IMAGES if args.quick else None
        src = write_idx_subset(args.path, subset, fashion) if subset else args.path
        memory_epochs = SMOKE_EPOCHS if args.smoke else MEMORY_EPOCHS
        result.update(peak_memory(src, tmp / "fashion-root", memory_epochs))
        splits = ", ".join(f"{n} {split}" for split, n in result["fashion_images"].items())
        print(f"train_biased on Fashion-MNIST ({splits}): {result['train_biased_seconds']} s for "
              f"{memory_epochs} epochs, peak RSS {result['train_biased_peak_rss_mib']} MiB", flush=True)
        if not args.skip_throughput:
            fashion_epochs = SMOKE_EPOCHS if args.smoke else FASHION_EPOCHS
            fashion_tp = throughput(tmp / "fashion-root" / "data" / "prepared", fashion_epochs,
                                    1 if args.quick or args.smoke else FASHION_REPEATS)
            result.update({f"fashion_{k}": v for k, v in fashion_tp.items()})
            print(f"Fashion-MNIST {fashion_tp['throughput_train_images']} images x {fashion_epochs} epochs: "
                  f"overhead {overhead_text(fashion_tp)}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
