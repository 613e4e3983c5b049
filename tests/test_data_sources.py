"""IDX and folder sources: real layouts, the round trip, and every bad input the issue lists."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from diffinject import cli
from diffinject.data.idx import read_idx
from diffinject.data.manifest import COLUMNS, read_manifest
from diffinject.data.prepare import DataConfig, prepare
from diffinject.errors import DiffinjectError


def write_idx(path: Path, array: np.ndarray, magic_type: int = 0x08, gz: bool = False) -> None:
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def make_idx_folder(root: Path, n_train: int = 200, n_test: int = 50, gz: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 8:20, 10:18] = rng.integers(100, 256, (n, 12, 8))
        write_idx(root / f"{part}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(root / f"{part}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz=gz)
    return root


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", arr)
    write_idx(tmp_path / "b-idx3-ubyte.gz", arr, gz=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "b-idx3-ubyte.gz"), arr)


def test_idx_source_keeps_official_test_split(tmp_path):
    src = make_idx_folder(tmp_path / "idx")
    out = tmp_path / "out"
    out.mkdir()
    prepare(DataConfig(source="idx", path=str(src)), seed=0, out=out)
    m = read_manifest(out)
    counts = m["split"].value_counts().to_dict()
    assert counts["test"] == 50  # t10k, untouched
    assert counts["train"] + counts["valid"] == 200 and counts["valid"] == 20  # 0.1 / 0.9 of the rest
    assert set(m.loc[m["split"] == "test", "id"]) == set(range(200, 250))


def test_n_train_keeps_that_many_train_images_per_class_share(tmp_path):
    src = make_idx_folder(tmp_path / "idx", n_train=400)
    out = tmp_path / "out"
    out.mkdir()
    prepare(DataConfig(source="idx", path=str(src), n_train=200, conflict_pct=5.0), seed=0, out=out)
    m = read_manifest(out)
    counts = m["split"].value_counts().to_dict()
    assert counts == {"train": 200, "valid": 22, "test": 50}  # valid in the train split's proportion (200/360 of 40), test whole
    assert m.loc[m["split"] == "train", "target"].value_counts().tolist() == [20] * 10
    assert (m.loc[m["split"] == "train", "aligned"] == False).sum() == 10  # noqa: E712  5 % of what is kept
    again = tmp_path / "again"
    again.mkdir()
    prepare(DataConfig(source="idx", path=str(src), n_train=200, conflict_pct=5.0), seed=0, out=again)
    pd.testing.assert_frame_equal(m, read_manifest(again))


@pytest.mark.parametrize("n_train, match", [(5000, r"params 'data.n_train': got 5000, but the source has 360 train images"),
                                            (3, r"params 'data.n_train': got 3, expected >= 10")])
def test_a_bad_n_train_names_the_param(tmp_path, n_train, match):
    src = make_idx_folder(tmp_path / "idx", n_train=400)
    with pytest.raises(DiffinjectError, match=match):
        prepare(DataConfig(source="idx", path=str(src), n_train=n_train), seed=0, out=tmp_path)


def test_idx_source_plain_files(tmp_path):
    src = make_idx_folder(tmp_path / "idx", gz=False)
    out = tmp_path / "out"
    out.mkdir()
    prepare(DataConfig(source="idx", path=str(src)), seed=0, out=out)
    assert len(read_manifest(out)) == 250


def _core(m: pd.DataFrame) -> pd.DataFrame:
    return m[list(COLUMNS)].sort_values("id").reset_index(drop=True)


def test_roundtrip_through_folder_source(prepared_mnist, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    prepare(DataConfig(source="folder", path=str(prepared_mnist)), seed=0, out=out)
    a, b = read_manifest(prepared_mnist), read_manifest(out)
    pd.testing.assert_frame_equal(_core(a), _core(b))
    for rel in a["path"].iloc[::250]:
        assert (prepared_mnist / rel).read_bytes() == (out / rel).read_bytes()


def test_disent_release_layout_with_sibling_valid_test(prepared_mnist, tmp_path):
    """DisEnt's CMNIST release: cmnist/1pct/{align,conflict}/..., cmnist/1pct/valid/..., cmnist/test/...
    with ids that restart per folder."""
    m = read_manifest(prepared_mnist)
    release = tmp_path / "cmnist"
    for _, row in m.iterrows():
        group = "align" if row["aligned"] else "conflict"
        name = f"{row['id'] % 100}_{row['target']}_{row['bias']}.png"  # ids collide on purpose
        if row["split"] == "train":
            dest = release / "1pct" / group / str(row["target"]) / name
        elif row["split"] == "valid":
            dest = release / "1pct" / "valid" / group / str(row["target"]) / name
        else:
            dest = release / "test" / group / str(row["target"]) / name
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prepared_mnist / row["path"], dest)
    out = tmp_path / "out"
    out.mkdir()
    prepare(DataConfig(source="folder", path=str(release / "1pct")), seed=0, out=out)
    got = read_manifest(out)
    assert got["id"].is_unique
    assert set(got["split"]) == {"train", "valid", "test"}
    assert (got["aligned"] == (got["target"] == got["bias"])).all()


def test_imagefolder_layout_has_null_bias(tmp_path):
    src = tmp_path / "plain"
    for split in ("train", "val", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                p = src / split / cls / f"img{i}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 40, 3), 60 * i + 10, np.uint8)).save(p)
    out = tmp_path / "out"
    out.mkdir()
    summary = prepare(DataConfig(source="folder", path=str(src), layout="imagefolder", image_size=16), seed=0, out=out)
    m = read_manifest(out)
    assert summary.class_names == {0: "cat", 1: "dog"}
    assert m["bias"].isna().all() and m["aligned"].isna().all()
    assert m["split"].value_counts().to_dict() == {"train": 6, "valid": 6, "test": 6}
    with Image.open(out / m["path"].iloc[0]) as img:
        assert img.size == (16, 16) and img.format == "PNG"


# ---------------------------------------------------------------- bad input, through the CLI ----

def run_prepare(workdir: Path, monkeypatch, capsys, **data) -> tuple[int, str]:
    """Run `diffinject prepare` in `workdir` with the data params given; returns (exit code, stderr)."""
    params = {"seed": 0, "data": data}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(workdir)
    code = cli.main(["prepare", "--params", "params.yaml"])
    return code, capsys.readouterr().err


def assert_clean_failure(workdir: Path, err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    data = workdir / "data"
    assert not (data / "prepared").exists()
    assert not data.exists() or not any(p.name.startswith(".tmp-") for p in data.iterdir())


def test_bad_missing_source_path(tmp_path, monkeypatch, capsys):
    code, err = run_prepare(tmp_path, monkeypatch, capsys, source="idx", path=str(tmp_path / "nowhere"))
    assert code != 0
    assert_clean_failure(tmp_path, err, "data.path", "nowhere")


def test_bad_idx_magic(tmp_path, monkeypatch, capsys):
    src = make_idx_folder(tmp_path / "idx", gz=False)
    bad = src / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    code, err = run_prepare(tmp_path, monkeypatch, capsys, source="idx", path=str(src))
    assert code != 0
    assert_clean_failure(tmp_path, err, "train-images-idx3-ubyte", "magic")


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_bad_png(prepared_mnist, tmp_path, monkeypatch, capsys, damage):
    src = tmp_path / "src"
    shutil.copytree(prepared_mnist, src)
    victim = src / read_manifest(src)["path"].iloc[17]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello, not a png")
    code, err = run_prepare(tmp_path, monkeypatch, capsys, source="folder", path=str(src))
    assert code != 0
    assert_clean_failure(tmp_path, err, victim.name, "not a readable image")


def test_bad_file_name(prepared_mnist, tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    shutil.copytree(prepared_mnist, src)
    victim = src / read_manifest(src)["path"].iloc[3]
    victim.rename(victim.with_name("holiday_photo.png"))
    code, err = run_prepare(tmp_path, monkeypatch, capsys, source="folder", path=str(src))
    assert code != 0
    assert_clean_failure(tmp_path, err, "holiday_photo.png", "{id}_{target}_{bias}.png")


def test_bad_unknown_source(tmp_path, monkeypatch, capsys):
    code, err = run_prepare(tmp_path, monkeypatch, capsys, source="imagenet")
    assert code != 0
    assert_clean_failure(tmp_path, err, "data.source", "'imagenet'", "mnist5k")


@pytest.mark.parametrize("pct", [0, 100, -1, 250])
def test_bad_conflict_pct(tmp_path, monkeypatch, capsys, pct):
    code, err = run_prepare(tmp_path, monkeypatch, capsys, conflict_pct=pct)
    assert code != 0
    assert_clean_failure(tmp_path, err, "data.conflict_pct", "(0, 100)")


def test_failed_run_keeps_previous_output(prepared_mnist, tmp_path, monkeypatch, capsys):
    previous = tmp_path / "data" / "prepared"
    shutil.copytree(prepared_mnist, previous)
    code, err = run_prepare(tmp_path, monkeypatch, capsys, source="idx", path=str(tmp_path / "nowhere"))
    assert code != 0
    pd.testing.assert_frame_equal(read_manifest(previous), read_manifest(prepared_mnist))
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "data").iterdir())


def test_unknown_param_key_is_named(tmp_path, monkeypatch, capsys):
    code, err = run_prepare(tmp_path, monkeypatch, capsys, conflict_pc=1.0)
    assert code != 0
    assert_clean_failure(tmp_path, err, "data.conflict_pc", "unknown key")


def test_idx_missing_labels_file(tmp_path):
    src = make_idx_folder(tmp_path / "idx")
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DiffinjectError, match="t10k-labels"):
        prepare(DataConfig(source="idx", path=str(src)), seed=0, out=tmp_path)
