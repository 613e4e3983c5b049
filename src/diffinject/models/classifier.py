"""The one LightningModule that trains every classifier (vanilla CE, GCE-biased, debiased), and the
callback that keeps the epoch chosen on the validation split.

Batches are (images uint8 (B, C, H, W), targets (B,), index (B,)) from `data.tensors`; images become
floats in [0, 1] here, on the device, so the host only ever moves bytes.
"""

from __future__ import annotations

from typing import Any

import lightning
import numpy as np
import torch
from torch import nn

from diffinject.models.losses import DEFAULT_GCE_Q, per_sample_loss

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# uint8 pixel range, the divisor that maps images to [0, 1].
PIXEL_MAX = 255.0
# The metric model selection maximises: accuracy on the validation split (never the test split).
SELECT_METRIC = "valid/acc"
SELECT_MODES = ("best", "last")


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1]."""
    return images.float().div_(PIXEL_MAX)


class ClassifierModule(lightning.LightningModule):
    """A network trained with a per-sample loss (ce | gce) and Adam.

    `self.net` is the network that is selected, saved and evaluated; subclasses (LfF) may train more.

    Performance on CPU, where an MLP step is a few milliseconds and Lightning's per-step bookkeeping is
    a visible share of it (measured: docs/benchmarks.md, "Classifier training, Lightning vs a plain
    PyTorch loop"): metrics are summed over the epoch in the module and, at its end, stored as
    `{stage}/{name}` in `self.epoch_metrics` (what EpochSelector records); only `valid/acc` also goes
    through `self.log`, for the progress bar and any monitoring callback, because `self.log` moves its
    result object to the device on every call. Optimisation is manual (`_optimise`) for the same reason.
    """

    def __init__(self, net: nn.Module, loss: str = "ce", gce_q: float = DEFAULT_GCE_Q, lr: float = 1e-3,
                 weight_decay: float = 0.0):
        super().__init__()
        self.net = net
        self.loss_name = loss
        self.gce_q = gce_q
        self.lr = lr
        self.weight_decay = weight_decay
        self._sums: dict[str, dict[str, torch.Tensor]] = {}  # stage -> metric -> sum over the epoch's samples
        self._counts: dict[str, int] = {}  # stage -> samples seen this epoch
        self.epoch_metrics: dict[str, float] = {}  # "{stage}/{name}" -> mean over the last epoch of stage
        self.selector: EpochSelector | None = None  # set by the caller to keep the chosen epoch's weights
        # One optimizer, one step per batch, stepped in `_optimise`: Lightning's automatic loop wraps the
        # same three calls in a closure whose bookkeeping every step pays for.
        self.automatic_optimization = False

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets `_current_fx_name` (a str or None) around every hook it calls, ~32 times per
        # training step. nn.Module.__setattr__ first checks whether the value is a parameter, buffer or
        # submodule, which a str never is, so storing it directly is the same and skips those checks.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(to_unit_float(images))  # (B, num_classes)

    def _accumulate(self, stage: str, n: int, **sums: torch.Tensor) -> None:
        """Add the sums over a batch of n samples (Σ loss, number correct, ...) to the epoch's sums."""
        epoch = self._sums.setdefault(stage, {})
        for name, value in sums.items():
            epoch[name] = epoch[name] + value.detach() if name in epoch else value.detach().float()
        self._counts[stage] = self._counts.get(stage, 0) + n

    def _log_epoch(self, stage: str) -> None:
        """Log the epoch means of `stage`, exact over the whole split (sums reduced across devices)."""
        sums, n = self._sums.pop(stage, {}), self._counts.pop(stage, 0)
        if not sums:
            return
        names = sorted(sums)
        totals = torch.stack([sums[k] for k in names] + [sums[names[0]].new_tensor(float(n))])  # (M + 1,)
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        means = totals[:-1] / totals[-1]
        self.epoch_metrics.update({f"{stage}/{name}": value for name, value in zip(names, means.tolist())})
        if stage == "valid":
            # already reduced over devices; sync_dist only tells Lightning so (same value on every rank)
            self.log(SELECT_METRIC, means[names.index("acc")], prog_bar=True, sync_dist=self.trainer.world_size > 1)

    def _shared_step(self, batch: Batch, stage: str) -> torch.Tensor:
        images, targets, _ = batch
        logits = self(images)
        loss = per_sample_loss(self.loss_name, logits, targets, self.gce_q).mean()
        n = len(targets)
        self._accumulate(stage, n, loss=loss.detach() * n, acc=n_correct(logits, targets))
        return loss

    def _optimise(self, loss: torch.Tensor) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)  # precision plugin (AMP scaling) and DDP gradient sync apply here
        optimizer.step()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        self._optimise(loss)
        return loss.detach()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "valid")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).float()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        if self.selector is not None:
            self.selector.record(self.current_epoch + 1, self.epoch_metrics, self.net)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("valid")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def n_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Number of samples whose arg-max logit is the target (a 0-d tensor: no device sync)."""
    return (logits.detach().argmax(1) == targets).sum()


class EpochSelector:
    """Records per-epoch metrics and keeps a CPU copy of the network's weights at the chosen epoch:
    `best` = highest validation accuracy (first such epoch on ties), `last` = the final epoch.

    The module calls `record` at the end of every training epoch, once its train metrics are computed;
    the epoch's validation has run by then. It reads only train and valid metrics. Not a Lightning
    callback: Lightning calls every callback on every hook of every step, and this needs one call per
    epoch.
    """

    def __init__(self, select: str):
        if select not in SELECT_MODES:
            raise ValueError(f"select {select!r}: expected one of {SELECT_MODES}")
        self.select = select
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.best_score = float("-inf")
        self.state: dict[str, torch.Tensor] | None = None

    def record(self, epoch: int, metrics: dict[str, float], net: nn.Module) -> None:
        """Epoch `epoch` (1-based) ended with `metrics`; keep `net`'s weights if the epoch is chosen."""
        if SELECT_METRIC not in metrics:
            raise RuntimeError(f"model selection: {SELECT_METRIC} was never computed (does the module validate?)")
        row: dict[str, Any] = {"epoch": epoch, **dict(sorted(metrics.items()))}
        self.history.append(row)
        score = metrics[SELECT_METRIC]
        if self.select == "last" or score > self.best_score:
            self.best_score = score
            self.best_epoch = epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}



def predictor(net: torch.nn.Module, device: torch.device, batch_size: int = 1024):
    """uint8 images -> the network's predicted classes (numpy), in eval mode and without gradients."""
    @torch.no_grad()
    def predict(images: torch.Tensor) -> np.ndarray:
        return torch.cat([net(to_unit_float(images[i:i + batch_size].to(device))).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)]).numpy()
    return predict
