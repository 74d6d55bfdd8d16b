"""Engine pieces by value: batch plan, learning-rate schedule, checkpoint bookkeeping, loss."""

from __future__ import annotations

import math

import pytest
import torch

from affinage.config import TrainConfig
from affinage.engine.batching import BatchPlan
from affinage.engine.checkpoint import list_checkpoints, prune_checkpoints
from affinage.engine.optim import build_optimizer, build_scheduler, lr_factor
from affinage.errors import ConfigError
from affinage.losses.sft import token_cross_entropy_sum, trainable_positions


def test_plan_covers_each_example_once_per_epoch():
    plan = BatchPlan(num_examples=10, batch_size=2, grad_accum=1, world_size=1, seed=3)
    assert plan.steps_per_epoch == 5
    seen = [i for step in range(5) for i in plan.global_batch(step)]
    assert sorted(seen) == list(range(10))
    # the next epoch is a different permutation of the same examples
    nxt = [i for step in range(5, 10) for i in plan.global_batch(step)]
    assert sorted(nxt) == list(range(10)) and nxt != seen


def test_plan_splits_global_batch_identically_across_layouts():
    """1 process x 4 accumulation x batch 1 == 1 process x batch 4 == 2 processes x batch 2."""
    a = BatchPlan(12, batch_size=1, grad_accum=4, world_size=1, seed=0)
    b = BatchPlan(12, batch_size=4, grad_accum=1, world_size=1, seed=0)
    c = BatchPlan(12, batch_size=2, grad_accum=1, world_size=2, seed=0)
    for step in range(3):
        assert a.global_batch(step) == b.global_batch(step) == c.global_batch(step)
        flat_a = [i for mb in a.micro_batches(step, 0) for i in mb]
        flat_c = [i for r in (0, 1) for mb in c.micro_batches(step, r) for i in mb]
        assert sorted(flat_a) == sorted(flat_c) == sorted(b.global_batch(step))


def test_plan_refuses_dataset_smaller_than_one_batch():
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        BatchPlan(3, batch_size=2, grad_accum=2, world_size=1, seed=0)


def test_total_steps_from_epochs_or_max_steps():
    plan = BatchPlan(10, batch_size=2, grad_accum=1, world_size=1, seed=0)
    assert plan.total_steps(1.5, None) == math.ceil(1.5 * 5)
    assert plan.total_steps(3, 4) == 4


def test_lr_schedule_values():
    # warmup 2 of 10 steps: factors 1/3, 2/3, then cosine from 1 to min_ratio at the last step
    f = [lr_factor(s, total_steps=10, warmup=2, kind="cosine", min_ratio=0.1) for s in range(10)]
    assert f[0] == pytest.approx(1 / 3) and f[1] == pytest.approx(2 / 3)
    assert f[2] == pytest.approx(1.0)
    assert f[9] == pytest.approx(0.1)
    # step 5: decay progress (5 - 2) / (10 - 2 - 1) = 3/7, cosine term (1 + cos(3pi/7)) / 2
    assert lr_factor(5, total_steps=10, warmup=2, kind="cosine", min_ratio=0.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 3 / 7))
    )
    lin = [lr_factor(s, total_steps=5, warmup=0, kind="linear", min_ratio=0.0) for s in range(5)]
    assert lin == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert all(lr_factor(s, total_steps=5, warmup=0, kind="constant", min_ratio=0) == 1.0 for s in range(5))


def test_scheduler_drives_optimizer_lr_and_decay_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    cfg = TrainConfig(lr=0.1, weight_decay=0.01, scheduler="linear", warmup_steps=0)
    opt = build_optimizer(model, cfg)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.01]  # 1-D tensors (biases, norm weights) are not decayed
    assert sum(len(g["params"]) for g in opt.param_groups if g["weight_decay"] == 0.0) == 3
    sched = build_scheduler(opt, cfg, total_steps=3)
    lrs = []
    for _ in range(3):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.05, 0.0])


def test_token_cross_entropy_sum_by_value():
    # Two targets; logits chosen so p(target) is known: uniform over 4 -> -log(1/4) each,
    # the ignored third position must not count.
    logits = torch.zeros(1, 3, 4)
    targets = torch.tensor([[1, 3, -100]])
    loss_sum, count = token_cross_entropy_sum(logits, targets)
    assert count.item() == 2
    assert loss_sum.item() == pytest.approx(2 * math.log(4))
    # A confident correct logit lowers the loss by exactly log-softmax.
    logits[0, 0, 1] = 2.0
    expected = -(2.0 - math.log(math.exp(2.0) + 3)) + math.log(4)
    assert token_cross_entropy_sum(logits, targets)[0].item() == pytest.approx(expected)


def test_trainable_positions_are_union_of_shifted_labels():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, -100, -100]])
    # position t is kept when label t+1 is trained in some row: row 0 trains labels 2 and 3
    # (positions 1, 2), row 1 trains label 1 (position 0).
    assert trainable_positions(labels).tolist() == [0, 1, 2]


def test_prune_keeps_last_k(tmp_path):
    for step in (1, 2, 10, 3):
        d = tmp_path / f"step-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text("{}")
    (tmp_path / ".step-11.tmp").mkdir()  # an interrupted save is never listed
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2, 3, 10]
    prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 10]
