"""The probe stage's params (`probe.*`) and its pictures: the probes' accuracy per timestep as a CSV (dvc
plots) and one panel per view (the probes themselves: diffusion/probes.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from diffinject.diffusion.probes import BIAS_EVAL, VIEWS  # noqa: E402
from diffinject.errors import DiffinjectError  # noqa: E402
from diffinject.fsutil import atomic_file  # noqa: E402


@dataclass
class ProbeParams:
    n_images: int = 300  # train images the probes are fitted on, and valid images they are scored on (at most the split)
    batch_size: int = 128

    def check(self) -> None:
        if self.n_images < 20 or self.batch_size < 1:
            raise DiffinjectError("params 'probe.n_images' (>= 20) and 'probe.batch_size' (>= 1): out of range")



def save_curves(timesteps: np.ndarray, curves: dict, folder: Path) -> None:
    """folder/accuracy.csv and accuracy.png: one column (and line) per site × view × labelling, x = timestep."""
    table = pd.DataFrame({"t": timesteps})
    for site, views in curves.items():
        for view, by_label in views.items():
            for name, acc in by_label.items():
                table[f"{site}.{view}.{name}"] = np.round(acc, 4)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "accuracy.csv") as tmp:
        table.to_csv(tmp, index=False)
    fig, axes = plt.subplots(1, len(VIEWS), figsize=(6 * len(VIEWS), 5), sharey=True)
    styles = {"self_labeled": "-", "cls_labeled_oh": "--", "cls_labeled": ":", BIAS_EVAL: "-."}
    for ax, view in zip(np.atleast_1d(axes), VIEWS):
        for k, (site, views) in enumerate(curves.items()):
            for name, acc in views[view].items():
                if name == "cls_labeled":
                    continue  # its argmax twin says the same; the CSV keeps both
                label = {"self_labeled": "class", "cls_labeled_oh": "bias proxy", BIAS_EVAL: "true bias (eval)"}[name]
                ax.plot(timesteps, acc, styles[name], color=f"C{k}", label=f"{site}: {label}")
        ax.set(title=f"linear probes on the {view} view (valid split)", xlabel="timestep t", ylabel="accuracy")
        ax.grid(alpha=0.3)
    handles, names = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(curves), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    with atomic_file(folder / "accuracy.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
