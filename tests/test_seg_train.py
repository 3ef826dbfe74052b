"""seg_train.py: run folder contents, original-size prediction, void-free loss, learning."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import HAVE_IMAGENET, check_fine_tuning, count_traces, record_initial_backbone

import common
import seg_train

OUTPUTS = ["model.keras", "metrics.json", "log.csv", "curves.png", "gallery.png", "config.json", "state.json"]


def check_run_folder(out, data):
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not os.path.exists(os.path.join(out, "last.keras"))
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    # metrics.json describes the saved model: its validation images predicted again score the same
    model, config = common.load_run(out, "segmentation")
    split = common.load_split(data, "train")
    val = common.load_examples(split.subset([split.ids.index(i) for i in config["val_ids"]]), progress=False)
    again = seg_train.seg_metrics(seg_train.predict_masks(model, [im for im, _ in val], config["img_size"]),
                                  [mask for _, mask in val])
    assert metrics["val_dice"] == pytest.approx(again["dice"], abs=1e-9)
    assert metrics["val_miou"] == pytest.approx(again["miou"], abs=1e-9)
    assert metrics["val_miou"] == pytest.approx(np.nanmean(np.array(list(metrics["val_iou"].values()), float)))
    assert len(metrics["val_iou"]) == 21 and metrics["val_images"] == len(val)
    log = common.read_log(os.path.join(out, "log.csv"))
    for key in ("loss", "val_loss", "miou", "val_miou", "dice", "val_dice"):
        assert key in log
    return metrics


def test_unet_run_and_original_size_predictions(demo_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    traces = count_traces(monkeypatch, keras.Model)
    datasets = []  # (training?, dataset) of every pipeline the run builds
    copy_paste = []  # and its copy-paste probability
    make_dataset = common.make_dataset

    def recording_make_dataset(*args, **kwargs):
        ds = make_dataset(*args, **kwargs)
        datasets.append((kwargs.get("training", False), ds))
        copy_paste.append(kwargs.get("copy_paste", 0.0))
        return ds

    monkeypatch.setattr(common, "make_dataset", recording_make_dataset)
    model, history = seg_train.train(data=demo_dir, arch="unet", out=out, img_size=64, crop_size=32, epochs=2,
                                     width=8, batch_size=4, lr=4e-3, lr_warmup=1, copy_paste=0.5, verbose=0)
    assert len(traces) == 1  # the optimizer built before fit: no second trace of the step
    check_run_folder(out, demo_dir)
    # one warm-up epoch at half the rate, then the 2-epoch cosine half-way down (0.02 + 0.98 / 2 of the peak)
    rates = common.read_log(os.path.join(out, "log.csv"))["learning_rate"]
    np.testing.assert_allclose(rates, [0.5 * 4e-3, 0.51 * 4e-3], rtol=1e-5)
    loaded, config = common.load_run(out, "segmentation")
    assert (config["img_size"], config["crop_size"]) == (64, 32)  # trained on 32-px crops, predicts at 64
    # copy-paste given to the training pipeline only (test_pipeline checks the pasting itself)
    assert config["copy_paste"] == 0.5 and copy_paste == [0.5, 0.0]
    shapes = {training: tuple(ds.element_spec[0].shape[1:3]) for training, ds in datasets}
    assert shapes == {True: (32, 32), False: (64, 64)}, shapes
    rng = np.random.default_rng(0)
    sizes = [(333, 500), (500, 281), (37, 101), (64, 64)]
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    masks = seg_train.predict_masks(loaded, images, config["img_size"], scales=(1.0, 0.75), flip=True)
    for image, mask in zip(images, masks):
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8 and mask.max() <= 20
    # the reloaded model predicts what the trained one does
    a = next(seg_train.segment(model, images[:1], 64))
    b = next(seg_train.segment(loaded, images[:1], 64))
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("finetune_from", [None, "block_6_expand"])
def test_transfer_unet_keeps_encoder_statistics(demo_dir, tmp_path, monkeypatch, finetune_from):
    weights = "imagenet" if HAVE_IMAGENET else "none"
    out = str(tmp_path / "run")
    initial = record_initial_backbone(monkeypatch, seg_train, "build_transfer_unet")  # what train() starts from
    # no warm-up: the best checkpoint is certainly from the fine-tuning stage
    model, _ = seg_train.train(data=demo_dir, arch="mobilenetv2_unet", out=out, img_size=64, epochs=2,
                               frozen_epochs=0, batch_size=4, weights=weights, finetune_from=finetune_from,
                               verbose=0)
    check_run_folder(out, demo_dir)
    check_fine_tuning(out, initial, model, finetune_from)


@pytest.mark.slow
def test_global_context_and_copy_paste_resume(demo_dir, tmp_path):
    """--global-context adds image pooling to the transfer U-Net: recorded in config.json, kept by
    the saved model (any input size), kept by --resume, refused on resume of a run without it.
    --copy-paste likewise: a resumed run keeps the interrupted run's probability, another refused."""
    def interrupt(out):  # a run folder as a kill after its first epoch leaves it
        shutil.copy(os.path.join(out, "model.keras"), os.path.join(out, "last.keras"))
        state = common.read_json(os.path.join(out, "state.json"))
        common.write_json(os.path.join(out, "state.json"), dict(state, finished=False))

    kwargs = dict(data=demo_dir, arch="mobilenetv2_unet", img_size=64, frozen_epochs=1, batch_size=4,
                  weights="none", verbose=0)
    with_context, without = str(tmp_path / "with"), str(tmp_path / "without")
    seg_train.train(out=with_context, epochs=1, global_context=True, copy_paste=0.5, **kwargs)
    check_run_folder(with_context, demo_dir)
    model, config = common.load_run(with_context, "segmentation")
    assert config["global_context"] is True
    assert model.get_layer("context_pool") is not None
    probs = next(seg_train.segment(model, [np.zeros((40, 100, 3), np.uint8)], 96))
    assert probs.shape == seg_train.grid_size((40, 100), 96) + (21,)  # a non-square image, longer side 96
    interrupt(with_context)
    seg_train.train(out=with_context, epochs=2, resume=True, **kwargs)  # no flags: the run's decoder stays
    resumed = common.read_json(os.path.join(with_context, "config.json"))
    assert resumed["global_context"] is True and resumed["copy_paste"] == 0.5  # and its augmentation
    assert common.read_json(os.path.join(with_context, "state.json"))["epoch"] == 2
    seg_train.train(out=without, epochs=1, **kwargs)
    assert common.read_json(os.path.join(without, "config.json"))["global_context"] is False
    with pytest.raises(ValueError):  # no such layer
        common.load_run(without, "segmentation")[0].get_layer("context_pool")
    interrupt(without)
    with pytest.raises(common.UserError, match="has no global context"):
        seg_train.train(out=without, epochs=2, resume=True, global_context=True, **kwargs)
    with pytest.raises(common.UserError, match="trains with --copy-paste 0, not 0.5"):
        seg_train.train(out=without, epochs=2, resume=True, copy_paste=0.5, **kwargs)
    assert os.path.isfile(os.path.join(without, "last.keras"))  # the interrupted run is still there
    with pytest.raises(common.UserError, match="--global-context is for the transfer U-Net"):
        seg_train.train(data=demo_dir, arch="unet", out=str(tmp_path / "scratch"), global_context=True)
    assert not os.path.exists(tmp_path / "scratch")


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
def test_void_pixels_never_contribute(kind):
    loss = seg_train.SegLoss(kind)
    logits = tf.Variable(tf.random.normal((2, 8, 8, 21)))
    void = tf.fill((2, 8, 8), 255)
    with tf.GradientTape() as tape:
        value = loss(void, logits)
    grad = tape.gradient(value, logits)
    assert float(value) == 0.0
    assert grad is None or float(tf.reduce_max(tf.abs(grad))) == 0.0
    # void pixels added to a real mask change nothing
    mask = np.random.default_rng(0).integers(0, 21, size=(2, 8, 8))
    partly = mask.copy()
    partly[:, :, 4:] = 255
    partly_logits = logits.numpy().copy()
    changed = partly_logits.copy()
    changed[:, :, 4:] = np.random.default_rng(1).normal(size=changed[:, :, 4:].shape)
    assert float(loss(partly, partly_logits)) == pytest.approx(float(loss(partly, changed)), rel=1e-5)


