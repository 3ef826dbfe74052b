"""tf.distribute: MirroredStrategy over 2 logical CPU devices must train exactly like one device
on the same global batch. Runs in a subprocess, because logical devices can only be configured
before TensorFlow initialises them."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import common, cls_train, seg_train

def one_step(strategy_name, model):
    strategy, devices = common.setup_devices(strategy_name, "off", batch_size=4, lr=0.05)
    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(1)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    if model == "cls":
        y = (rng.uniform(size=(8, 20)) < 0.3).astype("float32")
    else:
        y = rng.randint(0, 21, (8, 32, 32)).astype("int32")
    with strategy.scope():
        if model == "cls":
            net = cls_train.build_scratch(32, width=4, dropout=0.0)  # dropout masks differ per replica
            loss = cls_train.MultiLabelLoss("bce")
        else:
            net = seg_train.build_unet(32, width=4)
            loss = seg_train.SegLoss("ce")  # soft Dice is a batch statistic: per replica under tf.distribute
        net.compile(optimizer=keras.optimizers.SGD(devices["lr"] / devices["replicas"]), loss=loss)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # the same global batch of 8 for both
    before = net.get_weights()
    net.fit(ds, epochs=1, verbose=0)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(before, net.get_weights()))
    assert moved > 1e-3, moved  # the step did change the weights
    return devices["replicas"], net.get_weights()

for model in ("cls", "seg"):
    n1, single = one_step("default", model)
    n2, mirrored = one_step("mirrored", model)
    assert (n1, n2) == (1, 2), (n1, n2)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored))
    print(model, "max weight difference", worst)
    assert worst < 1e-4, worst
print("OK")
"""


@pytest.mark.slow
def test_mirrored_step_equals_single_device_step():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_multiworker_without_tf_config_is_a_one_line_error(demo_dir, tmp_path, capsys, monkeypatch):
    import common
    import cls_train
    monkeypatch.delenv("TF_CONFIG", raising=False)
    out = tmp_path / "run"
    argv = ["--data", demo_dir, "--out", str(out), "--strategy", "multiworker"]
    assert common.run_cli(cls_train.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "TF_CONFIG" in err and err.count("\n") == 1, err
    assert not out.exists()
