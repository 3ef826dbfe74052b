"""common.TimeLimit with the cosine schedule (issue 16): a time-limited run ends its schedule with a
decayed learning rate instead of being cut mid-way; driven by a fake clock, epoch by epoch, as
Keras's fit would call the callbacks."""

import keras
import pytest

import common


def run_epochs(monkeypatch, minutes, stages, final, seconds_per_epoch, warmup=0):
    """Drive TimeLimit and each stage's learning-rate schedule through the stages (start, end, lr)
    as the training scripts do; returns (timer, [(epoch, learning rate)] of the epochs that ran)."""
    clock = {"now": 1000.0}
    monkeypatch.setattr(common.time, "time", lambda: clock["now"])
    timer = common.TimeLimit(minutes)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    timer.set_model(model)
    ran = []
    for start, end, lr in stages:
        model.stop_training = False
        callbacks = common.stage_callbacks("unused", None, timer, lr, start, end, final, warmup=warmup)
        schedule = next(c for c in callbacks if isinstance(c, keras.callbacks.LearningRateScheduler)).schedule
        for epoch in range(start, end):
            ran.append((epoch, schedule(epoch, None)))
            timer.on_epoch_begin(epoch)
            clock["now"] += seconds_per_epoch(epoch)
            timer.on_epoch_end(epoch)
            if model.stop_training:
                break
        if timer.hit:
            break
    return timer, ran


def test_the_last_stage_is_sized_to_the_time_left_and_its_schedule_decays(monkeypatch):
    # 10 minutes, 60 s an epoch, 30 epochs configured: 10 fit; without planning epoch 10 would run
    # at 79% of the peak rate and be the last
    timer, ran = run_epochs(monkeypatch, 10, [(0, 30, 1e-3)], 30, lambda e: 60.0)
    assert [e for e, _ in ran] == list(range(10))
    assert timer.hit and timer.planned == 10
    assert ran[0][1] == pytest.approx(1e-3)
    assert ran[-1][1] == pytest.approx(common.cosine(1e-3, 0, 10)(9)) and ran[-1][1] < 0.05 * 1e-3
    assert all(a[1] > b[1] for a, b in zip(ran, ran[1:]))  # decreasing all the way


def test_the_frozen_stage_keeps_its_epochs_and_fine_tuning_gets_the_rest(monkeypatch):
    # frozen stage 5 epochs at 20 s, then fine-tuning at 60 s an epoch, 15 minutes in all: 100 s +
    # 13 x 60 s = 880 s fit (13 of the configured 25 fine-tuning epochs)
    timer, ran = run_epochs(monkeypatch, 15, [(0, 5, 1e-3), (5, 30, 1e-4)], 30,
                            lambda e: 20.0 if e < 5 else 60.0)
    epochs = [e for e, _ in ran]
    assert epochs == list(range(18)) and timer.planned == 18 and timer.hit
    assert ran[5][1] == pytest.approx(1e-4) and ran[-1][1] < 0.1 * 1e-4


def test_without_a_limit_nothing_changes(monkeypatch):
    timer, ran = run_epochs(monkeypatch, None, [(0, 3, 1e-3), (3, 8, 1e-4)], 8, lambda e: 600.0)
    assert [e for e, _ in ran] == list(range(8)) and not timer.hit and timer.planned is None
    assert [lr for _, lr in ran] == [common.cosine(1e-3, 0, 3)(e) for e in range(3)] + \
        [common.cosine(1e-4, 3, 8)(e) for e in range(3, 8)]


def test_an_epoch_that_would_pass_the_limit_is_not_started(monkeypatch):
    # the pace doubles after 3 epochs: the plan made at the old pace is cut by the safety rule
    timer, ran = run_epochs(monkeypatch, 10, [(0, 30, 1e-3)], 30, lambda e: 60.0 if e < 3 else 120.0)
    assert timer.hit and sum(60.0 if e < 3 else 120.0 for e, _ in ran) <= 600


def test_the_recorded_plan_is_the_last_one_even_when_it_moves_by_one_epoch(monkeypatch):
    # the pace slows from 50 to 58 s an epoch: the plan moves from 12 to 11 epochs, too little to be
    # printed again, but epochs_planned must still be the plan the run ended by
    timer, ran = run_epochs(monkeypatch, 10, [(0, 30, 1e-3)], 30, lambda e: 50.0 if e < 6 else 58.0)
    assert timer.planned == len(ran) == timer.stage_end, (timer.planned, len(ran), timer.stage_end)


def test_warm_up_ramps_each_stage_then_follows_the_cosine(monkeypatch):
    # 2 warm-up epochs: each stage starts at 1/3, then 2/3 of its cosine rate, then the cosine itself
    _, ran = run_epochs(monkeypatch, None, [(0, 6, 3e-3), (6, 12, 3e-4)], 12, lambda e: 1.0, warmup=2)
    lrs = [lr for _, lr in ran]
    assert lrs[0] == pytest.approx(1e-3) and lrs[6] == pytest.approx(1e-4)  # a third of each stage's peak
    assert lrs[1] == pytest.approx(2 / 3 * common.cosine(3e-3, 0, 6)(1))
    assert lrs[2:6] == [common.cosine(3e-3, 0, 6)(e) for e in range(2, 6)]
    assert lrs[8:] == [common.cosine(3e-4, 6, 12)(e) for e in range(8, 12)]
    assert lrs[0] < lrs[1] < lrs[2] and lrs[6] < lrs[7] < lrs[8]


def test_warm_up_under_a_time_limit_still_ends_decayed(monkeypatch):
    timer, ran = run_epochs(monkeypatch, 10, [(0, 30, 1e-3)], 30, lambda e: 60.0, warmup=2)
    assert timer.planned == len(ran) == 10
    assert ran[0][1] == pytest.approx(1e-3 / 3) and ran[-1][1] == pytest.approx(common.cosine(1e-3, 0, 10)(9))
