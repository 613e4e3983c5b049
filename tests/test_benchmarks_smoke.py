"""A smoke run of every benchmark in benchmarks/, so that none rots again when src/ moves a name.

Each benchmark runs as its user runs it — `python benchmarks/NAME.py --quick ...` in a subprocess from
the repository root — at the smallest size its flags allow (`--smoke` where `--quick` alone takes
minutes; `--set section.key=value` to shorten the stages it runs), on inputs built here in temporary
folders (a synthetic IDX folder, the session's tiny DDPM, a tiny repository a search can run on), never
on the workspace's DVC outputs. The test checks the exit code, that the last stdout line is one JSON object
with numeric figures, and the relation the benchmark exists to report: a ratio is the ratio of the
two figures it prints, a summary is the mean of its rows, a correlation is the one its own rows give.
The figures themselves are meaningless at this size: the benchmarks' own docstrings say how to run them
for real.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import make_root

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
TIMEOUT_S = 600  # one benchmark's smoke run; each takes well under a minute on 2 cores

# Every classifier the benchmarks train, for one epoch (the AE baseline needs pretrain_epochs < epochs).
ONE_EPOCH = [f"{section}.epochs=1" for section in (
    "biased", "vanilla", "lff", "disent", "lc", "upsample", "debiased", "debiased_lff", "debiased_disent",
    "debiased_lc", "judge")] + ["ae.epochs=1", "ae.pretrain_epochs=0", "ae.rec_epochs=0"]
# A pool of 32 images from 4-step inversions of 20 contents and 20 styles, a pilot of one setting (both
# label rules) on 16 images, small probes and palette sets, a two-step fair fine-tuning.
SMALL_INJECTION = [
    "mine.k=2", "injection.n_inv_step=4", "injection.n_gen_step=4", "injection.styles_per_class=2",
    "injection.n_samples_ratio=null", "injection.n_samples=32", "injection.pilot_size=16",
    'injection.pilot_grid=["operator=channel_stats,site=up0+up1,t_max=null,h_gamma=1.0"]',
    "probe.n_images=40", "palette.max_images=50",
    "fair.steps=2", "fair.batch_size=8", "fair.grad_steps=2", "fair.eval_size=16", "fair.assignment_draws=2",
]
SMALL = ONE_EPOCH + SMALL_INJECTION


def with_set(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def numbers(value) -> list[float]:
    """Every int or float (not bool) anywhere in a JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


