"""predict.py: submission from trained runs, scoring, TTA, fusion rules, wrong inputs."""

import json
import os
import shutil

import numpy as np
import pytest

import attack
import common
import predict
import seg_train


def test_predict_test_split_writes_a_valid_scored_submission(demo_dir, tiny_runs, tmp_path):
    out = str(tmp_path / "pred")
    scores, path = predict.run(demo_dir, tiny_runs[0], tiny_runs[1], out, tta=("flip", "scales"), score=True,
                               fuse_rules=predict.RULES)
    test = common.load_split(demo_dir, "test")
    sizes = [n for p in test.image_paths for n in (20, 20 * int(np.prod(common.image_size(p))))]
    assert common.validate_submission(path, test.ids, sizes) == 2 * len(test)
    assert json.load(open(os.path.join(out, "scores.json")))["score"] == scores["score"]
    info = json.load(open(os.path.join(out, "predictions.json")))
    assert list(info["images"]) == test.ids and all(info["images"][i]["labels"] for i in test.ids)
    # the scores are those of these predictions: the classification half is the mean Dice of
    # predictions.json's labels against solution.csv's, the joint score the mean of the halves
    truth = {r["Id"]: common.rle_decode(r["Predicted"], (20,)) for r in
             common.read_submission(os.path.join(demo_dir, "solution.csv")) if r["Id"].endswith("_classification")}
    labels = [[name in info["images"][i]["labels"] for name in common.CLASSES] for i in test.ids]
    expected = common.classification_dice(np.array(labels), np.array([truth[f"{i}_classification"] for i in test.ids]))
    assert scores["classification"] == pytest.approx(expected, abs=1e-12)
    assert scores["score"] == pytest.approx((scores["classification"] + scores["segmentation"]) / 2, abs=1e-12)
    assert os.path.getsize(os.path.join(out, "gallery.png")) > 0


def test_score_of_perfect_predictions_is_one(demo_dir, tiny_runs, tmp_path, monkeypatch):
    """With fuse() replaced by the truth, --score must give exactly 1.0 (test and val splits)."""
    test = common.load_split(demo_dir, "test")
    truth = {i: common.demo_example(0, 10 ** 6 + int(i), scale=0.25)[1] for i in test.ids}
    train = common.load_split(demo_dir, "train")
    for k, i in enumerate(train.ids):
        truth[("val", i)] = common.read_example(train, k)[1]
    order = iter([])

    def perfect(cls_probs, cls_labels, seg_probs, *args, **kwargs):
        key = next(order)
        mask = truth[key].copy()
        mask[mask == 255] = 0
        return common.labels_from_mask(mask), mask

    monkeypatch.setattr(predict, "fuse", perfect)
    order = iter(test.ids)
    scores, _ = predict.run(demo_dir, tiny_runs[0], tiny_runs[1], str(tmp_path / "t"), score=True)
    assert scores["score"] == 1.0
    val_ids = json.load(open(os.path.join(tiny_runs[0], "config.json")))["val_ids"]
    order = iter([("val", i) for i in val_ids])
    scores, _ = predict.run(demo_dir, tiny_runs[0], tiny_runs[1], str(tmp_path / "v"), split="val", score=True)
    assert scores["score"] == 1.0 and scores["images"] == len(val_ids)



def test_run_folders_written_before_the_renames_still_load(demo_dir, tiny_runs, tmp_path):
    # config.json as written before issue 17: model (now arch), balance (now repeat_factor),
    # warmup_epochs (now frozen_epochs), fit "pad" (now "letterbox")
    old_names = {"arch": "model", "repeat_factor": "balance", "frozen_epochs": "warmup_epochs"}
    old_runs = []
    for run in tiny_runs:
        copy = str(tmp_path / os.path.basename(run))
        shutil.copytree(run, copy)
        with open(os.path.join(copy, "config.json")) as f:
            config = {old_names.get(k, k): v for k, v in json.load(f).items()}
        config["fit"] = "pad" if config["fit"] == "letterbox" else config["fit"]
        config["warmup_epochs"] = 0
        with open(os.path.join(copy, "config.json"), "w") as f:
            json.dump(config, f)
        old_runs.append(copy)
    _, cls_config = common.load_run(old_runs[0], "classification")
    _, seg_config = common.load_run(old_runs[1], "segmentation")
    assert (cls_config["arch"], cls_config["fit"], cls_config["frozen_epochs"]) == ("scratch", "resize", 0)
    assert (seg_config["arch"], seg_config["fit"], seg_config["repeat_factor"]) == ("unet", "letterbox", False)
    assert "model" not in seg_config and "balance" not in seg_config and "warmup_epochs" not in seg_config
    images, _ = attack.attack_images(seg_config, demo_dir, True, limit=2)  # reads the fit
    assert len(images) == 2
    new, _ = predict.run(demo_dir, *tiny_runs, str(tmp_path / "new"), split="val", score=True)
    old, _ = predict.run(demo_dir, *old_runs, str(tmp_path / "old"), split="val", score=True)
    assert old == new


