"""resumable_loader: the batch order of make_loader(shuffle=True, seed), from any batch on, across
epoch boundaries and a last partial batch (what an exact mid-epoch resume of the DDPM rests on)."""

from __future__ import annotations

import itertools

import pytest
import torch

from diffinject.data.loaders import make_loader
from diffinject.data.resumable import resumable_loader
from diffinject.data.tensors import ImageTensors


def _images(n: int) -> ImageTensors:
    return ImageTensors(images=torch.zeros(n, 1, 2, 2, dtype=torch.uint8), targets=torch.arange(n) % 3,
                        ids=torch.arange(n), source="test")


def _stream(loader, n_batches: int) -> list[list[int]]:
    """The rows of the first n_batches batches, re-iterating the loader epoch after epoch as Lightning does."""
    out: list[list[int]] = []
    while len(out) < n_batches:
        out.extend(batch[2].tolist() for batch in itertools.islice(iter(loader), n_batches - len(out)))
    return out


@pytest.mark.parametrize("n,batch_size", [(10, 3), (12, 4)])  # with and without a partial last batch
@pytest.mark.parametrize("start", [0, 1, 3, 4, 5, 9])
def test_starts_at_the_uninterrupted_runs_batch(n, batch_size, start):
    data = _images(n)
    whole = _stream(make_loader(data, batch_size, shuffle=True, seed=7), start + 8)
    resumed = _stream(resumable_loader(data, batch_size, seed=7, start_batch=start), 8)
    assert resumed == whole[start:]


def test_an_epoch_is_whole_for_lightning_even_when_resumed_mid_way():
    """len() stays an epoch's batch count: Lightning restores how far into the epoch it was."""
    loader = resumable_loader(_images(10), 3, seed=0, start_batch=2)
    assert len(loader) == 4
    assert len(list(loader)) == 2 and len(list(loader)) == 4


def test_orders_differ_by_seed():
    data = _images(50)
    assert _stream(resumable_loader(data, 5, seed=0), 3) != _stream(resumable_loader(data, 5, seed=1), 3)
