"""Learning-rate schedules: values at chosen updates, and the rates a real run uses and logs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import small_config
from tiekd.training.schedule import lr_at, make_scheduler

PEAK, INIT, MIN = 1e-3, 1e-5, 1e-4


@pytest.mark.parametrize("schedule", ["inverse-sqrt", "linear", "cosine"])
def test_linear_warmup_from_init_to_peak(schedule):
    for step, expected in ((0, INIT), (1, INIT + (PEAK - INIT) / 4), (2, (INIT + PEAK) / 2), (4, PEAK)):
        assert lr_at(step, PEAK, 4, INIT, schedule, total=14, min_lr=MIN) == pytest.approx(expected, rel=1e-12)


def test_inverse_sqrt_decay():
    assert lr_at(16, PEAK, 4, INIT) == pytest.approx(PEAK / 2, rel=1e-12)  # sqrt(4 / 16)
    assert lr_at(100, PEAK, 4, INIT) == pytest.approx(PEAK / 5, rel=1e-12)
    assert lr_at(400, PEAK, 4, INIT, total=10) == pytest.approx(PEAK / 10, rel=1e-12)  # never ends
    # no warm-up: the peak at the first update, then the same decay from update 1
    assert lr_at(0, PEAK, 0, INIT) == PEAK and lr_at(1, PEAK, 0, INIT) == PEAK
    assert lr_at(4, PEAK, 0, INIT) == pytest.approx(PEAK / 2, rel=1e-12)


def test_linear_decay_to_min_at_the_last_update():
    # warm-up 4, last update 14: 10 updates of decay
    steps = ((4, PEAK), (9, MIN + (PEAK - MIN) / 2), (12, MIN + (PEAK - MIN) * 0.2), (14, MIN), (20, MIN))
    for step, expected in steps:
        assert lr_at(step, PEAK, 4, INIT, "linear", total=14, min_lr=MIN) == pytest.approx(expected, rel=1e-12)


def test_cosine_decay_to_min_at_the_last_update():
    quarter = MIN + (PEAK - MIN) * (1 + math.sqrt(0.5)) / 2  # cos(pi / 4)
    for step, expected in ((4, PEAK), (6, quarter), (9, (PEAK + MIN) / 2), (14, MIN), (30, MIN)):
        assert lr_at(step, PEAK, 4, INIT, "cosine", total=12 if step == 6 else 14, min_lr=MIN) == \
            pytest.approx(expected, rel=1e-12)


def test_decaying_schedules_refuse_a_run_no_longer_than_the_warmup():
    with pytest.raises(ValueError, match="above the warm-up"):
        lr_at(5, PEAK, 4, INIT, "cosine", total=4)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(5, PEAK, 4, INIT, "step", total=10)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    with pytest.raises(ValueError, match="above the warm-up"):  # at once, not when the warm-up ends
        make_scheduler(optimizer, PEAK, 4, INIT, "linear", total=3)


@pytest.mark.parametrize("schedule", ["inverse-sqrt", "linear", "cosine"])
def test_scheduler_sets_the_optimizer_to_lr_at_each_update(schedule):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    scheduler = make_scheduler(optimizer, PEAK, 4, INIT, schedule, total=14, min_lr=MIN)
    for step in range(20):
        expected = lr_at(step, PEAK, 4, INIT, schedule, total=14, min_lr=MIN)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12), step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("schedule", ["inverse-sqrt", "linear", "cosine"])
def test_a_run_updates_with_and_logs_the_scheduled_rates(prepared, tmp_path, schedule):
    """Update s (1-based) uses lr_at(s - 1); the `lr` logged at step s is the rate after s updates,
    lr_at(s), the one the next update uses (fairseq's convention)."""
    from tiekd.training.trainer import Trainer

    config = small_config(prepared, tmp_path / "run", max_updates=10, warmup_updates=3, lr=2e-3,
                          warmup_init_lr=1e-5, min_lr=2e-4, lr_schedule=schedule, valid_every=100, valid_bleu=False)
    trainer = Trainer(config, quiet=True)
    used = []  # the rate of each optimizer step, read just before it
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: used.append(optimizer.param_groups[0]["lr"]))
    trainer.fit()
    expected = [lr_at(s, 2e-3, 3, 1e-5, schedule, total=10, min_lr=2e-4) for s in range(11)]
    assert used == pytest.approx(expected[:10], rel=1e-12)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["lr"]) for r in records if r["kind"] == "train"]
    assert logged == [(s, pytest.approx(expected[s], rel=1e-12)) for s in range(1, 11)]
    if schedule != "inverse-sqrt":
        assert logged[-1][1] == pytest.approx(2e-4, rel=1e-12)  # the run ends at min_lr