def test_cls_decision_chooses_how_probabilities_become_labels(demo_dir, tiny_runs, tmp_path, monkeypatch):
    widths = []  # the void band each mask gets
    band = predict.void_band
    monkeypatch.setattr(predict, "void_band", lambda mask, width: widths.append(width) or band(mask, width))
    cls_run = str(tmp_path / "cls")  # the tiny classifier with every threshold at 0.5
    shutil.copytree(tiny_runs[0], cls_run)
    common.write_json(os.path.join(cls_run, "thresholds.json"), {"thresholds": [0.5] * 20})
    probs = np.full((len(common.load_split(demo_dir, "test")), 20), 0.001)
    probs[:, :2] = [0.9, 0.45]  # expected Dice: {0} 0.76, {0, 1} 0.80; thresholds at 0.5: {0}
    monkeypatch.setattr(predict.cls_train, "predict_probs", lambda *args, **kwargs: probs)
    both, top = ["aeroplane", "bicycle"], ["aeroplane"]
    for loss, decision, labels in (("bce", "expected-dice", both), ("bce", "thresholds", top),
                                   ("bce", "auto", both), ("asl", "auto", top), ("asl", "expected-dice", both)):
        config = common.read_json(os.path.join(cls_run, "config.json"))
        common.write_json(os.path.join(cls_run, "config.json"), dict(config, loss=loss))
        out = str(tmp_path / f"{loss}_{decision}")
        predict.run(demo_dir, cls_run, tiny_runs[1], out, tta=(), fuse_rules=(), cls_decision=decision)
        info = json.load(open(os.path.join(out, "predictions.json")))
        assert info["cls_decision"] == ("expected-dice" if labels == both else "thresholds")
        assert all(v["labels"] == labels for v in info["images"].values())
        assert info["void_band"] == 1 and set(widths) == {1}  # the default, given to every mask
        widths.clear()
    with pytest.raises(common.UserError, match="unknown --cls-decision"):
        predict.run(demo_dir, cls_run, tiny_runs[1], str(tmp_path / "x"), cls_decision="top1")
    for width in (-1, 1.5):
        with pytest.raises(common.UserError, match="--void-band must be a whole number"):
            predict.run(demo_dir, cls_run, tiny_runs[1], str(tmp_path / "x"), void_band_width=width)


def test_fusion_rules():
    rng = np.random.default_rng(0)
    seg = rng.random((10, 10, 21)) * 0.1
    seg[:, :, 0] += 0.5          # background mostly
    seg[:5, :5, 3] = 0.9         # a confident class-3 region (25% of the image)
    seg[9, 9, 7] = 0.95          # a one-pixel class-7 speck
    cls = np.full(20, 0.01)
    cls[1] = 0.9                 # the classifier sees class 2 only, never class 3
    cls_labels = cls >= 0.5
    labels, mask = predict.fuse(cls, cls_labels, seg)
    assert labels.tolist() == [0, 1] + [0] * 18 and (mask[:5, :5] == 3).all() and mask[9, 9] == 7
    _, mask = predict.fuse(cls, cls_labels, seg, ("drop",))
    assert not (mask == 3).any() and not (mask == 7).any()
    labels, _ = predict.fuse(cls, cls_labels, seg, ("add",), add_area=0.2)
    assert labels[2] == 1 and labels[6] == 0
    _, mask = predict.fuse(cls, cls_labels, seg, ("small",), min_area=0.02)
    assert mask[9, 9] == 0 and (mask[:5, :5] == 3).all()
    labels, mask = predict.fuse(cls, cls_labels, seg, ("agree",))
    assert set(np.unique(mask)) <= {0, 2}
    with pytest.raises(common.UserError, match="decided labels"):  # thresholds, the signature before 2026-12-01
        predict.fuse(cls, np.full(20, 0.5), seg)
    # probabilities on a coarser grid: resized to the requested size before the argmax
    labels, mask = predict.fuse(cls, cls_labels, seg, size=(30, 20))
    assert mask.shape == (30, 20) and mask.dtype == np.uint8
    assert (mask[:12, :8] == 3).all() and (mask[15:24, 10:16] == 0).all() and mask[29, 19] == 7


def test_void_band_known_answers():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:7, 2:7] = 3                                       # a 5x5 square of class 3 on background
    mask[2:7, 7:9] = 5                                       # touching a 5x2 strip of class 5
    assert predict.void_band(mask, 0) is mask
    banded = predict.void_band(mask, 1)
    expected = np.zeros((10, 10), np.uint8)
    expected[3:6, 3:6] = 3                                   # the square's interior, 1 px from any other label
    np.testing.assert_array_equal(banded, expected)          # the strip is 2 px wide: no pixel 2 px from the rest
    assert list(zip(*np.nonzero(predict.void_band(mask, 2)))) == [(4, 4)]  # only the centre of the square stays
    np.testing.assert_array_equal(predict.void_band(np.full((4, 6), 7, np.uint8), 3), 7)  # one label: unchanged
    # fuse applies it last: the add rule still sees the class's 25% of the image, the mask keeps 9%
    seg = np.zeros((10, 10, 21))
    seg[..., 0] = 0.5
    seg[2:7, 2:7, 3] = 0.9
    cls = np.zeros(20)
    _, plain = predict.fuse(cls, np.zeros(20, int), seg)
    labels, banded = predict.fuse(cls, np.zeros(20, int), seg, ("add",), add_area=0.2, band=1)
    assert (plain == 3).sum() == 25 and (banded == 3).sum() == 9 and labels[2] == 1


