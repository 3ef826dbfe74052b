"""attack.py: exact budgets, margin losses that are zero iff the goal is reached, a generator that
keeps learning, a frozen target, FGSM/PGD, every goal end to end, errors."""

import json
import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import count_traces

import attack
import cls_train
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


@pytest.mark.parametrize("eps, psnr_min", [(4.0, None), (16.0, 35.0), (255.0, 30.0)])
def test_every_budget_holds_exactly_for_every_image(eps, psnr_min):
    gen = attack.build_generator(attack.feature_taps(cls_train.build_scratch(32, width=4), 32), eps, psnr_min, width=4)
    for w in gen.trainable_weights:  # large random weights: the raw output is far outside the budget
        w.assign(tf.random.normal(w.shape, stddev=3.0, seed=1))
    rng = np.random.default_rng(0)
    images = tf.constant(rng.choice([0.0, 128.0, 255.0], size=(6, 32, 32, 3)), tf.float32)
    adv = attack.perturb(images, gen([images, tf.one_hot(tf.fill((6, 32, 32), 3), 20)]))
    assert float(tf.reduce_min(adv)) >= 0.0 and float(tf.reduce_max(adv)) <= 255.0
    quality = attack.image_quality(images, adv)
    assert quality["linf"].max() <= eps * (1 + 1e-6)
    if psnr_min is None:
        assert quality["linf"].min() > 0.5 * eps  # the budget is used, not avoided
    else:
        assert quality["psnr"].min() >= psnr_min - 1e-3
        assert quality["psnr"].min() < psnr_min + 3  # and used
    # PSNR radius: a perturbation exactly at the radius has exactly that PSNR
    d = np.full((1, 32, 32, 3), attack.l2_radius(35.0, 32) / np.sqrt(32 * 32 * 3), np.float32)
    assert float(tf.image.psnr(tf.constant(d) + 100.0, tf.fill((1, 32, 32, 3), 100.0), 255.0)[0]) == \
        pytest.approx(35.0, abs=1e-3)


def test_the_l2_budget_keeps_the_shape_of_the_raw_output():
    # energy on a few pixels stays there (an L2 attack concentrates it), scaled onto the sphere
    raw = np.zeros((2, 8, 8, 3), np.float32)
    raw[0, 2, 3] = [5.0, -1.0, 0.0]
    raw[1] = np.random.default_rng(0).normal(size=(8, 8, 3))
    delta = np.asarray(attack.squash_into_budget(tf.constant(raw), 255.0, l2=10.0))
    np.testing.assert_allclose(delta, raw * 10.0 / np.sqrt((raw ** 2).sum((1, 2, 3), keepdims=True)), rtol=1e-5)
    # where a pixel would pass eps it is clipped: inside both balls
    delta = np.asarray(attack.squash_into_budget(tf.constant(raw), 4.0, l2=10.0))
    assert np.abs(delta).max() <= 4.0 and np.sqrt((delta ** 2).sum((1, 2, 3))).max() <= 10.0 + 1e-4
    assert delta[0, 2, 3, 0] == 4.0 and delta[0].sum() == pytest.approx(4.0 - 10.0 / np.sqrt(26.0))


def _LogitModel():
    """A tiny classifier with the `labels` head every project classifier has (margin tests pass
    logits directly; the model is never called)."""
    x = keras.Input((8, 8, 3))
    return keras.Model(x, keras.layers.Dense(20, activation="sigmoid", name="labels")(
        keras.layers.GlobalAveragePooling2D()(x)))


def random_logits(rng, n, scale=4.0):
    return rng.normal(0, scale, (n, 20)).astype(np.float32)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("name", ["cls_targeted", "cls_untargeted"])
def test_classifier_margins_are_zero_exactly_when_predict_reports_success(name):
    rng = np.random.default_rng(0)
    thresholds = rng.uniform(0.2, 0.8, 20)
    goal = attack.Goal(name, _LogitModel(), {"img_size": 8}, "aeroplane" if name == "cls_targeted" else None,
                       thresholds)
    z = random_logits(rng, 4000) - 2.0  # many images where no class passes: the top-class rule matters
    reference = np.zeros((4000, 20), np.float32)
    reference[np.arange(4000), rng.integers(0, 20, 4000)] = 1
    reference[np.arange(4000), rng.integers(0, 20, 4000)] = 1
    margin = goal.margin(tf.constant(z), tf.constant(reference)).numpy()
    success, _ = goal.judge(sigmoid(z), reference)  # cls_train.decide, as predict.py reports
    assert success.mean() > 0.1 and (~success).mean() > 0.1  # both sides are tested
    assert np.array_equal(margin <= 0, success)
    assert (margin >= 0).all()