def test_loss_known_values():
    mask = np.array([[[0, 3], [255, 3]]])
    perfect = np.full((1, 2, 2, 21), -20.0, np.float32)
    for (y, x), c in np.ndenumerate(mask[0]):
        perfect[0, y, x, c % 21] = 20.0
    assert float(seg_train.SegLoss("ce")(mask, perfect)) < 1e-6
    uniform = np.zeros((1, 2, 2, 21), np.float32)
    assert float(seg_train.SegLoss("ce")(mask, uniform)) == pytest.approx(np.log(21), rel=1e-5)
    assert float(seg_train.SegLoss("dice")(mask, perfect)) < 1e-3


@pytest.mark.slow
def test_unet_beats_all_background(learned_seg, learn_dir):
    metrics = check_run_folder(learned_seg, learn_dir)
    assert metrics["val_dice"] > metrics["all_background_dice"] + 0.15, metrics
    assert metrics["val_miou"] > 0.1, metrics


def test_bad_image_size(demo_dir, tmp_path, capsys):
    assert common.run_cli(seg_train.main, ["--data", demo_dir, "--out", str(tmp_path / "r"), "--img-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")
    for flag, value, message in (("--crop-size", "48", "--crop-size must be a positive multiple of 32"),
                                 ("--crop-size", "0", "--crop-size must be a positive multiple of 32"),
                                 ("--crop-size", "256", "--crop-size 256 is larger than --img-size 160"),
                                 ("--copy-paste", "1.5", "--copy-paste is a probability in [0, 1], not 1.5"),
                                 ("--copy-paste", "0.5 --batch-size 1", "it needs --batch-size 2 or more")):
        argv = ["--data", demo_dir, "--out", str(tmp_path / "r"), flag, *value.split()]
        assert common.run_cli(seg_train.main, argv) == 2
        assert message in capsys.readouterr().err
        assert not os.path.exists(tmp_path / "r")
    argv = ["--data", demo_dir, "--out", str(tmp_path / "r"), "--arch", "mobilenetv2_unet", "--img-size", "64",
            "--weights", "none", "--finetune-from", "block_6"]
    assert common.run_cli(seg_train.main, argv) == 2
    assert "--finetune-from 'block_6' is not a layer of the mobilenetv2 backbone" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")


def test_mask_dice_metric_matches_numpy():
    rng = np.random.default_rng(4)
    t = rng.choice([0, 2, 9, 255], size=(3, 6, 7))
    logits = rng.normal(size=(3, 6, 7, 21)).astype(np.float32)
    md = seg_train.MaskDice()
    md.update_state(t, logits)
    # void pixels (the padding of a training canvas) are ignored on both sides
    pred = np.where(t == 255, 0, logits.argmax(-1))
    want = np.mean([common.segmentation_dice(a, b) for a, b in zip(pred, t)])
    assert float(md.result()) == pytest.approx(want, abs=1e-6)


def test_iou_known_answers():
    true = np.array([[0, 1, 1, 255]])
    pred = np.array([[0, 1, 2, 2]])
    cm = seg_train.confusion_matrix(pred, true, num_classes=3)
    assert cm.sum() == 3  # void ignored
    miou, per_class = seg_train.iou_from_confusion(cm)
    assert per_class[0] == 1.0 and per_class[1] == 0.5 and per_class[2] == 0.0
    assert miou == pytest.approx(0.5)
