"""cls_train.py: run folder contents, reloading, thresholds, learning, resume after a kill."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import HAVE_IMAGENET, ROOT, check_fine_tuning, count_traces, record_initial_backbone

import cls_train
import common

OUTPUTS = ["model.keras", "thresholds.json", "metrics.json", "log.csv", "curves.png", "gallery.png",
           "config.json", "state.json"]


def check_run_folder(out):
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not os.path.exists(os.path.join(out, "last.keras"))  # resume file removed when finished
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    thresholds = np.array(json.load(open(os.path.join(out, "thresholds.json")))["thresholds"])
    assert thresholds.shape == (20,) and ((thresholds > 0) & (thresholds < 1)).all()
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("val_map", "val_ap", "val_dice_at_0.5", "val_dice_tuned", "baseline_dice"):
        assert key in metrics
    assert metrics["val_dice_tuned"] >= metrics["val_dice_at_0.5_top1"] - 1e-9  # tuning never hurts on val
    return metrics


def test_scratch_run_writes_everything_and_reloads(demo_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    traces = count_traces(monkeypatch, keras.Model)
    model, history = cls_train.train(data=demo_dir, arch="scratch", out=out, img_size=32, epochs=2,
                                     width=8, batch_size=8, verbose=0)
    assert len(traces) == 1  # the optimizer built before fit: no second trace of the step
    check_run_folder(out)
    assert len(history["loss"]) == 2 and len(common.read_log(os.path.join(out, "log.csv"))["loss"]) == 2
    # a reloaded model plus its thresholds gives the same predictions
    loaded, config, thresholds = cls_train.load_classifier(out)
    split = common.load_split(demo_dir, "train")
    val = split.subset([split.ids.index(i) for i in config["val_ids"]])
    examples = common.load_examples(val, masks=False)
    p1 = cls_train.predict_probs(model, val, examples, config)
    p2 = cls_train.predict_probs(loaded, val, examples, config)
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    np.testing.assert_array_equal(cls_train.decide(p1, thresholds), cls_train.decide(p2, thresholds))


@pytest.mark.parametrize("weights, frozen, finetune_from", [("imagenet", 1, None), ("imagenet", 0, None),
                                                           ("none", 1, None), ("imagenet", 0, "block_6_expand")])
def test_transfer_run_freezes_backbone_statistics(demo_dir, tmp_path, monkeypatch, weights, frozen, finetune_from):
    if weights == "imagenet" and not HAVE_IMAGENET:
        pytest.skip("no offline ImageNet weights in ../shared/keras_home")
    out = str(tmp_path / "run")
    initial = record_initial_backbone(monkeypatch, cls_train, "build_transfer")  # the weights train() starts from
    model, history = cls_train.train(data=demo_dir, arch="mobilenetv2", out=out, img_size=96, epochs=2,
                                     frozen_epochs=frozen, batch_size=8, weights=weights,
                                     finetune_from=finetune_from, verbose=0)
    check_run_folder(out)
    assert len(history["loss"]) == 2
    # with frozen == 0 every epoch fine-tuned, so the best model has changed layers from there up
    changed = check_fine_tuning(out, initial, model, finetune_from, trained=frozen == 0)
    if frozen == 0:
        assert changed["Conv_1"]


def test_finetune_start_checks_the_layer_and_keeps_a_resumed_runs():
    backbone, _ = common.make_backbone("mobilenetv2", 64, "none")
    assert common.finetune_start(backbone, "mobilenetv2") == "block_13_expand"  # the top stage
    assert common.finetune_start(backbone, "mobilenetv2", "block_6_expand") == "block_6_expand"
    assert common.finetune_start(None, "mobilenetv2", "block_6_expand") is None  # a scratch model
    # --resume keeps the interrupted run's layer, and refuses another
    assert common.finetune_start(backbone, "mobilenetv2", None, resumed="block_6_expand") == "block_6_expand"
    with pytest.raises(common.UserError, match="the interrupted run fine-tunes from 'block_6_expand'"):
        common.finetune_start(backbone, "mobilenetv2", "block_3_expand", resumed="block_6_expand")
    with pytest.raises(common.UserError, match="'block_6' is not a layer of the mobilenetv2 backbone"):
        common.finetune_start(backbone, "mobilenetv2", "block_6")


@pytest.mark.slow
def test_scratch_model_beats_constant_baseline(learned_cls):
    metrics = check_run_folder(learned_cls)
    assert metrics["val_dice_tuned"] > metrics["baseline_dice"] + 0.08, metrics
    assert metrics["val_map"] > 0.25


def test_scratch_pools_set_the_final_map():
    net = cls_train.build_scratch(64, width=4, dropout=0.0, pools=3)  # run_all.QUICK's design
    assert net.get_layer("block5b_relu").output.shape[1:3] == (8, 8)
    assert cls_train.build_scratch(64, width=4).get_layer("block5b_relu").output.shape[1:3] == (4, 4)
    assert net(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 20)


def test_decide_gives_every_image_its_top_class():
    probs = np.array([[0.1, 0.3, 0.2], [0.9, 0.8, 0.1]])
    np.testing.assert_array_equal(cls_train.decide(probs, [0.5, 0.5, 0.5]), [[0, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(cls_train.decide(probs, [0.5, 0.85, 0.5]), [[0, 1, 0], [1, 0, 0]])
    # labels_for names the rule: thresholds are decide's, an unknown name is an error, not a fallback
    np.testing.assert_array_equal(cls_train.labels_for(probs, [0.5, 0.85, 0.5], "thresholds"), [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(common.UserError, match="unknown classifier decision 'expected_dice'"):
        cls_train.labels_for(probs, [0.5, 0.5, 0.5], "expected_dice")


def test_expected_dice_labels_known_answers_and_best_subset():
    probs = np.zeros((3, 20))
    probs[0, :2] = [0.9, 0.6]  # expected Dice {0}: 1.8 / 2.5 = 0.72, {0, 1}: 3.0 / 3.5 = 0.86
    probs[1, :2] = [0.9, 0.3]  # {0}: 1.8 / 2.2 = 0.82, {0, 1}: 2.4 / 3.2 = 0.75
    probs[2, 5] = 0.01         # nothing likely: still the top class
    want = np.zeros((3, 20), np.int8)
    want[0, :2] = want[1, 0] = want[2, 5] = 1
    np.testing.assert_array_equal(cls_train.expected_dice_labels(probs), want)
    # among all 63 non-empty subsets of 6 classes, the chosen set has the largest expected Dice
    rng = np.random.default_rng(0)
    for p in rng.random((50, 6)) ** 2:
        objective = lambda s, p=p: 2 * p[list(s)].sum() / (len(s) + p.sum())  # noqa: E731
        best = max((s for k in range(1, 7) for s in itertools.combinations(range(6), k)), key=objective)
        chosen = np.flatnonzero(cls_train.expected_dice_labels(p[None])[0])
        assert objective(chosen) == pytest.approx(objective(best), abs=1e-12)


def test_expected_dice_labels_beat_a_tuned_threshold_on_calibrated_probabilities():
    # labels drawn from the probabilities themselves (calibrated): the untuned rule beats the best
    # shared threshold even when that threshold is tuned on the very same images
    rng = np.random.default_rng(0)
    probs = rng.beta(0.3, 3, (2000, 20))
    labels = rng.random(probs.shape) < probs
    _, tuned = cls_train.tune_thresholds(probs, labels, passes=0)
    assert common.classification_dice(cls_train.expected_dice_labels(probs), labels) > tuned + 0.004


def test_tune_thresholds_finds_a_better_threshold():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 20)) < 0.1).astype(np.int8)
    probs = np.clip(labels * 0.3 + rng.random((200, 20)) * 0.25, 0, 1)  # positives sit around 0.3-0.55
    t, best = cls_train.tune_thresholds(probs, labels)
    assert best > common.classification_dice(cls_train.decide(probs, np.full(20, 0.5)), labels) + 0.2
    assert best == pytest.approx(common.classification_dice(cls_train.decide(probs, t), labels))


def test_out_of_fold_dice_is_honest_where_tuning_overfits():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 20)) < 0.15).astype(np.int8)
    labels[np.arange(60), rng.integers(0, 20, 60)] = 1  # every image shows a class, as in VOC
    # separable: positives above 0.6, negatives below 0.4; thresholds from any fold decide perfectly
    clean = np.where(labels > 0, 0.6 + 0.4 * rng.random((60, 20)), 0.4 * rng.random((60, 20)))
    oof, (lo, hi) = cls_train.out_of_fold_dice(clean, labels)
    assert oof == 1.0 and lo == hi == 1.0
    # weakly informative probabilities, 150 validation images (the proxy's count): thresholds tuned
    # on them overstate the Dice of new images by about 0.08; the out-of-fold estimate does not
    n = 150
    labels = (rng.random((n, 20)) < 0.15).astype(np.int8)
    labels[np.arange(n), rng.integers(0, 20, n)] = 1
    weak = np.clip(rng.random((n, 20)) * 0.8 + 0.15 * labels, 0, 1)
    thresholds, tuned = cls_train.tune_thresholds(weak, labels)
    oof, (lo, hi) = cls_train.out_of_fold_dice(weak, labels)
    new_labels = (rng.random((4000, 20)) < 0.15).astype(np.int8)
    new_labels[np.arange(4000), rng.integers(0, 20, 4000)] = 1
    new_probs = np.clip(rng.random((4000, 20)) * 0.8 + 0.15 * new_labels, 0, 1)
    unseen = common.classification_dice(cls_train.decide(new_probs, thresholds), new_labels)
    assert tuned > unseen + 0.05 and lo < unseen < hi and abs(oof - unseen) < 0.03
    assert cls_train.out_of_fold_dice(weak, labels) == (oof, (lo, hi))  # seeded


def test_losses():
    y = np.array([[1.0, 0.0, 0.0]])
    good, bad = np.array([[0.9, 0.1, 0.2]]), np.array([[0.2, 0.8, 0.7]])
    bce = keras.losses.BinaryCrossentropy()
    assert float(cls_train.MultiLabelLoss("bce")(y, good)) == pytest.approx(float(bce(y, good)), rel=1e-4)
    for kind in ("bce", "focal", "asl"):
        loss = cls_train.MultiLabelLoss(kind)
        assert 0 < float(loss(y, good)) < float(loss(y, bad))
    weighted = cls_train.MultiLabelLoss("bce", pos_weight=[3.0, 1.0, 1.0])
    assert float(weighted(y, good)) > float(cls_train.MultiLabelLoss("bce")(y, good))
    w = cls_train.positive_weights(np.array([[1, 0], [1, 0], [1, 0], [0, 1]] * 10))
    assert w[1] > w[0] == 1.0


def test_bad_arguments_give_one_line_errors(demo_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    os.makedirs(out)
    open(os.path.join(out, "something"), "w").close()
    cases = [
        (["--data", demo_dir, "--out", out], "already exists"),
        (["--data", demo_dir, "--out", str(tmp_path / "r2"), "--arch", "mobilenetv2", "--weights", "/nope.h5"],
         "no such file"),
        (["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r3")], "does not exist"),
        (["--data", demo_dir, "--out", str(tmp_path / "r4"), "--resume"], "no interrupted run"),
        (["--data", demo_dir, "--out", str(tmp_path / "r5"), "--arch", "mobilenetv2", "--weights", "none",
          "--finetune-from", "block_6"], "--finetune-from 'block_6' is not a layer of the mobilenetv2 backbone"),
    ]
    for argv, message in cases:
        assert common.run_cli(cls_train.main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert os.listdir(out) == ["something"]  # the existing folder is untouched
    assert not any(os.path.exists(tmp_path / f"r{k}") for k in range(2, 6))  # failed runs leave no folder


@pytest.mark.slow
def test_resume_after_sigkill(demo_dir, tmp_path):
    """Kill a real run mid-training, resume it: at most one epoch is lost and it finishes."""
    out = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "cls_train.py"), "--data", demo_dir, "--arch", "scratch",
           "--out", out, "--img-size", "32", "--width", "8", "--batch-size", "4", "--epochs", "8",
           "--checkpoint-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = os.path.join(out, "state.json")
    deadline = time.time() + 240
    while time.time() < deadline:
        if os.path.exists(state) and json.load(open(state)).get("epoch", 0) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.load(open(state))["epoch"]
    assert 2 <= killed_at < 8
    result = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming after epoch {killed_at}" in result.stdout
    log = common.read_log(os.path.join(out, "log.csv"))
    epochs = log["epoch"].astype(int).tolist()
    assert epochs == list(range(8))  # every epoch logged once: rows past the checkpoint were cut
    check_run_folder(out)


def checkpoint_epochs(monkeypatch, tmp_path, val_dice, every, nan_at=None):
    """Drive RunCheckpoint through epochs of 10 s (a clock that only they advance) on a one-weight
    model whose weight is the epoch's number; returns (checkpoint, model, the files saved in
    order). nan_at: the epoch whose loss is NaN (training stops there)."""
    clock = {"now": time.time()}  # (zip files need a real date)
    monkeypatch.setattr(common.time, "time", lambda: clock["now"])
    saved, save = [], common.save_model
    monkeypatch.setattr(common, "save_model", lambda model, path, copy_of=None: (
        saved.append(os.path.basename(path) + (" (copy)" if copy_of else "")), save(model, path, copy_of)))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    checkpoint = common.RunCheckpoint(str(tmp_path), "val_dice", {}, every)
    checkpoint.set_model(model)
    model.stop_training = False
    for epoch, value in enumerate(val_dice):
        model.set_weights([np.full((1, 1), epoch + 1.0, np.float32)])
        clock["now"] += 10
        checkpoint.on_epoch_end(epoch, {"loss": np.nan if epoch + 1 == nan_at else 1.0, "val_dice": value})
        if model.stop_training:
            break
    checkpoint.on_train_end()
    return checkpoint, model, saved


def weight_in(path):
    return float(keras.models.load_model(path).get_weights()[0][0, 0])


def test_checkpoint_writes_once_a_minute_and_keeps_the_best_epoch(monkeypatch, tmp_path):
    """10 epochs of 10 s, writes at most every 60 s: after epoch 1, epoch 7 (60 s later) and at the
    end. The best epoch (2) was never written as last.keras, yet model.keras holds its weights, the
    model keeps its own, and state.json describes the files."""
    checkpoint, model, saved = checkpoint_epochs(
        monkeypatch, tmp_path, [0.1, 0.5, 0.3, 0.4, 0.2, 0.45, 0.3, 0.35, 0.2, 0.1], every=60)
    assert saved == ["last.keras", "model.keras (copy)", "last.keras", "model.keras", "last.keras"]
    assert weight_in(tmp_path / "model.keras") == 2.0 and weight_in(tmp_path / "last.keras") == 10.0
    assert model.get_weights()[0][0, 0] == 10.0
    state = json.load(open(tmp_path / "state.json"))
    assert (state["epoch"], state["best"], state["best_epoch"]) == (10, 0.5, 2)
    # every=0: written after every epoch, the best copied from last.keras when it improves
    (tmp_path / "every").mkdir()
    _, _, saved = checkpoint_epochs(monkeypatch, tmp_path / "every", [0.1, 0.5, 0.3], every=0)
    assert saved == ["last.keras", "model.keras (copy)", "last.keras", "model.keras (copy)", "last.keras"]


def test_checkpoint_after_a_nan_keeps_the_last_finite_files(monkeypatch, tmp_path):
    """NaN in epoch 4: last.keras stays at the last write (epoch 1), model.keras gets the best
    epoch (2, held in memory) and end_training reports 3 finished epochs."""
    checkpoint, _, saved = checkpoint_epochs(monkeypatch, tmp_path, [0.1, 0.5, 0.3, 0.9, 0.2], every=60, nan_at=4)
    assert saved == ["last.keras", "model.keras (copy)", "model.keras"]
    assert weight_in(tmp_path / "model.keras") == 2.0 and weight_in(tmp_path / "last.keras") == 1.0
    state = json.load(open(tmp_path / "state.json"))
    assert (state["epoch"], state["best_epoch"]) == (1, 2)
    ended = common.end_training(str(tmp_path), checkpoint, common.TimeLimit(None))
    assert (ended["epoch"], ended["best_epoch"], ended["nan_epoch"]) == (3, 2, 4)


def test_resume_deletes_a_write_the_kill_cut_short(tmp_path):
    """A kill during save_model leaves its temporary file; --resume must not keep it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"epoch": 2}))
    (out / ".tmp-4242-model.keras").write_bytes(b"half a zip")
    (out / "model.keras").write_bytes(b"kept")
    with common.run_folder(str(out), resume=True) as state:
        assert state["epoch"] == 2
    assert sorted(os.listdir(out)) == ["model.keras", "state.json"]