def test_classifier_margin_known_answers():
    thresholds = np.full(20, 0.5)  # tau = 0 for every class
    goal = attack.Goal("cls_targeted", _LogitModel(), {"img_size": 8}, "aeroplane", thresholds)
    z = np.full((3, 20), -5.0, np.float32)
    z[0, 0] = 1.0  # aeroplane passes its threshold: margin 0
    z[1, 0], z[1, 3] = -2.0, -1.0  # nothing passes, boat is top: min(2 (to the threshold), 0 + 1 (to the top))
    z[2, 0], z[2, 3] = -4.0, 3.0  # boat passes: min(4, 3 + 7)
    assert goal.margin(tf.constant(z), tf.zeros((3, 20))).numpy() == pytest.approx([0.0, 1.0, 4.0])
    log_goal = attack.Goal("cls_targeted", _LogitModel(), {"img_size": 8}, "aeroplane", thresholds, margin_loss="log")
    reference = np.zeros((3, 20), np.float32)
    reference[:, 3] = 1  # boat was reported: keep it above its threshold (0), weight 0.5
    loss = log_goal.loss(tf.constant(z), tf.constant(reference)).numpy()
    assert loss == pytest.approx(np.log1p(np.array([0.0, 1.0, 4.0]) + 0.5 * np.array([5.0, 1.0, 0.0])))
    untargeted = attack.Goal("cls_untargeted", _LogitModel(), {"img_size": 8}, None, thresholds)
    reference = np.zeros((3, 20), np.float32)
    reference[:, 14] = 1  # person was reported
    z = np.full((3, 20), -5.0, np.float32)
    z[0, 14], z[0, 2] = 2.0, 1.0  # person still passes (2) and bird passes (0)
    z[1, 14], z[1, 2] = -1.0, -3.0  # person below, but top and nothing passes: min(3, 2)
    z[2, 14], z[2, 2] = -1.0, 0.5  # person below, bird passes: success
    assert untargeted.margin(tf.constant(z), tf.constant(reference)).numpy() == pytest.approx([2.0, 2.0, 0.0])


def test_confidence_asks_the_decision_to_survive_a_shift_of_every_logit():
    """Goal.loss(confidence=k) is zero only when the decision survives every logit moving k against
    the goal, for all three goals (known answers)."""
    thresholds = np.full(20, 0.5)  # tau = 0
    targeted = attack.Goal("cls_targeted", _LogitModel(), {"img_size": 8}, "aeroplane", thresholds)
    z = np.full((2, 20), -1.5, np.float32)
    z[0, 0], z[1, 0] = 1.0, 3.0  # aeroplane passes by 1 and by 3
    no_keep = tf.zeros((2, 20))
    assert targeted.loss(tf.constant(z), no_keep).numpy() == pytest.approx([0.0, 0.0])
    # shifted by 2: aeroplane -1 and 1, the others 0.5 (passing): min(1 to the threshold, 0.5 + 1.5 to the top)
    assert targeted.loss(tf.constant(z), no_keep, confidence=2.0).numpy() == pytest.approx([1.0, 0.0])
    keep_boat = np.zeros((2, 20), np.float32)
    keep_boat[:, 3] = 1  # boat was reported and now sits 1.5 below its threshold: keep term 0.5 x 1.5, unshifted
    assert targeted.loss(tf.constant(z), tf.constant(keep_boat), 2.0).numpy() == pytest.approx([1.75, 0.75])
    untargeted = attack.Goal("cls_untargeted", _LogitModel(), {"img_size": 8}, None, thresholds)
    reference = np.zeros((2, 20), np.float32)
    reference[:, 14] = 1  # person was reported
    z = np.full((2, 20), -5.0, np.float32)
    z[:, 2], z[0, 14], z[1, 14] = 1.0, -0.5, -3.0  # bird passes by 1; person below its threshold by 0.5 and by 3
    assert untargeted.loss(tf.constant(z), tf.constant(reference)).numpy() == pytest.approx([0.0, 0.0])
    # shifted by 2: person 1.5 and -1, bird -1 (passing nothing); image 0: 1.5 + min(1, 2.5), image 1: a tie at the top
    assert untargeted.loss(tf.constant(z), tf.constant(reference), 2.0).numpy() == pytest.approx([2.5, 0.0])
    seg = attack.Goal("seg_targeted", _LogitModel(), {"img_size": 8}, "chair", keep_weight=0.0)
    z = np.zeros((1, 8, 8, 21), np.float32)
    z[..., 9] = 1.0  # chair leads every pixel by 1
    reference = tf.zeros((1, 8, 8), tf.int32)
    assert seg.loss(tf.constant(z), reference, confidence=0.4).numpy() == pytest.approx([0.0])
    assert seg.loss(tf.constant(z), reference, confidence=3.0).numpy() == pytest.approx([5.0])


