"""A shuffled loader that can start part-way through its stream of batches, for a training run resumed
from a checkpoint taken mid-epoch (the DDPM checkpoints by steps, not epochs).

Lightning restarts a plain loader at the beginning of its epoch (and a fresh generator at the first
permutation), so a resumed run would see other batches than the run it continues. `resumable_loader`
draws from its generator exactly what `make_loader(shuffle=True, seed)` draws — per epoch, one int64
for the iterator's base seed (torch's DataLoader does this), then what a RandomSampler draws in a
whole pass — and replays that for the epochs already trained, so batch G of a resumed run is batch G of the uninterrupted run.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

from diffinject.data.loaders import IndexedImages, _batch_as_is
from diffinject.data.tensors import ImageTensors


class _SkipFirst(Sampler[int]):
    """`sampler`'s indices, less the first `skip` of its first pass (a resumed epoch's trained part)."""

    def __init__(self, sampler: RandomSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        # a whole epoch: Lightning restores how far into the epoch the checkpoint was and counts on
        # from there, so the resumed epoch ends where the skipped pass does
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        for i, index in enumerate(self.sampler):
            if i >= skip:
                yield index


def resumable_loader(data: ImageTensors, batch_size: int, seed: int, start_batch: int = 0) -> DataLoader:
    """The batches of `make_loader(data, batch_size, shuffle=True, seed=seed)`, from the `start_batch`-th
    (counted over epochs, last partial batch included) on."""
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    dataset = IndexedImages(data)
    n = len(dataset)
    epochs_done, batches_in = divmod(start_batch, math.ceil(n / batch_size))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs_done):  # what each finished epoch drew: the iterator's base seed, its order
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # as DataLoader's iterator does
        for _ in RandomSampler(dataset, generator=generator):  # torch's own draws, to the end of an epoch
            pass
    sampler = _SkipFirst(RandomSampler(dataset, generator=generator), batches_in * batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator,
                      collate_fn=_batch_as_is, num_workers=0)
