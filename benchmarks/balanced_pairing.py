"""Balanced pairing against random pairing on a finished pipeline root, side by side in one run.

The injection setting is fixed to the one the root's `inject` chose (metrics/inject.json), so only the
pairing changes. For each of `injection.pairing` random and balanced, `inject` runs in a scratch folder
whose inputs link to the root's, and the pool is described by the evaluation-only judges: bias
deviation from the target (uniform over the label's conflicting values), bias conflict fraction,
label fidelity, faithful conflicts, Fréchet distance.

Beside the pools, the **perfect-transfer bound** (evaluation only, no image generated): the deviation
the pairs would have if every synthetic image carried exactly its bias-lending image's true bias, for
random pairing, balanced pairing (on the bias proxy, as the pipeline does) and balanced on the true bias
(an oracle no pipeline option uses). It separates what the mined images allow from what the injection
loses. `--mine-k K` re-mines K per class and re-inverts the contents in the scratch folder first (more
contents, more bias values per label).

    python benchmarks/balanced_pairing.py                                  # the pipeline's root
    python benchmarks/balanced_pairing.py --root R --params R/params.yaml --mine-k 6
    python benchmarks/balanced_pairing.py --bound-only                     # no generation

Prints one row per pairing, the ratio balanced / random; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from diffinject.config import load_params  # noqa: E402
from diffinject.diffusion.injection import make_pairs  # noqa: E402
from diffinject.diffusion.injection_params import PAIRINGS  # noqa: E402
from diffinject.diffusion.synthetic_quality import bias_deviation  # noqa: E402

POOL_KEYS = ("bias_deviation", "bias_conflict_fraction", "label_fidelity", "faithful_bias_conflict_fraction",
             "frechet_distance")
SETTING_KEYS = ("operator", "t_max", "h_gamma", "label_from")


def transfer_bound(content_targets: np.ndarray, style_targets: np.ndarray, content_proxy: np.ndarray,
                   style_proxy: np.ndarray, content_bias: np.ndarray, style_bias: np.ndarray, label_from: str,
                   n: int, seeds: int = 5) -> dict[str, float]:
    """The pool's bias deviation if each image carried its bias-lending image's true bias exactly (the
    content's with the label from the style, the style's otherwise), mean over `seeds` pair draws."""
    lender_bias = content_bias if label_from == "style" else style_bias
    n_values = int(max(content_bias.max(), style_bias.max(), content_targets.max(), style_targets.max())) + 1
    out = {}
    for name, proxies, pairing in (("random", (content_proxy, style_proxy), "random"),
                                   ("balanced", (content_proxy, style_proxy), "balanced"),
                                   ("balanced_on_true_bias", (content_bias, style_bias), "balanced")):
        deviations = []
        for seed in range(seeds):
            pairs = make_pairs(content_targets, style_targets, n, seed, label_from, *proxies, pairing)
            labels = content_targets[pairs.content] if label_from == "content" else style_targets[pairs.style]
            lender = pairs.content if label_from == "style" else pairs.style
            deviations.append(bias_deviation(labels, lender_bias[lender], n_values))
        out[name] = float(np.mean(deviations))
    return out


def link_inputs(root: Path, scratch: Path) -> None:
    """A scratch root whose inputs are the root's (links) and whose metrics are a copy."""
    (scratch / "data").mkdir(parents=True)
    (scratch / "models").mkdir()
    for name in ("prepared", "inversions", "palette"):
        if (root / "data" / name).exists():
            os.symlink((root / "data" / name).resolve(), scratch / "data" / name)
    for model in (root / "models").iterdir():
        os.symlink(model.resolve(), scratch / "models" / model.name)
    shutil.copytree(root / "metrics", scratch / "metrics", ignore=shutil.ignore_patterns("plots"))


def remine(params: dict, scratch: Path, k) -> dict:
    """mine with k per class and invert again, in the scratch root (its own conflicts and inversions)."""
    from diffinject.stages import invert, mine

    os.unlink(scratch / "data" / "inversions")
    mined = mine.run(dict(params, mine=dict(params["mine"], k=k)), scratch)
    invert.run(params, scratch)
    return {key: mined[key] for key in ("n_mined", "precision", "recall") if key in mined}


def bound_of(root: Path, n: int, label_from: str) -> dict[str, float]:
    from diffinject.data.manifest import read_manifest
    from diffinject.diffusion.inversion_store import CONTENT, STYLE, load_inverted
    from diffinject.stages.paths import INVERSIONS, PREPARED

    contents, styles = load_inverted(root / INVERSIONS / CONTENT), load_inverted(root / INVERSIONS / STYLE)
    bias = read_manifest(root / PREPARED).set_index("id")["bias"]
    content_bias = bias.loc[contents.ids.numpy()].to_numpy().astype(np.int64)
    style_bias = bias.loc[styles.ids.numpy()].to_numpy().astype(np.int64)
    return transfer_bound(contents.targets.numpy(), styles.targets.numpy(), contents.proxy.numpy(), styles.proxy.numpy(),
                          content_bias, style_bias, label_from, n) | {
        "n_contents": len(contents.ids), "content_bias_values": int(len(np.unique(content_bias))),
        "proxy_reads_bias": float((contents.proxy.numpy() == content_bias).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="a root the pipeline ran in up to inject")
    parser.add_argument("--params", type=Path, help="default: ROOT/params.yaml")
    parser.add_argument("--mine-k", help="re-mine this many per class (an int or errors) before comparing")
    parser.add_argument("--bound-only", action="store_true", help="only the perfect-transfer bound: no generation")
    args = parser.parse_args(argv)
    from diffinject.stages import inject

    root = args.root.resolve()
    params = load_params(args.params or root / "params.yaml")
    params.setdefault("trainer", {})["enable_progress_bar"] = False
    chosen = json.loads((root / "metrics" / "inject.json").read_text())
    setting = {key: chosen[key] for key in SETTING_KEYS} | {"site": chosen["site"].split("+"), "auto": False}
    setting |= {key: chosen[key] for key in ("guidance_scale", "window_guidance_scale") if chosen.get(key) is not None}
    n_pool = int(chosen["n_samples"])
    result: dict = {"setting": setting}
    with tempfile.TemporaryDirectory(prefix="pairing-") as tmp:
        base = Path(tmp) / "inputs"
        link_inputs(root, base)
        if args.mine_k is not None:
            result["mine"] = remine(params, base, json.loads(args.mine_k) if args.mine_k.isdigit() else args.mine_k)
        result["bound"] = bound_of(base, n_pool, setting["label_from"])
        print("perfect-transfer bound:", json.dumps(result["bound"]), flush=True)
        if not args.bound_only:
            for pairing in PAIRINGS:
                scratch = Path(tmp) / pairing
                link_inputs(base, scratch)
                run = dict(params, injection=dict(params["injection"], **setting, pairing=pairing))
                pool = inject.run(run, scratch)
                result[pairing] = {key: pool[key] for key in POOL_KEYS if key in pool}
                print(pairing, json.dumps(result[pairing]), flush=True)
            result["balanced_vs_random"] = {key: result["balanced"][key] / result["random"][key]
                                            for key in POOL_KEYS if result["random"].get(key)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
