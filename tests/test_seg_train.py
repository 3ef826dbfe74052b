"""seg_train.py: run folder contents, original-size prediction, void-free loss, learning."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import HAVE_IMAGENET

import common
import seg_train

OUTPUTS = ["model.keras", "metrics.json", "log.csv", "curves.png", "gallery.png", "config.json", "state.json"]


def check_run_folder(out):
    for name in OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not os.path.exists(os.path.join(out, "last.keras"))
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert 0 <= metrics["val_miou"] <= 1 and 0 <= metrics["val_dice"] <= 1
    assert len(metrics["val_iou"]) == 21
    log = common.read_log(os.path.join(out, "log.csv"))
    for key in ("loss", "val_loss", "miou", "val_miou", "dice", "val_dice"):
        assert key in log
    return metrics


def test_unet_run_and_original_size_predictions(demo_dir, tmp_path):
    out = str(tmp_path / "run")
    model, history = seg_train.train(data=demo_dir, model="unet", out=out, img_size=64, epochs=2, width=8,
                                     batch_size=4, verbose=0)
    check_run_folder(out)
    loaded, config = common.load_run(out, "segmentation")
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


def test_transfer_unet_keeps_encoder_statistics(demo_dir, tmp_path):
    weights = "imagenet" if HAVE_IMAGENET else "none"
    out = str(tmp_path / "run")
    fresh = seg_train.build_transfer_unet(None, "mobilenetv2", weights)
    # no warm-up: the best checkpoint is certainly from the fine-tuning stage
    model, _ = seg_train.train(data=demo_dir, model="mobilenetv2_unet", out=out, img_size=64, epochs=2,
                               warmup_epochs=0, batch_size=4, weights=weights, verbose=0)
    check_run_folder(out)
    enc_before = next(l for l in fresh.layers if isinstance(l, keras.Model))
    enc_after = next(l for l in model.layers if isinstance(l, keras.Model))
    changed = {a.name: any(not np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
               for a, b in zip(enc_before.layers, enc_after.layers)}
    assert not any(v for k, v in changed.items() if "bn" in k.lower() or k.endswith("_BN"))
    assert not changed["Conv1"] and not changed["block_12_project"]
    assert changed["block_14_project"]


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


def test_unet_beats_all_background(learned_seg):
    metrics = check_run_folder(learned_seg)
    assert metrics["val_dice"] > metrics["all_background_dice"] + 0.15, metrics
    assert metrics["val_miou"] > 0.1, metrics


def test_bad_image_size(demo_dir, tmp_path, capsys):
    assert common.run_cli(seg_train.main, ["--data", demo_dir, "--out", str(tmp_path / "r"), "--img-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r")
