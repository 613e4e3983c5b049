"""Loaders over an in-memory image set (`data.tensors.ImageTensors`): batches are (images, targets,
index), `index` being the row in the set (LfF keeps a per-sample loss EMA by it), images still uint8."""

from __future__ import annotations

from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, Dataset

from diffinject.data.tensors import ImageTensors

# Validation batch = this × the training batch: inference holds no activations for backward.
EVAL_BATCH_FACTOR = 2


class IndexedImages(Dataset):
    """(image uint8 (C, H, W), target, index) per row; `__getitems__` fetches a whole batch with one
    tensor index instead of collating a list of samples."""

    def __init__(self, data: ImageTensors):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.data.images[i], self.data.targets[i], torch.tensor(i)

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(rows, dtype=torch.long)
        # index_select copies whole rows; advanced indexing (images[index]) goes through the generic
        # gather kernel, many times slower for a batch of uint8 images
        images = self.data.images.index_select(0, index)
        return images, self.data.targets.index_select(0, index), index  # (B, C, H, W), (B,), (B,)


def _batch_as_is(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The collate function for `IndexedImages.__getitems__`, which already returns a batch."""
    return batch


def make_loader(data: ImageTensors, batch_size: int, shuffle: bool, seed: int | None = None) -> DataLoader:
    """A DataLoader over in-memory images, in the main process (workers would only add IPC: the data
    is already decoded); shuffling draws from its own generator seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed) if shuffle and seed is not None else None
    return DataLoader(
        IndexedImages(data), batch_size=batch_size, shuffle=shuffle, generator=generator,
        collate_fn=_batch_as_is, num_workers=0,
    )


class ImageDataModule(lightning.LightningDataModule):
    """Train (shuffled, seeded) and validation (in order) loaders over in-memory image sets; validation
    batches are EVAL_BATCH_FACTOR times larger (no gradients to keep), so fewer steps per epoch."""

    def __init__(self, train: ImageTensors, valid: ImageTensors, batch_size: int, seed: int):
        super().__init__()
        self.train, self.valid = train, valid
        self.batch_size = batch_size
        self.eval_batch_size = EVAL_BATCH_FACTOR * batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.valid, self.eval_batch_size, shuffle=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # On the CPU the batch is already where it trains: skip Lightning's generic mover, which walks
        # the batch's structure and re-checks every tensor on every step.
        if isinstance(batch, tuple) and all(isinstance(t, torch.Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