def run_benchmark(name: str, *args: str, tmp_path: Path, env: dict[str, str] | None = None) -> dict:
    """Run benchmarks/<name>.py with `args` from the repository root; its last stdout line, parsed."""
    script = BENCHMARKS / f"{name}.py"
    assert script.is_file(), script
    scratch = tmp_path / "tmp"  # the benchmarks' tempfile folders, so nothing is left in /tmp on a failure
    scratch.mkdir(exist_ok=True)
    run_env = dict(os.environ, TMPDIR=str(scratch), DVC_NO_ANALYTICS="1", PYTHONHASHSEED="0",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
                   # MLflow's store is DVC_ROOT/mlruns (tracking.store): the test's, never the repository's
                   DVC_ROOT=str(tmp_path))
    run_env.pop("MLFLOW_TRACKING_URI", None)
    run_env.pop("DVC_EXP_NAME", None)
    run_env.update(env or {})
    proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=run_env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"{name} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                                  f"\n--- stderr\n{proc.stderr[-5000:]}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{name}: no stdout"
    result = json.loads(lines[-1])
    assert isinstance(result, dict), f"{name}: the last line is not a JSON object: {lines[-1][:200]}"
    assert numbers(result), f"{name}: no numeric figure in {result}"
    return result


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def write_idx_folder(dest: Path, n_train: int = 1000, n_test: int = 200) -> Path:
    """An IDX folder like Fashion-MNIST's (train-/t10k- images and labels, gzipped): a bright block per
    image at a class-dependent place, labels 0..9 in turn (balanced, as validate expects)."""
    rng = np.random.default_rng(0)
    dest.mkdir(parents=True)
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, label in enumerate(labels):
            top = 4 + 2 * int(label)
            images[i, top:top + 6, 6:22] = rng.integers(120, 256, (6, 16))
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
            (dest / f"{part}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes(), 1))
    return dest


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    return write_idx_folder(tmp_path_factory.mktemp("idx") / "fashion")


@pytest.fixture(scope="module")
def ddpm_dir(tiny_ddpm, tmp_path_factory) -> Path:
    """The session's tiny DDPM as a models/diffusion folder (unet/ + scheduler/)."""
    from diffinject.diffusion.model import save_diffusion

    unet, scheduler = tiny_ddpm
    out = tmp_path_factory.mktemp("ddpm") / "diffusion"
    save_diffusion(unet, scheduler, out)
    return out


def test_every_benchmark_has_a_smoke_test():
    """A benchmark added to benchmarks/ without a smoke test here fails this test."""
    scripts = {p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    tested = {name[len("test_"):] for name in globals() if name.startswith("test_") and name[len("test_"):] in scripts}
    assert scripts - tested == set()


def test_prepare_idx(tmp_path, idx_folder):
    result = run_benchmark("prepare_idx", "--quick", "--path", str(idx_folder), tmp_path=tmp_path)
    assert result["n_images"] == 1200
    assert positive(result["prepare_vs_bare_loop_time_ratio"]) and positive(result["validate_seconds"])


def test_classifier_training(tmp_path, idx_folder):
    result = run_benchmark("classifier_training", "--smoke", "--path", str(idx_folder), tmp_path=tmp_path)
    assert positive(result["lightning_over_plain_time_ratio"]) and positive(result["fashion_lightning_over_plain_time_ratio"])
    assert positive(result["train_biased_peak_rss_mib"])


def test_step_cost_vs_n(tmp_path):
    result = run_benchmark("step_cost_vs_n", "--smoke", tmp_path=tmp_path)
    for trainer in ("vanilla", "lff", "disent", "lc"):
        row = result[trainer]
        assert positive(row["ms_per_step_small"]) and positive(row["ms_per_step_large"])
        # the figure is the ratio of the two step costs it prints (each rounded to 0.01 ms)
        assert row["large_over_small"] == pytest.approx(row["ms_per_step_large"] / row["ms_per_step_small"], rel=0.05, abs=0.02)


def test_injection_speed(tmp_path, ddpm_dir):
    result = run_benchmark("injection_speed", "--smoke", "--model", str(ddpm_dir), tmp_path=tmp_path)
    assert result["rounds"] == 1 and positive(result["peak_rss_mib_inject"])
    # one round: each speed-up is the ratio of the two image rates it prints
    for ratio, faster, slower in (("speedup", "ours_images_per_s", "reference_images_per_s"),
                                  ("speedup_fp32", "ours_fp32_images_per_s", "reference_images_per_s"),
                                  ("shared_encoder_speedup", "ours_images_per_s", "ours_unshared_encoder_images_per_s")):
        assert result[ratio] == pytest.approx(result[faster] / result[slower], rel=0.02, abs=0.01), ratio


def test_generator_compare(tmp_path, ddpm_dir):
    result = run_benchmark("generator_compare", "--quick", "--diffusion", str(ddpm_dir), str(ddpm_dir),
                           "--n-images", "16", *with_set(SMALL), tmp_path=tmp_path)
    first, second = result["rows"]
    assert 0 <= first["recon_judge_acc"] <= 1 and first["recon_mse"] == second["recon_mse"]  # the same DDPM twice


def test_pilot_proxy(tmp_path, ddpm_dir):
    from scipy.stats import spearmanr

    result = run_benchmark("pilot_proxy", "--quick", "--diffusion", str(ddpm_dir), *with_set(SMALL), tmp_path=tmp_path)
    rows = result["rows"]
    assert result["n_candidates"] == len(rows) == 2  # one setting under both label rules
    assert all(0 <= row["valid_acc"] <= 1 for row in rows)
    # what it reports is what its rows say: the rank correlation of score and valid accuracy (nan when
    # either is constant), the chosen candidate (the pilot's winner) and the best one on valid
    rho = float(spearmanr([r["score"] for r in rows], [r["valid_acc"] for r in rows]).statistic)
    assert (math.isnan(rho) and math.isnan(result["spearman"])) or result["spearman"] == pytest.approx(rho, abs=1e-4)
    assert [r["name"] for r in rows if r["winner"]] == [result["chosen"]]
    assert result["best_valid"] == max(r["valid_acc"] for r in rows)


def test_fair_generator(tmp_path, ddpm_dir):
    result = run_benchmark("fair_generator", "--quick", "--diffusion", str(ddpm_dir), *with_set(SMALL), tmp_path=tmp_path)
    (row,) = result["rows"]
    assert positive(row["fair_seconds"]) and 0 <= row["fair_debiased_test_acc"] <= 1
    # one seed: each mean is its row's figure, and each fair / base ratio the ratio of those means
    for key, stat in result["means"].items():
        assert stat["mean"] == pytest.approx(row[key], abs=1e-4) and stat["std"] == 0
    assert result["fair_over_base"]
    for key, ratio in result["fair_over_base"].items():
        assert ratio == pytest.approx(result["means"][f"fair_{key}"]["mean"] / result["means"][f"base_{key}"]["mean"], abs=2e-3)


def test_seeds_table(tmp_path):
    result = run_benchmark("seeds_table", "--seeds", "0", *with_set(ONE_EPOCH + ["palette.max_images=50"]),
                           "--plot", str(tmp_path / "chart.png"), tmp_path=tmp_path)
    assert 0 <= result["summary"]["lff_test_acc"]["mean"] <= 1
    (row,) = result["rows"]  # one seed: the summary is that row (mean), with no spread
    for key, stat in result["summary"].items():
        assert stat["mean"] == pytest.approx(row[key]) and stat["std"] == 0, key
    assert (tmp_path / "chart.png").is_file() and result["mlflow_run_id"]
    assert (tmp_path / "mlruns").is_dir()  # logged to the test's store, not the repository's


@pytest.fixture
def searchable_repo(tmp_path, prepared_mnist, ddpm_dir) -> Path:
    """What a search trial reads from a repository after `dvc repro inject`, at tiny params: data/prepared
    (a link), models/diffusion (a link to the tiny DDPM), models/biased, data/conflicts.csv,
    data/inversions, and its params.yaml (search.model set: no metrics/eval.json needed)."""
    from diffinject.config import load_params
    from diffinject.stages import invert, mine, train_biased
    from diffinject.tracking.search import overlay

    overrides = SMALL + ["trainer.enable_progress_bar=false", "search.model=debiased"]
    params = overlay(load_params(REPO / "params.yaml"),
                     {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in overrides)})
    root = make_root(tmp_path, prepared_mnist, "repo")
    (root / "models").mkdir()
    (root / "models" / "diffusion").symlink_to(ddpm_dir)
    for stage in (train_biased, mine, invert):
        stage.run(params, root)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_search_trial_cost(tmp_path, searchable_repo):
    result = run_benchmark("search_trial_cost", "--repo", str(searchable_repo), tmp_path=tmp_path)
    assert positive(result["ratio_cached_over_reinvert"])
    assert all(positive(s) for s in result["seconds"]["invert_only"])


def test_balanced_pairing(tmp_path, searchable_repo):
    """On a root after a hand-chosen inject (judges trained): the two pools' ratios are the ratios of the
    figures printed, and the bound is what `transfer_bound` gives on the root's own inversions."""
    from diffinject.config import load_params
    from diffinject.stages import inject, prepare_palette, train_judge

    params = load_params(searchable_repo / "params.yaml")
    params["injection"].update(auto=False, label_from="style")
    for stage in (prepare_palette, train_judge, inject):
        stage.run(params, searchable_repo)
    result = run_benchmark("balanced_pairing", "--root", str(searchable_repo), tmp_path=tmp_path)
    assert result["setting"]["auto"] is False and result["random"] and result["balanced"]
    assert result["balanced_vs_random"]
    for key, ratio in result["balanced_vs_random"].items():
        assert ratio == pytest.approx(result["balanced"][key] / result["random"][key]), key
    assert 0 <= result["bound"]["balanced_on_true_bias"] <= 1 and result["bound"]["n_contents"] > 0


def test_the_transfer_bound_is_zero_when_balancing_can_be_exact():
    """Planted: 20 contents whose proxy is their true bias, two of every value, labels from the style.
    Balanced pairing can give every label each of its 9 conflicting values equally: its bound is ~0,
    where random pairing's is not; a proxy that reads the bias only half the time costs balance."""
    sys.path.insert(0, str(BENCHMARKS))
    from balanced_pairing import transfer_bound

    content_bias = np.repeat(np.arange(10), 2)
    content_targets = np.roll(content_bias, 7)  # conflicts: their class is not their bias
    style_targets = np.repeat(np.arange(10), 3)
    exact = transfer_bound(content_targets, style_targets, content_bias, style_targets, content_bias, style_targets,
                           "style", n=900)
    assert exact["balanced"] == exact["balanced_on_true_bias"] < 0.005 < exact["random"]
    noisy = content_bias.copy()
    noisy[::2] = (noisy[::2] + 3) % 10
    half = transfer_bound(content_targets, style_targets, noisy, style_targets, content_bias, style_targets, "style", n=900)
    assert half["balanced_on_true_bias"] == exact["balanced"] < half["balanced"]


def test_tuned_table(tmp_path):
    """Every row gets the same trials; the tuned setting retrained at the tuning root's seed gives the
    search's best valid accuracy again; a seed retrained twice gives the same numbers."""
    result = run_benchmark("tuned_table", "--quick", "--set", "biased.epochs=1", tmp_path=tmp_path)
    assert result["reproduced"] is True and set(result["table"]) == {"vanilla", "lc"}
    for model, row in result["table"].items():
        assert row["trials"] == result["trials_per_row"] == 2
        assert set(row["tuned_params"]) >= {f"{model}.lr"}
        seed0 = {r["variant"]: r for r in result["rows"] if r["model"] == model and r["seed"] == 0}
        assert seed0["tuned"]["valid"] == row["search_best_valid"]  # the tuning root is seed 0's


def test_tracking_overhead(tmp_path):
    """Its full run is a `dvc repro` of the whole pipeline (23 stages, each a fresh process: minutes even at
    the smallest params); the smoke run reproduces `prepare` alone in the scratch clone, -S applied."""
    result = run_benchmark("tracking_overhead", "--target", "prepare", "-S", "data.conflict_pct=2.0", tmp_path=tmp_path)
    assert set(result["stage_commands_s"]) == {"prepare"} and positive(result["stage_commands_s"]["prepare"])
    assert positive(result["pipeline_wall_s"]) and result["register_warm_s"] is None