def test_label_map_resizes_then_takes_the_allowed_argmax():
    probs = np.zeros((2, 2, 21), np.float32)
    probs[:, 0, 4], probs[:, 1, 9] = 1.0, 1.0     # left column class 4, right column class 9
    probs[:, :, 0] = 0.5
    mask = seg_train.label_map(probs, (4, 6))
    assert mask.shape == (4, 6) and (mask[:, :2] == 4).all() and (mask[:, -2:] == 9).all()
    allowed = np.ones(21, bool)
    allowed[9] = False                             # class 9 not allowed: background wins there
    mask = seg_train.label_map(probs, (4, 6), allowed)
    assert (mask[:, :2] == 4).all() and (mask[:, -2:] == 0).all()


def test_label_map_shortcut_is_bit_identical_to_resizing_every_class():
    """label_map resizes only the classes that can still win the argmax: same map as resizing all
    21, on confident, near-tied and exactly tied probabilities, 1-pixel grids, up and down."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    for k in range(150):
        h, w = rng.integers(1, 12, 2)
        logits = rng.normal(0, [3.0, 0.01, 1.0][k % 3], (h, w, 21))
        if k % 3 == 2:  # background plus one object class, the rest far below
            logits[..., 1:] -= 6
            logits[..., rng.integers(1, 21)] += 6
        probs = tf.nn.softmax(logits.astype(np.float32)).numpy()
        if k % 5 == 0:
            probs[0, 0] = probs[0, 0, 0]  # exact ties
        allowed = rng.random(21) < 0.8
        allowed[0] = True
        size = tuple(rng.integers(1, 30, 2))
        full = tf.argmax(tf.where(allowed, tf.image.resize(probs, size), -1.0), axis=-1).numpy()
        np.testing.assert_array_equal(seg_train.label_map(probs, size, allowed), full)


def test_wrong_inputs_give_one_line_errors(demo_dir, tiny_runs, tmp_path, capsys):
    cases = [
        (["--cls", tiny_runs[1], "--seg", tiny_runs[1]], "holds a segmentation model, not a classification"),
        (["--cls", tiny_runs[0], "--seg", tiny_runs[0]], "holds a classification model, not a segmentation"),
        (["--cls", str(tmp_path), "--seg", tiny_runs[1]], "not a finished run folder"),
        (["--cls", tiny_runs[0], "--seg", tiny_runs[1], "--fuse", "magic"], "unknown --fuse rule"),
        (["--cls", tiny_runs[0], "--seg", tiny_runs[1], "--tta", "mirror"], "unknown --tta item"),
        (["--cls", tiny_runs[0], "--seg", tiny_runs[1], "--scales", "1,x", "--tta", "scales"], "--scales"),
    ]
    for extra, message in cases:
        out = str(tmp_path / "o")
        assert common.run_cli(predict.main, ["--data", demo_dir, "--out", out] + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not os.path.exists(os.path.join(out, "submission.csv"))


def test_failure_after_the_submission_keeps_it(demo_dir, tiny_runs, tmp_path, capsys, monkeypatch):
    """Issue 15 case 3: whatever fails once submission.csv is complete (re-reading it, the extra
    files, scoring) ends in one line that says what failed; the submission stays, valid."""
    test = common.load_split(demo_dir, "test")
    argv = ["--data", demo_dir, "--cls", tiny_runs[0], "--seg", tiny_runs[1], "--tta", "none"]

    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    for target, step in [("validate_submission", "re-reading it"), ("write_json", "writing predictions.json")]:
        out = str(tmp_path / target)
        with monkeypatch.context() as m:
            m.setattr(common, target, broken)
            assert common.run_cli(predict.main, argv + ["--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {step}") and "kept" in err and "broken on purpose" in err, err
        assert err.count("\n") == 1
        assert common.validate_submission(os.path.join(out, "submission.csv"), test.ids) == 2 * len(test)
    out = str(tmp_path / "score")  # --score without a solution: a UserError after the submission
    os.rename(os.path.join(demo_dir, "solution.csv"), str(tmp_path / "moved.csv"))
    try:
        assert common.run_cli(predict.main, argv + ["--out", out, "--score"]) == 2
    finally:
        os.rename(str(tmp_path / "moved.csv"), os.path.join(demo_dir, "solution.csv"))
    err = capsys.readouterr().err
    assert err.startswith("error: scoring it") and "has no labels" in err and err.count("\n") == 1, err
    assert os.path.isfile(os.path.join(out, "submission.csv")) and os.path.isfile(os.path.join(out, "gallery.png"))
