"""Images read from a folder stay in that folder: a symbolic link (the image itself, or a folder on its
way) that resolves outside the folder is refused, so a pool manifest or a folder dataset cannot make a
stage read some other file of the machine. Links that stay inside the folder are followed as usual."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from diffinject.errors import DiffinjectError


def refuse_links_leaving(folder: Path, files: Iterable[Path]) -> None:
    """One-line DiffinjectError naming the first of `files` (paths under `folder`) that resolves
    outside `folder`. One lstat per file; each parent folder is resolved once."""
    inside = folder.resolve()
    parents: dict[Path, Path] = {}
    for file in files:
        parent = parents.get(file.parent)
        if parent is None:
            parent = parents[file.parent] = file.parent.resolve()
        is_link = file.is_symlink()
        target = file.resolve() if is_link else parent / file.name
        if not target.is_relative_to(inside):
            what = "is a link" if is_link else "lies behind a link"
            raise DiffinjectError(f"{file}: {what} that leaves its folder {folder} (it points to {target}); "
                                  "expected an image inside the folder")
