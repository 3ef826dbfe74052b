"""attack.py: frozen target, exact budgets, generator learning, FGSM/PGD, goals, errors."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import attack
import common


@pytest.fixture(scope="module")
def cls_goal(learned_cls):
    return attack.load_target(learned_cls, "cls_targeted", "aeroplane")


@pytest.fixture(scope="module")
def train_images(cls_goal):
    return attack.attack_images(cls_goal.config, None, False, "aeroplane")[1]


def test_images_come_from_the_right_side_of_the_split(cls_goal, train_images):
    val_split, val_images = attack.attack_images(cls_goal.config, None, True)
    assert set(val_split.ids) == set(cls_goal.config["val_ids"])
    assert val_images.shape[1:] == (64, 64, 3) and train_images.shape[1:] == (64, 64, 3)
    train = common.load_split(cls_goal.config["data"], "train")
    aeroplane = train.labels[:, 0] > 0
    assert len(train_images) + len(val_images) == len(train) - aeroplane.sum() + aeroplane[
        [train.ids.index(i) for i in cls_goal.config["val_ids"]]].sum()


@pytest.mark.parametrize("norm, eps, width", [("linf", 4.0, 8), ("l2", 0.5, 8), ("linf", 4.0, 0)])
def test_perturbations_respect_the_bound_exactly(norm, eps, width):
    gen = attack.build_generator(32, eps, norm, width=width)
    for w in gen.weights:  # large random weights: the raw output is far outside the budget
        w.assign(tf.random.normal(w.shape, stddev=3.0, seed=1))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.choice([0.0, 128.0, 255.0], size=(4, 32, 32, 3)), tf.float32)
    cond = tf.one_hot(tf.fill((4, 32, 32), 3), 20)
    delta = gen([images, cond])
    adv = attack.perturb(images, delta)
    assert float(tf.reduce_min(adv)) >= 0.0 and float(tf.reduce_max(adv)) <= 255.0
    if norm == "linf":
        assert float(tf.reduce_max(tf.abs(adv - images))) <= eps
        assert float(tf.reduce_max(tf.abs(delta))) > 0.9 * eps  # the budget is used, not avoided
    else:
        l2 = tf.sqrt(tf.reduce_sum(tf.square((adv - images) / 255.0), (1, 2, 3)))
        assert float(tf.reduce_max(l2)) <= eps * (1 + 1e-5)


def test_generator_training_leaves_target_alone_and_raises_target_probability(cls_goal, train_images):
    target_before = [w.copy() for w in cls_goal.target.get_weights()]
    x = tf.constant(train_images)
    p_before = float(tf.reduce_mean(cls_goal.target(x, training=False)[:, cls_goal.t]))
    keras.utils.set_random_seed(0)
    gen = attack.build_generator(64, 8.0, "linf", width=8)
    trainer = attack.GeneratorAttack(gen, cls_goal, lam=0.0)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    trainer.fit(x, batch_size=8, epochs=8, verbose=0, shuffle=True)
    p_after = float(tf.reduce_mean(cls_goal.target(trainer(x), training=False)[:, cls_goal.t]))
    assert p_after > p_before + 0.02, (p_before, p_after)
    for a, b in zip(target_before, cls_goal.target.get_weights()):
        assert np.array_equal(a, b)  # bit-identical
    assert not any(v is w for v in trainer.trainable_variables for w in cls_goal.target.weights)


def test_training_views_are_mirrored_and_shifted_copies():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (8, 40, 40, 3)), tf.float32)
    tf.random.set_seed(3)
    views = attack.shift_and_flip(images, max_shift=0.1).numpy()
    assert views.shape == images.shape
    pad = 4
    padded = np.pad(images.numpy(), [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode="reflect")
    mirrored = np.pad(images.numpy()[:, :, ::-1], [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode="reflect")
    offsets = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
               if all(np.array_equal(v, p[dy:dy + 40, dx:dx + 40]) or np.array_equal(v, m[dy:dy + 40, dx:dx + 40])
                      for v, p, m in zip(views, padded, mirrored))]
    assert len(offsets) == 1  # one shift for the batch, each image mirrored or not
    dy, dx = offsets[0]
    flipped = [not np.array_equal(v, p[dy:dy + 40, dx:dx + 40]) for v, p in zip(views, padded)]
    assert 0 < sum(flipped) < 8


@pytest.mark.parametrize("steps", [1, 10])
def test_fgsm_and_pgd_meet_the_bound_and_raise_the_target(cls_goal, train_images, steps):
    x = tf.constant(train_images)
    delta = attack.gradient_attack(cls_goal, x, 4.0, "linf", steps=steps)
    adv = x + delta
    assert float(tf.reduce_max(tf.abs(delta))) <= 4.0 + 1e-4
    assert float(tf.reduce_min(adv)) >= 0.0 and float(tf.reduce_max(adv)) <= 255.0
    before = cls_goal.target(x, training=False)[:, cls_goal.t]
    after = cls_goal.target(adv, training=False)[:, cls_goal.t]
    assert float(tf.reduce_mean(after - before)) > 0.01
    delta = attack.gradient_attack(cls_goal, x, 0.3, "l2", steps=steps)
    l2 = tf.sqrt(tf.reduce_sum(tf.square(delta / 255.0), (1, 2, 3)))
    assert float(tf.reduce_max(l2)) <= 0.3 * (1 + 1e-4)


@pytest.mark.parametrize("goal", ["cls_targeted", "cls_untargeted", "seg_targeted"])
def test_every_goal_runs_end_to_end(learned_cls, learned_seg, tiny_runs, tmp_path, goal):
    out = str(tmp_path / goal)
    target, other = (learned_seg, tiny_runs[1]) if goal == "seg_targeted" else (learned_cls, tiny_runs[0])
    metrics = attack.run(target=target, goal=goal, eps=8.0, epochs=1, batch_size=8, width=8, out=out,
                         pgd_steps=2, transfer=other, max_train=32, max_eval=16, verbose=0)
    for name in ("generator.keras", "metrics.json", "panel.png", "log.csv", "curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert metrics["target_weights_unchanged"]
    assert 0 <= metrics["final_epoch"]["val_success"] <= 1  # held-out success per epoch in the log
    saved = json.load(open(os.path.join(out, "metrics.json")))
    for method in ("generator", "fgsm", "pgd2"):
        r = saved["held_out"][method]
        assert 0 <= r["success_rate"] <= 1 and r["linf_max_255"] <= 8.0 + 1e-3
        assert "transfer_success_rate" in r and r["psnr_mean"] > 20
    gen = keras.models.load_model(os.path.join(out, "generator.keras"), safe_mode=True)
    assert gen.get_layer("bound").eps == 8.0


def test_bad_goals_give_one_line_errors(tiny_runs, tmp_path, capsys):
    cases = [
        (["--target", tiny_runs[0], "--class", "unicorn"], "unknown class 'unicorn'"),
        (["--target", tiny_runs[1], "--goal", "cls_targeted"], "holds a segmentation model"),
        (["--target", tiny_runs[0], "--goal", "seg_targeted"], "holds a classification model"),
        (["--target", str(tmp_path / "none")], "not a finished run folder"),
    ]
    for argv, message in cases:
        out = str(tmp_path / "out")
        assert common.run_cli(attack.main, argv + ["--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not os.path.exists(out)
