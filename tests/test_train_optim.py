"""Optimizer groups, learning-rate schedules and the deterministic data mixture."""

import math

import numpy as np
import pytest
import torch

from cwm.data.packed import PackedDataset, PackedWriter
from cwm.train.config import OptimSection, ScheduleSection
from cwm.train.data import MixtureSampler, make_batch, validation_batches
from cwm.train.optim import build_optimizer, build_scheduler, lr_multiplier


def test_weight_decay_on_matrices_only():
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.RMSNorm(4)
    )
    opt = build_optimizer(model, OptimSection(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2} and len(decay["params"]) == 2
    assert {p.ndim for p in no_decay["params"]} == {1} and len(
        no_decay["params"]
    ) == 4  # bias, 2 norm weights, norm bias


def test_cosine_warms_up_then_decays_to_the_floor():
    cfg = ScheduleSection(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    values = [lr_multiplier(s, 100, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))  # rising
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # falling
    assert values[-1] == pytest.approx(0.1)
    assert values[10 + 89 // 2] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))


def test_wsd_holds_then_decays_linearly_over_the_last_fraction():
    cfg = ScheduleSection(kind="wsd", warmup_steps=5, decay_fraction=0.2, min_lr_ratio=0.0)
    values = [lr_multiplier(s, 100, cfg) for s in range(100)]
    assert values[4] == 1.0 and values[79] == 1.0
    assert values[80] == pytest.approx(1 - 1 / 20) and values[99] == pytest.approx(0.0)
    assert np.allclose(np.diff(values[80:]), -1 / 20)


def test_scheduler_drives_the_optimizer_and_restores():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, OptimSection(lr=1.0))
    sched = build_scheduler(opt, 20, ScheduleSection(kind="cosine", warmup_steps=4))
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    again = build_scheduler(
        build_optimizer(model, OptimSection(lr=1.0)), 20, ScheduleSection(kind="cosine", warmup_steps=4)
    )
    again.load_state_dict(sched.state_dict())
    assert again.get_last_lr() == sched.get_last_lr()


def _dataset(path, rows, seq_len=6, offset=0):
    with PackedWriter(path, seq_len, 100) as w:
        for i in range(rows):
            w.add(np.arange(seq_len) + offset + i, np.zeros(seq_len), np.ones(seq_len))
    return PackedDataset(path)


def test_make_batch_masks_document_boundaries_and_loss_mask(tmp_path):
    with PackedWriter(tmp_path / "d", 6, 100) as w:
        w.add([1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0])
    b = make_batch([PackedDataset(tmp_path / "d")[0]])
    assert b.inputs.tolist() == [[1, 2, 3, 4, 5]]
    assert b.doc_ids.tolist() == [[0, 0, 0, 1, 1]]
    # targets 2..6: 2 has mask 0; 4 starts a new document; 6 has mask 0
    assert b.targets.tolist() == [[-100, 3, -100, 5, -100]]
    assert b.num_targets == 2


def test_mixture_is_deterministic_weighted_and_resumable(tmp_path):
    a, b = _dataset(tmp_path / "a", 10), _dataset(tmp_path / "b", 7, offset=50)
    sampler = MixtureSampler([a, b], [3.0, 1.0], seed=1)
    draws = [sampler.next_indices(8) for _ in range(50)]
    flat = [d for step in draws for d, _ in step]
    assert 0.7 < flat.count(0) / len(flat) < 0.8  # weights 3:1
    # each pass over a dataset visits every row once
    rows_a = [r for step in draws for d, r in step if d == 0]
    assert sorted(rows_a[:10]) == list(range(10)) and sorted(rows_a[10:20]) == list(range(10))
    assert rows_a[:10] != rows_a[10:20]  # a fresh order per pass

    replay = MixtureSampler([a, b], [3.0, 1.0], seed=1)
    for _ in range(20):
        replay.next_indices(8)
    resumed = MixtureSampler([a, b], [3.0, 1.0], seed=1)
    resumed.load_state_dict(replay.state_dict())
    assert [resumed.next_indices(8) for _ in range(30)] == draws[20:]
    assert MixtureSampler([a, b], [3.0, 1.0], seed=2).next_indices(8) != draws[0]


def test_ranks_split_one_global_batch(tmp_path):
    ds = _dataset(tmp_path / "a", 16)
    whole = MixtureSampler([ds], seed=0).next_batches(8, 2)
    halves = [MixtureSampler([ds], seed=0).next_batches(8, 2, rank=r, world=2) for r in range(2)]
    assert len(whole) == 4 and all(len(h) == 2 for h in halves)
    assert torch.equal(torch.cat([b.inputs for b in whole]), torch.cat([b.inputs for h in halves for b in h]))


def test_validation_batches_cover_in_order_and_split_by_rank(tmp_path):
    ds = _dataset(tmp_path / "v", 7)
    rows = [b.inputs[:, 0].tolist() for b in validation_batches(ds, 2, 10)]
    assert rows == [[0, 1], [2, 3], [4, 5], [6]]
    by_rank = [[b.inputs[:, 0].tolist() for b in validation_batches(ds, 2, 3, r, 2)] for r in range(2)]
    assert by_rank == [[[0, 1], [4, 5]], [[2, 3]]]