def test_segmentation_margin_is_zero_exactly_when_enough_of_the_box_is_the_class():
    rng = np.random.default_rng(1)
    goal = attack.Goal("seg_targeted", _LogitModel(), {"img_size": 8}, "chair")
    box = goal.region.numpy() > 0  # the central 4x4 of 8x8
    z = rng.normal(0, 1, (200, 8, 8, 21)).astype(np.float32)
    for k in range(200):  # chair wins on a random share of the box
        wins = rng.random((8, 8)) < rng.uniform(0.5, 1.0)
        z[k, ..., 9] = np.where(wins, z[k].max(-1) + 1, z[k].min(-1) - 1)
    reference = np.zeros((200, 8, 8), np.int32)
    margin = goal.margin(tf.constant(z), tf.constant(reference)).numpy()
    success, share = goal.judge(z, reference)
    assert 0.1 < success.mean() < 0.9
    assert np.array_equal(margin <= 0, success)
    assert share == pytest.approx(((z.argmax(-1) == 9) & box).sum((1, 2)) / box.sum())


@pytest.fixture(scope="module")
def trained_attack(learned_cls, train_images):
    """A generator trained for a few epochs on the demo classifier (untargeted: the demo classifier
    reports clear classes, so the goal is reachable and learning is visible in a few steps). The
    budget is 32/255: the test classifier's margins depend on the machine that trained it, and at
    8/255 one trained on an AVX2-only CPU had none of its 139 images flipped after 6 epochs (mean
    margin 2.30 -> 1.70), where 32/255 flipped 12% (2.30 -> 0.45)."""
    goal = attack.load_target(learned_cls, "cls_untargeted", None)
    x = tf.constant(train_images)
    target_before = [w.copy() for w in goal.target.get_weights()]
    keras.utils.set_random_seed(0)
    generator = attack.build_generator(attack.feature_taps(goal.target, 64), 32.0, None, width=8)
    trainer = attack.GeneratorAttack(generator, goal)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    reference = goal.reference(goal.logits(x))
    margin = goal.margin(goal.logits(x), reference)
    before = (float(tf.reduce_mean(tf.cast(margin <= 0, tf.float32))), float(tf.reduce_mean(margin)))
    trainer.fit(x, batch_size=16, epochs=6, verbose=0, shuffle=True)
    return goal, trainer, x, target_before, before


def test_generator_steps_raise_the_success_rate(trained_attack):
    goal, trainer, x, _, (success_before, margin_before) = trained_attack
    reference = goal.reference(goal.logits(x))
    margin = goal.margin(goal.logits(trainer(x)), reference)
    success_after = float(tf.reduce_mean(tf.cast(margin <= 0, tf.float32)))
    # The mean margin is the robust measure of learning; the share flipped depends on where the margins
    # of the machine's classifier sit: 2.30 -> 0.45 flipped 12% on an AVX2 EPYC, 2.26 -> 0.60 flipped
    # 4.3% (6 of 139 images) on an AVX-512 Xeon. About 140 images: +2 points is 3 more fooled images
    assert success_after >= success_before + 0.02, (success_before, success_after)
    assert float(tf.reduce_mean(margin)) < 0.5 * margin_before, (margin_before, float(tf.reduce_mean(margin)))


def test_target_stays_frozen_and_generator_gradients_stay_alive(trained_attack):
    goal, trainer, x, target_before, _ = trained_attack
    for a, b in zip(target_before, goal.target.get_weights()):
        assert np.array_equal(a, b)  # bit-identical
    assert not any(v is w for v in trainer.trainable_variables for w in goal.target.weights)
    images = attack.shift_and_flip(x[:16])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(trainer.losses_on(images, training=True)[0])
    grads = tape.gradient(loss, trainer.generator.trainable_variables)
    dead = [v.path for v, g in zip(trainer.generator.trainable_variables, grads)
            if g is None or float(tf.reduce_max(tf.abs(g))) == 0.0]
    assert float(loss) > 0 and not dead  # no saturation: every weight still gets a gradient


def test_the_gate_passes_exactly_where_the_target_unit_is_active():
    features = tf.constant([[[[-1.0, 0.0, 1e-6, 6.0]]]])
    np.testing.assert_array_equal(attack.ActiveUnits()(features).numpy(), [[[[0.0, 0.0, 1.0, 1.0]]]])


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
def test_fgsm_and_pgd_meet_the_budget_and_move_towards_the_goal(cls_goal, train_images, steps):
    x = tf.constant(train_images)
    reference = cls_goal.reference(cls_goal.logits(x))
    delta = attack.gradient_attack(cls_goal, x, 4.0, None, steps=steps)
    adv = x + delta
    assert float(tf.reduce_max(tf.abs(delta))) <= 4.0 + 1e-4
    assert float(tf.reduce_min(adv)) >= 0.0 and float(tf.reduce_max(adv)) <= 255.0
    before = cls_goal.margin(cls_goal.logits(x), reference)
    after = cls_goal.margin(cls_goal.logits(adv), reference)
    assert float(tf.reduce_mean(before - after)) > 0.1
    delta = attack.gradient_attack(cls_goal, x, 8.0, attack.l2_radius(40.0, 64), steps=steps)
    assert attack.image_quality(x, x + delta)["psnr"].min() >= 40.0 - 1e-3


def test_refinement_moves_only_the_images_not_fooled_yet(cls_goal, train_images):
    """A refinement from a start (the hybrid) leaves every image the start already fools exactly as
    it was, and lowers the margin of the others."""
    x = tf.constant(train_images)
    reference = cls_goal.reference(cls_goal.logits(x))
    start = attack.gradient_attack(cls_goal, x, 8.0, None, steps=3)  # fools some images, not all
    fooled = (cls_goal.margin(cls_goal.logits(x + start), reference) <= 0).numpy()
    assert 0 < fooled.sum() < len(fooled)
    refined = attack.gradient_attack(cls_goal, x, 8.0, None, steps=1, start=start)
    moved = np.abs((refined - start).numpy()).max((1, 2, 3)) > 0
    np.testing.assert_array_equal(moved, ~fooled)
    assert float(tf.reduce_max(tf.abs(refined))) <= 8.0 + 1e-4
    before = cls_goal.margin(cls_goal.logits(x + start), reference).numpy()[~fooled]
    after = cls_goal.margin(cls_goal.logits(x + refined), reference).numpy()[~fooled]
    assert after.mean() < before.mean()


def test_random_noise_control_uses_the_budget():
    x = tf.fill((2, 16, 16, 3), 128.0)
    d = attack.random_noise(x, 8.0).numpy()
    assert set(np.unique(d)) == {-8.0, 8.0}


def test_evaluate_times_the_steady_state_not_the_first_call(cls_goal, train_images):
    """A method whose first call per batch shape costs 0.5 s (as tracing a compiled function does)
    is timed at its per-image cost: the untimed warm-up takes the one-off cost."""
    shapes = set()

    def craft(x):
        if x.shape[0] not in shapes:
            shapes.add(x.shape[0])
            time.sleep(0.5)
        return x

    summary, adv = attack.evaluate(cls_goal, train_images[:20], craft, batch_size=8)  # batches of 8, 8, 4
    assert shapes == {8, 4}
    assert summary["ms_per_image"] < 20 and summary["images"] == 20
    np.testing.assert_array_equal(adv, train_images[:20])


def test_wilson_interval_known_values():
    lo, hi = attack.wilson(75, 150)
    assert lo == pytest.approx(0.4208, abs=1e-3) and hi == pytest.approx(0.5792, abs=1e-3)
    assert attack.wilson(0, 150)[0] == 0.0 and attack.wilson(150, 150)[1] == 1.0


@pytest.mark.parametrize("goal", ["cls_targeted", "cls_untargeted", "seg_targeted"])
def test_every_goal_runs_end_to_end(learned_cls, learned_seg, tiny_runs, tmp_path, monkeypatch, goal):
    out = str(tmp_path / goal)
    target, other = (learned_seg, tiny_runs[1]) if goal == "seg_targeted" else (learned_cls, tiny_runs[0])
    traces = count_traces(monkeypatch, attack.GeneratorAttack)
    # a time limit shorter than one epoch: the run stops after its first epoch and says so
    metrics = attack.run(target=target, goal=goal, eps=8.0, psnr_min=30.0, epochs=3, time_limit=1e-4, batch_size=8,
                         width=4, gate=goal == "cls_untargeted", out=out, pgd_steps=2, hybrid_steps=1, budgets=[4.0],
                         transfer=other, max_train=32, max_eval=16, verbose=0)
    assert metrics["epochs"] == 1 and metrics["epochs_configured"] == 3 and metrics["stopped_by_time_limit"]
    assert len(traces) == 1  # the optimizer built before fit: no second trace of the step
    assert metrics["train_image_gradients"] == 32
    for name in ("generator.keras", "metrics.json", "panel.png", "log.csv", "curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert metrics["target_weights_unchanged"]
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert "image_gradients" in open(os.path.join(out, "log.csv")).readline()
    for method in ("generator", "random_noise", "fgsm", "pgd2", "generator+refine1"):
        r = saved["held_out"][method]
        assert r["linf_max_255"] <= 8.0 + 1e-3 and r["psnr_min"] >= 30.0 - 1e-3
        assert "transfer_success_rate" in r and r["success_95ci"][0] <= r["success_rate"] <= r["success_95ci"][1]
    cost = {m: (r["target_forward_per_image"], r["target_backward_per_image"]) for m, r in saved["held_out"].items()}
    assert cost["generator"] == (1, 0) and cost["pgd2"] == (3, 2)  # one target (encoder) forward
    assert set(saved["budget_table"]["4"]) == {"generator_rescaled", "pgd2", "generator_rescaled_score", "pgd2_score"}
    gen = keras.models.load_model(os.path.join(out, "generator.keras"), safe_mode=True)
    assert gen.get_layer("budget").eps == 8.0
    gated = any(isinstance(layer, attack.ActiveUnits) for layer in gen.layers)  # saved and loaded with its gate
    assert saved["gate"] == gated == (goal == "cls_untargeted")


def test_generator_success_matches_the_product_rule(cls_goal, train_images):
    """The success the attack reports is what predict.py would report: cls_train.decide on the
    model's probabilities, not a rule of the attack's own."""
    probs = cls_goal.target(tf.constant(train_images), training=False).numpy()
    ok, _ = cls_goal.judge(probs, np.zeros_like(probs))
    assert np.array_equal(ok, cls_train.decide(probs, cls_goal.thresholds)[:, 0] > 0)


def test_bad_goals_give_one_line_errors(tiny_runs, tmp_path, capsys):
    cases = [
        (["--target", tiny_runs[0], "--class", "unicorn"], "unknown class 'unicorn'"),
        (["--target", tiny_runs[1], "--goal", "cls_targeted"], "holds a segmentation model"),
        (["--target", tiny_runs[0], "--goal", "seg_targeted"], "holds a classification model"),
        (["--target", str(tmp_path / "none")], "not a finished run folder"),
        (["--target", tiny_runs[0], "--eps", "0"], "--eps"),
        (["--target", tiny_runs[0], "--psnr-min", "-3"], "--psnr-min"),
    ]
    for argv, message in cases:
        out = str(tmp_path / "out")
        assert common.run_cli(attack.main, argv + ["--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not os.path.exists(out)
