"""The invert stage's library half: which style images are drawn, and batched DDIM inversion."""

from __future__ import annotations

import numpy as np
import torch

from diffinject.data.tensors import ImageTensors
from diffinject.diffusion.inversion import choose_styles, invert_rows
from diffinject.diffusion.model import to_model_range
from diffinject.diffusion.ddim import ddim_invert
from tests.conftest import tiny_unet


def test_styles_come_from_each_classes_easiest_fraction_seeded():
    targets = np.repeat([0, 1, 2], 10)
    losses = np.tile(np.arange(10, dtype=float), 3)  # within each class, rows 0..4 are the easiest half
    rows = choose_styles(losses, targets, per_class=3, easiest_fraction=0.5, seed=0)
    assert np.all(np.diff(rows) > 0) and len(rows) == 9
    for label in range(3):
        picked = rows[targets[rows] == label]
        assert len(picked) == 3 and np.all(losses[picked] < 5)
    assert np.array_equal(rows, choose_styles(losses, targets, 3, 0.5, seed=0))
    assert not np.array_equal(rows, choose_styles(losses, targets, 3, 0.5, seed=1))


def test_a_class_smaller_than_asked_gives_what_it_has():
    targets = np.array([0, 0, 0, 0, 1])
    rows = choose_styles(np.zeros(5), targets, per_class=3, easiest_fraction=0.5, seed=0)
    assert sorted(targets[rows].tolist()) == [0, 0, 1]  # half of 4 is 2; the lone class-1 image still counts


def test_batched_inversion_equals_one_batch_and_keeps_ids_targets_proxy():
    unet, scheduler = tiny_unet()
    torch.manual_seed(0)
    data = ImageTensors((torch.rand(7, 3, 28, 28) * 255).to(torch.uint8), torch.arange(7) % 3, torch.arange(100, 107), "t")
    rows = np.array([6, 0, 3, 4, 1])
    proxy = np.arange(7) * 10
    cpu = torch.device("cpu")
    with torch.no_grad():
        batched = invert_rows(unet, scheduler, data, rows, 5, True, 2, cpu, proxy)
        whole = ddim_invert(unet, scheduler, to_model_range(data.images[torch.as_tensor(rows)]), 5, keep_path=True)
        styles = invert_rows(unet, scheduler, data, rows, 5, False, 2, cpu)
    torch.testing.assert_close(batched.x_T, whole.x_T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.xs, whole.xs, atol=1e-5, rtol=1e-5)
    assert batched.xs.shape == (5, 5, 3, 28, 28) and np.array_equal(batched.timesteps, whole.timesteps)
    assert batched.ids.tolist() == [106, 100, 103, 104, 101] and batched.targets.tolist() == [0, 0, 0, 1, 1]
    assert batched.proxy.tolist() == [60, 0, 30, 40, 10]
    assert styles.xs is None and styles.timesteps is None and styles.proxy is None
