"""The study's plots: optimisation history, intermediate values (the reported curves) and parameter
importances, as PNGs."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

from diffinject.fsutil import atomic_file

MIN_TRIALS_FOR_IMPORTANCE = 2  # fANOVA needs two complete trials


def save_plots(study: optuna.Study, out_dir: Path, n_complete: int) -> list[Path]:
    """Optimisation history, intermediate values (the reported curves) and, from two complete trials,
    parameter importances, as PNGs in `out_dir`."""
    # imported here: matplotlib costs an import only a finishing worker pays, and needs Agg set first
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    makers = {"history": ovm.plot_optimization_history, "intermediate_values": ovm.plot_intermediate_values}
    if n_complete >= MIN_TRIALS_FOR_IMPORTANCE:
        makers["importances"] = ovm.plot_param_importances
    else:
        print(f"search: no parameter importance plot ({n_complete} complete trial(s), needs {MIN_TRIALS_FOR_IMPORTANCE})")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, maker in makers.items():
            ax = maker(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            path = out_dir / f"{name}.png"
            with atomic_file(path) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths
