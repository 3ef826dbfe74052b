"""Bad input, interrupted or failing runs: one-line errors, no partial output, nothing lost.

Each case runs the real command's main() the way `python SCRIPT.py ...` does (common.run_cli);
two cases also run it as a separate process to check the exit status and stderr end to end.
"""

import csv
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

import cls_train
import common
import predict
import seg_train


def fails(capsys, main, argv, message):
    """main(argv) exits 2 with exactly one 'error: ...' line containing message, no traceback."""
    assert common.run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    return err


@pytest.fixture
def data_copy(demo_dir, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(demo_dir, root)
    return root


def train_argv(data, out, *extra):
    return ["--data", data, "--out", out, "--img-size", "32", "--width", "8", "--epochs", "1", "--batch-size", "8",
            *extra]


def rewrite_csv(path, edit):
    rows = list(csv.reader(open(path)))
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(edit(rows))


@pytest.mark.parametrize("case, message", [
    ("missing dir", "does not exist"),
    ("neither layout", "neither layout"),
    ("pickle npy", "needs pickle"),
    ("truncated npy", "train id 3: "),
    ("missing class column", "missing class columns sofa"),
    ("duplicate ids", "duplicate ids 4"),
    ("id without file", "ids in the CSV have no image file"),
    ("file without row", "have no row in train_set.csv"),
])
def test_bad_data_gives_one_line_and_no_run_folder(data_copy, tmp_path, capsys, case, message):
    data = data_copy
    if case == "missing dir":
        data = str(tmp_path / "nowhere")
    elif case == "neither layout":
        data = str(tmp_path / "empty")
        os.makedirs(data)
    elif case == "pickle npy":
        np.save(os.path.join(data, "train", "img", "train_3.npy"), np.array([{"x": 1}], dtype=object),
                allow_pickle=True)
    elif case == "truncated npy":
        path = os.path.join(data, "train", "img", "train_3.npy")
        open(path, "r+b").truncate(200)
    elif case == "missing class column":
        rewrite_csv(os.path.join(data, "train", "train_set.csv"), lambda rows: [r[:18] + r[19:] for r in rows])
    elif case == "duplicate ids":
        rewrite_csv(os.path.join(data, "train", "train_set.csv"), lambda rows: rows + [rows[5]])
    elif case == "id without file":
        os.remove(os.path.join(data, "train", "img", "train_6.npy"))
    elif case == "file without row":
        rewrite_csv(os.path.join(data, "train", "train_set.csv"), lambda rows: rows[:-1])
    out = str(tmp_path / "run")
    fails(capsys, cls_train.main, train_argv(data, out), message)
    assert not os.path.exists(out)


@pytest.mark.parametrize("case, message", [
    ("mask shape", "train id 2: mask is 3x3 but image is"),
    ("mask values", "train id 2: mask"),
])
def test_bad_masks_stop_segmentation(data_copy, tmp_path, capsys, case, message):
    bad = np.zeros((3, 3), np.uint8) if case == "mask shape" else np.full((4, 4), 42, np.uint8)
    if case == "mask values":
        image = np.load(os.path.join(data_copy, "train", "img", "train_2.npy"))
        bad = np.full(image.shape[:2], 42, np.uint8)
    np.save(os.path.join(data_copy, "train", "seg", "train_2.npy"), bad)
    out = str(tmp_path / "run")
    err = fails(capsys, seg_train.main, train_argv(data_copy, out, "--img-size", "64"), message)
    assert case != "mask values" or "outside 0..20 and 255" in err
    assert not os.path.exists(out)


def test_grayscale_and_rgba_images_are_converted_and_train(data_copy, tmp_path):
    for i, channels in ((1, None), (4, 4)):
        path = os.path.join(data_copy, "train", "img", f"train_{i}.npy")
        image = np.load(path)
        np.save(path, image[:, :, 0] if channels is None else np.concatenate([image, image[:, :, :1]], -1))
    out = str(tmp_path / "run")
    assert common.run_cli(seg_train.main, train_argv(data_copy, out, "--img-size", "64")) == 0
    assert os.path.isfile(os.path.join(out, "model.keras"))


def test_tiny_data_sets_train_or_name_the_validation_split(tmp_path, capsys):
    """Four labelled images train (validation split not empty, batches no larger than the three
    training images); one labelled image gets one line naming the validation split and why."""
    root = common.make_demo(str(tmp_path / "four"), n_train=4, n_test=1, scale=0.2)
    assert common.run_cli(cls_train.main, train_argv(root, str(tmp_path / "run4"))) == 0
    assert "3 train / 1 val images" in capsys.readouterr().out
    root = common.make_demo(str(tmp_path / "one"), n_train=1, n_test=1, scale=0.2)
    fails(capsys, seg_train.main, train_argv(root, str(tmp_path / "run1")), "the validation split would be empty")
    assert not os.path.exists(tmp_path / "run1")


def test_empty_test_set(data_copy, tiny_runs, tmp_path, capsys):
    rewrite_csv(os.path.join(data_copy, "test", "test_set.csv"), lambda rows: rows[:1])
    shutil.rmtree(os.path.join(data_copy, "test", "img"))
    out = str(tmp_path / "pred")
    fails(capsys, predict.main, ["--data", data_copy, "--cls", tiny_runs[0], "--seg", tiny_runs[1], "--out", out],
          "has no images")
    assert not os.path.exists(out)


def test_out_not_creatable(demo_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    fails(capsys, cls_train.main, train_argv(demo_dir, str(blocker / "run")), "cannot create run folder")
    assert blocker.read_text() == "not a folder"


def test_disk_full_keeps_the_previous_output(demo_dir, tiny_runs, tmp_path, capsys, monkeypatch):
    """A write failing with ENOSPC: one-line error, the old run folder comes back untouched."""
    out = str(tmp_path / "pred")
    argv = ["--data", demo_dir, "--cls", tiny_runs[0], "--seg", tiny_runs[1], "--out", out]
    assert common.run_cli(predict.main, argv) == 0
    before = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(csv, "writer", no_space)
    fails(capsys, predict.main, argv + ["--overwrite"], "No space left on device")
    after = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["pred"]  # no temporary or backup folder left


def test_nan_loss_stops_and_keeps_the_last_good_model(demo_dir, tmp_path, capsys, monkeypatch):
    steps = tf.Variable(0)
    call = cls_train.MultiLabelLoss.call

    def nan_after_five_steps(self, y_true, y_pred):
        steps.assign_add(1)
        return tf.where(steps > 5, float("nan"), call(self, y_true, y_pred))

    monkeypatch.setattr(cls_train.MultiLabelLoss, "call", nan_after_five_steps)
    out = str(tmp_path / "run")
    argv = train_argv(demo_dir, out, "--epochs", "6")  # 2 steps an epoch: NaN in epoch 3
    assert common.run_cli(cls_train.main, argv) == 0
    printed = capsys.readouterr().out
    assert "loss became NaN in epoch 3" in printed and "keeping the best model" in printed
    metrics = common.read_json(os.path.join(out, "metrics.json"))
    assert metrics["stopped_by_nan"] and metrics["epochs_trained"] == 2 and metrics["best_epoch"] <= 2
    assert np.isfinite(metrics["val_dice_tuned"])


@pytest.mark.parametrize("script", [cls_train, seg_train])
def test_a_bad_warm_up_is_refused_before_any_output(demo_dir, tmp_path, capsys, script):
    out = str(tmp_path / "run")
    fails(capsys, script.main, train_argv(demo_dir, out, "--lr-warmup", "-1"), "--lr-warmup must be a whole number")
    with pytest.raises(common.UserError, match="whole number of epochs"):
        script.train(data=demo_dir, out=out, lr_warmup=1.5)
    assert not os.path.exists(out)


def test_real_commands_exit_non_zero_with_one_line(tmp_path):
    for script, argv in (("cls_train.py", ["--data", str(tmp_path / "nope")]),
                         ("attack.py", ["--target", str(tmp_path), "--class", "unicorn"])):
        r = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv, "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
        assert r.stderr.startswith("error: ") and not os.path.exists(tmp_path / "o")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "cls_train.py"), "--data", str(tmp_path / "nope"),
                        "--debug"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr  # --debug shows where it came from