def test_checkpoint_in_real_fits_of_two_stages(tmp_path):
    """Two stages, two fits sharing one RunCheckpoint with the callbacks of stage_callbacks and
    writes at most once an hour: each stage's end writes (state.json at its last epoch), log.csv
    has one row per epoch, and the best epoch is the first with the highest validation score."""
    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    y = (x.sum(1, keepdims=True) > 2).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    checkpoint, timer = common.RunCheckpoint(str(tmp_path), "val_dice", {}, every=3600), common.TimeLimit(None)
    for start, end in ((0, 2), (2, 5)):
        model.compile(optimizer="adam", loss="binary_crossentropy", metrics=[keras.metrics.BinaryAccuracy(name="dice")])
        model.fit(x, y, validation_data=(x, y), initial_epoch=start, epochs=end, batch_size=8, verbose=0,
                  callbacks=common.stage_callbacks(str(tmp_path), checkpoint, timer, 1e-2, start, end, 5))
        state = json.load(open(tmp_path / "state.json"))
        assert state["epoch"] == end
    log = common.read_log(str(tmp_path / "log.csv"))
    assert log["epoch"].astype(int).tolist() == [0, 1, 2, 3, 4]
    assert state["best_epoch"] == 1 + int(np.argmax(log["val_dice"]))
    assert os.path.isfile(tmp_path / "model.keras") and os.path.isfile(tmp_path / "last.keras")


def test_resume_cuts_the_log_back_to_the_checkpoint(tmp_path):
    """A kill between writes leaves log rows of epochs after the last checkpoint: resume_model drops
    them (they run again) and loads last.keras."""
    keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]).save(tmp_path / "last.keras")
    (tmp_path / "log.csv").write_text("epoch,loss\n" + "".join(f"{e},{1 / (e + 1)}\n" for e in range(6)))
    model = common.resume_model(str(tmp_path), {"epoch": 3, "best": 0.5})
    assert isinstance(model, keras.Model)
    assert (tmp_path / "log.csv").read_text() == "epoch,loss\n0,1.0\n1,0.5\n2,0.3333333333333333\n"


def test_label_dice_metric_matches_numpy():
    rng = np.random.default_rng(4)
    y = (rng.random((16, 20)) < 0.15).astype(np.float32)
    y[0] = 0
    p = rng.random((16, 20)).astype(np.float32)
    p[0] = 0.1  # empty vs empty scores 1
    m = cls_train.LabelDice()
    m.update_state(y, p)
    assert float(m.result()) == pytest.approx(common.classification_dice(p >= 0.5, y), abs=1e-6)
    m = cls_train.LabelDice(top1=True)
    m.update_state(y, p)
    top1 = (p >= 0.5) | (p == p.max(1, keepdims=True))
    assert float(m.result()) == pytest.approx(common.classification_dice(top1, y), abs=1e-6)
    again = cls_train.LabelDice.from_config(m.get_config())
    assert (again.threshold, again.top1, again.name) == (0.5, True, "dice")


def test_average_precision_known_answers():
    assert cls_train.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    assert cls_train.average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert np.isnan(cls_train.average_precision([0, 0], [0.3, 0.2]))
    # tied scores count as one threshold
    assert cls_train.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
