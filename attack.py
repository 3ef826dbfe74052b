"""Adversarial attacks: train a perturbation generator against a frozen classifier or segmenter.

    python attack.py --target runs/cls --goal cls_targeted --class aeroplane --eps 8 --out runs/attack_cls
    python attack.py --target runs/cls --goal cls_untargeted --eps 8 --out runs/attack_untargeted
    python attack.py --target runs/seg --goal seg_targeted --class chair --eps 8 --out runs/attack_seg

The generator is an encoder-decoder CNN f(x, c) -> delta, conditioned on the deceptive target c
(class one-hot maps; for segmentation the target class painted on the target region), bounded by
construction: delta = eps * tanh(raw) for --norm linf (eps in pixel units out of 255), or raw
scaled into the L2 ball of radius eps (in [0, 1] pixel units) for --norm l2; x + delta is
clipped to [0, 255]. It trains with a custom train_step against the frozen target model
(loss = attack loss + lambda * mean squared perturbation) on the target run's training images,
and is evaluated on its validation images, which it never saw, beside FGSM and PGD-10 at the
same budget. Attacks act on the model's input image (resized to its input size).

The run folder gets generator.keras, metrics.json, log.csv and curves.png (loss, success and
perturbation size per epoch on the training and the held-out images), and panel.png (original,
amplified perturbation, perturbed image, and the model's labels or masks before and after).
"""

import argparse
import os
import sys
import time

import common  # noqa: I001  (first: it quiets TensorFlow's start-up logging before Keras loads it)
import keras
import numpy as np
import tensorflow as tf
from common import CLASSES, NUM_CLASSES

GOALS = {"cls_targeted": "classification", "cls_untargeted": "classification", "seg_targeted": "segmentation"}
DEFAULT_CLASS = {"cls_targeted": "aeroplane", "seg_targeted": "chair"}


# ----------------------------------------------------------------------------------------------
# Generator

@keras.saving.register_keras_serializable("voc")
class Bound(keras.layers.Layer):
    """Maps the generator's raw output into the perturbation budget: eps * tanh(raw) (linf, eps
    in pixel units out of 255), or raw rescaled into the L2 ball of radius eps (l2, eps in [0, 1]
    pixel units, per image)."""

    def __init__(self, eps, norm="linf", **kwargs):
        super().__init__(**kwargs)
        self.eps, self.norm = float(eps), norm

    def call(self, raw):
        ops = keras.ops
        if self.norm == "linf":
            return self.eps * ops.tanh(raw)
        norm = ops.sqrt(ops.sum(ops.square(raw), axis=(1, 2, 3), keepdims=True) + 1e-12)
        return 255.0 * raw * ops.minimum(1.0, self.eps / norm)  # raw in [0, 1] units -> pixel units

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "norm": self.norm}


@keras.saving.register_keras_serializable("voc")
class Template(keras.layers.Layer):
    """A learned perturbation per condition channel and pixel: out[h, w] = sum_c cond[h, w, c] *
    T[h, w, c]. With one-hot conditions this is a universal (image-independent) perturbation per
    target class, which the image-dependent decoder refines. T is stored divided by `gain` so
    that Adam moves it about `gain` times faster than the convolution weights."""

    def __init__(self, gain=100.0, **kwargs):
        super().__init__(**kwargs)
        self.gain = gain

    def build(self, input_shape):
        _, h, w, c = input_shape
        self.t = self.add_weight(shape=(h, w, c, 3), initializer="zeros", name="template")

    def call(self, cond):
        return self.gain * keras.ops.einsum("bhwc,hwcd->bhwd", cond, self.t)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


def build_generator(img_size, eps, norm="linf", width=32):
    """Encoder-decoder: the image (scaled to [0, 1]) and a 20-channel condition map in, a bounded
    perturbation (pixel units, same size as the image) out. Two stride-2 encoder steps, two
    residual blocks, two resize-conv decoder steps with skips, plus a class-conditioned template.
    width=0 keeps only the template and a per-pixel colour term of the image (a 1x1 convolution):
    nearly one universal perturbation per condition, which cannot memorise training images."""
    image = keras.Input((img_size, img_size, 3), name="image")
    condition = keras.Input((img_size, img_size, NUM_CLASSES), name="condition")
    scaled = keras.layers.Rescaling(1 / 255.0)(image)
    if width == 0:
        raw = keras.layers.Conv2D(3, 1, kernel_initializer="zeros", name="colour")(scaled)
    else:
        raw = encoder_decoder(keras.layers.Concatenate()([scaled, condition]), width)
    raw = keras.layers.Add()([raw, Template(name="template")(condition)])
    return keras.Model([image, condition], Bound(eps, norm, name="bound")(raw), name="perturbation_generator")


def encoder_decoder(x, width):
    """The image-dependent part of the generator: raw perturbation (3 channels, zero at the start)."""
    def conv(x, filters, stride=1, act=True):  # no BatchNorm: training and inference behave alike
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same")(x)
        return keras.layers.ReLU()(x) if act else x

    s1 = conv(x, width)
    s2 = conv(s1, 2 * width, 2)
    x = conv(s2, 4 * width, 2)
    for _ in range(2):
        x = keras.layers.ReLU()(keras.layers.Add()([x, conv(conv(x, 4 * width), 4 * width, act=False)]))
    x = conv(keras.layers.Concatenate()([keras.layers.UpSampling2D(interpolation="bilinear")(x), s2]), 2 * width)
    x = conv(keras.layers.Concatenate()([keras.layers.UpSampling2D(interpolation="bilinear")(x), s1]), width)
    return keras.layers.Conv2D(3, 3, padding="same", kernel_initializer="zeros", name="raw")(x)


def perturb(images, delta):
    return keras.ops.clip(images + delta, 0.0, 255.0)


def shift_and_flip(images, max_shift=0.1):
    """Training views: each image mirrored at random, the batch moved by up to `max_shift` of its
    side (reflected at the border)."""
    images = tf.where(tf.random.uniform((tf.shape(images)[0], 1, 1, 1)) < 0.5, images[:, :, ::-1], images)
    size = images.shape[1]
    pad = int(round(size * max_shift))
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    dy, dx = tf.unstack(tf.random.uniform((2,), 0, 2 * pad + 1, tf.int32))
    return padded[:, dy:dy + size, dx:dx + size]


# ----------------------------------------------------------------------------------------------
# Goals: what the target model should see, as a loss (shared by the generator, FGSM and PGD)

class Goal:
    """One attack goal against one target model: the condition map for the generator, the loss
    to minimise on the target's outputs, and the success test."""

    def __init__(self, name, target, config, target_class=None, thresholds=None, region=0.5, keep_weight=0.5):
        self.name, self.target, self.config = name, target, config
        self.t = None if target_class is None else CLASSES.index(target_class)
        self.thresholds = None if thresholds is None else tf.constant(thresholds, tf.float32)
        self.keep_weight = keep_weight
        size = config["img_size"]
        box = np.zeros((size, size), np.float32)  # the central box, `region` of each side
        lo, hi = int(round(size * (1 - region) / 2)), int(round(size * (1 + region) / 2))
        box[lo:hi, lo:hi] = 1
        self.region = tf.constant(box)

    def decisions(self, probs):
        """The classifier's labels with its own thresholds and the top-class rule."""
        chosen = (probs >= self.thresholds) | (probs >= tf.reduce_max(probs, -1, keepdims=True))
        return tf.cast(chosen, tf.float32)

    def clean(self, images):
        """What the model says about the unperturbed images (the reference to keep or remove)."""
        out = self.target(images, training=False)
        return self.decisions(out) if GOALS[self.name] == "classification" else tf.argmax(out, -1, output_type=tf.int32)

    def condition(self, reference):
        batch = tf.shape(reference)[0]
        size = self.config["img_size"]
        if self.name == "cls_untargeted":  # the classes to remove
            vec = reference
        else:
            vec = tf.tile(tf.one_hot([self.t], NUM_CLASSES), [batch, 1])
        cond = tf.broadcast_to(vec[:, None, None, :], (batch, size, size, NUM_CLASSES))
        if self.name == "seg_targeted":
            cond = cond * self.region[None, :, :, None]
        return cond

    def loss(self, outputs, reference):
        """Per-image attack loss (lower = closer to the goal)."""
        eps = 1e-12  # float32 sigmoid outputs go far below 1e-6; a clip there would stop their gradient
        if self.name == "cls_targeted":
            p = tf.clip_by_value(outputs, eps, 1 - 1e-7)  # (1 - 1e-12 rounds to 1 in float32)
            want = tf.one_hot(self.t, NUM_CLASSES)
            keep = tf.where(want > 0, 1.0, reference)  # the target on, every other label as before
            bce = -(keep * tf.math.log(p) + (1 - keep) * tf.math.log(1 - p))
            return bce[:, self.t] + self.keep_weight * tf.reduce_mean(bce * (1 - want), -1)
        if self.name == "cls_untargeted":
            p = tf.clip_by_value(outputs, eps, 1 - 1e-7)
            return tf.reduce_sum(-reference * tf.math.log(1 - p), -1) / tf.maximum(tf.reduce_sum(reference, -1), 1)
        ce_target = keras.losses.sparse_categorical_crossentropy(
            tf.fill(tf.shape(reference), self.t + 1), outputs, from_logits=True)
        ce_keep = keras.losses.sparse_categorical_crossentropy(reference, outputs, from_logits=True)
        region = self.region[None]
        inside = tf.reduce_sum(ce_target * region, (1, 2)) / tf.reduce_sum(region)
        outside = tf.reduce_sum(ce_keep * (1 - region), (1, 2)) / tf.reduce_sum(1 - region)
        return inside + self.keep_weight * outside

    def success(self, outputs, reference):
        """Per image: did the attack reach the goal? And the score it is judged by."""
        if self.name == "cls_targeted":
            reported = self.decisions(outputs)
            return reported[:, self.t] > 0, outputs[:, self.t]
        if self.name == "cls_untargeted":
            kept = tf.reduce_sum(self.decisions(outputs) * reference, -1)
            return kept == 0, tf.reduce_sum(outputs * reference, -1) / tf.maximum(tf.reduce_sum(reference, -1), 1)
        hit = tf.cast(tf.argmax(outputs, -1, output_type=tf.int32) == self.t + 1, tf.float32)
        match = tf.reduce_sum(hit * self.region[None], (1, 2)) / tf.reduce_sum(self.region)
        return match >= 0.8, match


# ----------------------------------------------------------------------------------------------
# Training the generator: a Model subclass with a custom train_step

class GeneratorAttack(keras.Model):
    """Trains `generator` so that goal.target(x + generator(x, c)) reaches the goal; the target
    model is frozen (never in the trainable variables, always called in inference mode)."""

    def __init__(self, generator, goal, lam=0.05, augment=True, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.goal, self.lam, self.augment = generator, goal, lam, augment
        goal.target.trainable = False
        self.attack_loss = keras.metrics.Mean(name="attack_loss")
        self.size_loss = keras.metrics.Mean(name="size")
        self.success = keras.metrics.Mean(name="success")

    def call(self, images):
        reference = self.goal.clean(images)
        return perturb(images, self.generator([images, self.goal.condition(reference)], training=False))

    def losses_on(self, images, training):
        """Mean attack loss, mean perturbation size and per-image success on one batch."""
        reference = self.goal.clean(images)
        delta = self.generator([images, self.goal.condition(reference)], training=training)
        outputs = self.goal.target(perturb(images, delta), training=False)
        attack = tf.reduce_mean(self.goal.loss(outputs, reference))
        size = tf.reduce_mean(tf.square(delta / 255.0)) * 1e4  # ~ (grey levels)^2 / 6.5
        return attack, size, self.goal.success(outputs, reference)[0]

    def train_step(self, data):
        images = data[0] if isinstance(data, tuple) else data
        if self.augment:  # new views of the same few hundred images, against memorising them
            images = shift_and_flip(images)
        with tf.GradientTape() as tape:
            attack, size, ok = self.losses_on(images, training=True)
            loss = attack + self.lam * size
        grads = tape.gradient(loss, self.generator.trainable_variables)
        self.optimizer.apply(grads, self.generator.trainable_variables)
        return self.record(attack, size, ok)

    def test_step(self, data):
        return self.record(*self.losses_on(data[0] if isinstance(data, tuple) else data, training=False))

    def record(self, attack, size, ok):
        self.attack_loss.update_state(attack)
        self.size_loss.update_state(size)
        self.success.update_state(tf.cast(ok, tf.float32))
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [self.attack_loss, self.size_loss, self.success]


# ----------------------------------------------------------------------------------------------
# Per-image baselines at the same budget

def project(delta, eps, norm):
    if norm == "linf":
        return tf.clip_by_value(delta, -eps, eps)
    n = tf.sqrt(tf.reduce_sum(tf.square(delta / 255.0), (1, 2, 3), keepdims=True) + 1e-12)
    return delta * tf.minimum(1.0, eps / n)


def gradient_attack(goal, images, eps, norm="linf", steps=10, step_size=None):
    """FGSM (steps=1, step = eps) or PGD (steps > 1, step = 2.5 eps / steps, no random start):
    signed (linf) or normalised (l2) gradient steps down the goal's loss, projected onto the
    budget and the valid pixel range. Costs `steps` forward+backward passes per image."""
    reference = goal.clean(images)
    step_size = step_size or (eps if steps == 1 else 2.5 * eps / steps)
    delta = tf.zeros_like(images)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            loss = tf.reduce_sum(goal.loss(goal.target(perturb(images, delta), training=False), reference))
        g = tape.gradient(loss, delta)
        if norm == "linf":
            step = step_size * tf.sign(g)
        else:  # eps and step in [0, 1] units; delta in pixel units
            step = 255.0 * step_size * g / (tf.sqrt(tf.reduce_sum(tf.square(g), (1, 2, 3), keepdims=True)) + 1e-12)
        delta = project(delta - step, eps, norm)
        delta = perturb(images, delta) - images  # stay in [0, 255]
    return delta


# ----------------------------------------------------------------------------------------------
# Evaluation

def image_quality(images, adv):
    """Per image: L-inf and L2 of the perturbation (in [0, 1] units), PSNR (dB), SSIM."""
    d = (adv - images) / 255.0
    return {"linf": tf.reduce_max(tf.abs(d), (1, 2, 3)).numpy(),
            "l2": tf.sqrt(tf.reduce_sum(tf.square(d), (1, 2, 3))).numpy(),
            "psnr": tf.image.psnr(adv, images, 255.0).numpy(),
            "ssim": tf.image.ssim(adv, images, 255.0).numpy()}


def evaluate(goal, images, craft, batch_size=16, transfer=None):
    """Run one crafting method over held-out images; returns summary numbers and per-image
    arrays. craft(batch) -> perturbed batch. transfer: another Goal (other model) to judge too."""
    rows = {k: [] for k in ("ok_before", "ok", "score_before", "score_after", "linf", "l2", "psnr", "ssim", "seconds")}
    if transfer is not None:
        rows.update(transfer_ok=[], transfer_ok_before=[])
    adv_all = []
    for k in range(0, len(images), batch_size):
        x = tf.constant(images[k:k + batch_size])
        reference = goal.clean(x)
        t = time.time()
        adv = craft(x)
        rows["seconds"].append(np.full(len(x), (time.time() - t) / len(x)))
        ok_before, before = goal.success(goal.target(x, training=False), reference)
        ok, after = goal.success(goal.target(adv, training=False), reference)
        rows["ok_before"].append(ok_before.numpy())
        rows["ok"].append(ok.numpy())
        rows["score_before"].append(before.numpy())
        rows["score_after"].append(after.numpy())
        for key, v in image_quality(x, adv).items():
            rows[key].append(v)
        if transfer is not None:
            size = transfer.config["img_size"]
            xt, at = tf.image.resize(x, (size, size)), tf.image.resize(adv, (size, size))
            ref_t = transfer.clean(xt)
            rows["transfer_ok"].append(transfer.success(transfer.target(at, training=False), ref_t)[0].numpy())
            rows["transfer_ok_before"].append(transfer.success(transfer.target(xt, training=False), ref_t)[0].numpy())
        adv_all.append(adv.numpy())
    per_image = {k: np.concatenate(v) for k, v in rows.items()}
    summary = {"success_rate": float(per_image["ok"].mean()),
               "success_rate_clean": float(per_image["ok_before"].mean()),
               "score_before": float(per_image["score_before"].mean()),
               "score_after": float(per_image["score_after"].mean()),
               "linf_mean_255": float(per_image["linf"].mean() * 255),
               "linf_max_255": float(per_image["linf"].max() * 255),
               "l2_mean": float(per_image["l2"].mean()), "psnr_mean": float(per_image["psnr"].mean()),
               "ssim_mean": float(per_image["ssim"].mean()),
               "ms_per_image": float(per_image["seconds"].mean() * 1000), "images": len(images)}
    if transfer is not None:
        summary["transfer_success_rate"] = float(per_image["transfer_ok"].mean())
        summary["transfer_success_rate_clean"] = float(per_image["transfer_ok_before"].mean())
    return summary, per_image, np.concatenate(adv_all)


# ----------------------------------------------------------------------------------------------
# Pictures

def describe(goal, images):
    """Per image: a caption of the model's labels, or its mask as a colour picture."""
    out = goal.target(tf.constant(images), training=False)
    if GOALS[goal.name] == "classification":
        d = goal.decisions(out).numpy()
        return [common.wrap_names([f"{CLASSES[c]} {p[c]:.2f}" for c in np.flatnonzero(r)], 26)
                for r, p in zip(d, out.numpy())]
    return [common.colorize(m) for m in tf.argmax(out, -1).numpy().astype(np.uint8)]


def panel(path, goal, images, adv, n=6, title=""):
    """Rows of: original | perturbation (amplified) | perturbed | model before | model after."""
    images, adv = images[:n], adv[:n]
    before, after = describe(goal, images), describe(goal, adv)
    tiles = []
    for x, a, b, f in zip(images, adv, before, after):
        d = a - x
        gain = 127.0 / max(float(np.abs(d).max()), 1e-6)
        tiles.append(common.tile(x.astype(np.uint8), 128, "original"))
        tiles.append(common.tile(np.clip(127.5 + d * gain, 0, 255).astype(np.uint8), 128,
                                 f"perturbation x{gain:.0f}\nL-inf {np.abs(d).max():.1f}/255"))
        tiles.append(common.tile(np.clip(a, 0, 255).astype(np.uint8), 128, "perturbed"))
        if isinstance(b, str):
            tiles.append(common.tile(x.astype(np.uint8) // 4 + 190, 128, f"before:\n{b}"))
            tiles.append(common.tile(a.astype(np.uint8) // 4 + 190, 128, f"after:\n{f}"))
        else:
            tiles.append(common.tile(b, 128, "mask before"))
            tiles.append(common.tile(f, 128, "mask after"))
    pic = common.grid(tiles, 5, title=title)
    if GOALS[goal.name] == "segmentation":
        pic = common.with_legend(pic, range(NUM_CLASSES))
    common.save_png(path, pic)


# ----------------------------------------------------------------------------------------------
# The whole attack

def load_target(run_dir, goal_name, target_class):
    task = GOALS[goal_name]
    if task == "classification":
        import cls_train
        model, config, thresholds = cls_train.load_run(run_dir)
    else:
        model, config = common.load_run(run_dir, "segmentation")
        thresholds = None
    return Goal(goal_name, model, config, target_class, thresholds)


def attack_images(config, data, held_out, exclude_class=None, limit=None):
    """Images at the model's input size (a float32 batch array) of the run's validation split
    (held_out=True) or of the images it trained on; optionally without those containing a class."""
    split = common.load_split(data or config["data"], "train")
    val_ids = set(config["val_ids"])
    keep = [k for k, i in enumerate(split.ids) if (i in val_ids) == held_out]
    if exclude_class is not None:
        keep = [k for k in keep if split.labels[k, CLASSES.index(exclude_class)] <= 0]
    keep = keep[:limit] if limit else keep
    part = split.subset(keep)
    examples = common.load_examples(part, masks=False)
    ds = common.make_dataset(part, examples, config["img_size"], 32, fit=config["fit"])
    return part, np.concatenate([x.numpy() for x, _ in ds])


def run(target="runs/cls", goal="cls_targeted", target_class=None, eps=8.0, norm="linf", lam=0.05, epochs=10,
        batch_size=16, lr=1e-3, width=32, augment=True, out="runs/attack", data=None, transfer=None, pgd_steps=10,
        max_train=None, max_eval=None, seed=0, overwrite=False, verbose=None):
    """Train a generator for one goal, evaluate it beside FGSM and PGD, write the run folder.
    Returns the metrics dict."""
    if goal not in GOALS:
        raise common.UserError(f"unknown --goal {goal!r}; choose from {', '.join(GOALS)}")
    if goal == "cls_untargeted":
        target_class = None
    else:
        target_class = target_class or DEFAULT_CLASS[goal]
        if target_class not in CLASSES:
            raise common.UserError(f"unknown class {target_class!r}; choose from {', '.join(CLASSES)}")
    if norm not in ("linf", "l2") or eps <= 0:
        raise common.UserError("--norm must be linf or l2 and --eps positive")
    if width < 0 or epochs < 1:
        raise common.UserError("--width must be 0 or more and --epochs at least 1")
    verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
    the_goal = load_target(target, goal, target_class)
    other = load_target(transfer, goal, target_class) if transfer else None
    with common.run_folder(out, overwrite=overwrite):
        keras.utils.set_random_seed(seed)
        excluded = target_class if goal == "cls_targeted" else None
        _, train_images = attack_images(the_goal.config, data, False, excluded, max_train)
        _, val_images = attack_images(the_goal.config, data, True, excluded, max_eval)
        print(f"goal {goal}{' -> ' + target_class if target_class else ''}, {norm} eps {eps:g}: "
              f"{len(train_images)} training and {len(val_images)} held-out images", flush=True)

        size = the_goal.config["img_size"]
        generator = build_generator(size, eps, norm, width)
        trainer = GeneratorAttack(generator, the_goal, lam, augment)
        trainer.compile(optimizer=keras.optimizers.Adam(lr))
        weights_before = [w.copy() for w in the_goal.target.get_weights()]
        ds = (tf.data.Dataset.from_tensor_slices(train_images).shuffle(len(train_images), seed=seed)
              .batch(batch_size).prefetch(tf.data.AUTOTUNE))
        val_ds = tf.data.Dataset.from_tensor_slices(val_images).batch(2 * batch_size)
        t = time.time()
        history = trainer.fit(ds, epochs=epochs, verbose=verbose, validation_data=val_ds,
                              callbacks=[keras.callbacks.CSVLogger(os.path.join(out, "log.csv"))])
        train_seconds = time.time() - t
        common.plot_curves(os.path.join(out, "log.csv"), os.path.join(out, "curves.png"),
                           [("attack loss", ["attack_loss", "val_attack_loss"]),
                            ("success", ["success", "val_success"]), ("perturbation size", ["size", "val_size"])],
                           title=f"generator {goal}, training vs held-out images")
        unchanged = all(np.array_equal(a, b) for a, b in zip(weights_before, the_goal.target.get_weights()))
        common.save_model(generator, os.path.join(out, "generator.keras"))

        methods = {"generator": trainer,
                   "fgsm": lambda x: x + gradient_attack(the_goal, x, eps, norm, steps=1),
                   f"pgd{pgd_steps}": lambda x: x + gradient_attack(the_goal, x, eps, norm, steps=pgd_steps)}
        results, adv_images = {}, {}
        for name, craft in methods.items():
            results[name], _, adv_images[name] = evaluate(the_goal, val_images, craft, transfer=other)
            print(f"{name:>10}: success {results[name]['success_rate']:.3f}  score {results[name]['score_before']:.3f}"
                  f" -> {results[name]['score_after']:.3f}  L-inf mean/max {results[name]['linf_mean_255']:.2f}/"
                  f"{results[name]['linf_max_255']:.2f} /255  PSNR {results[name]['psnr_mean']:.1f} dB  "
                  f"SSIM {results[name]['ssim_mean']:.3f}  {results[name]['ms_per_image']:.0f} ms/image"
                  + (f"  transfer success {results[name]['transfer_success_rate']:.3f}" if other else ""), flush=True)
        metrics = {"goal": goal, "target_class": target_class, "target_run": target, "transfer_run": transfer,
                   "norm": norm, "eps": eps,
                   "eps_units": "pixel levels out of 255" if norm == "linf" else "L2 in [0,1] units",
                   "lambda": lam, "epochs": epochs, "width": width, "augment": augment,
                   "train_images": len(train_images),
                   "held_out_images": len(val_images),
                   "train_seconds": train_seconds, "target_weights_unchanged": unchanged,
                   "target_evaluations_per_image": {"generator": 0, "fgsm": 1, f"pgd{pgd_steps}": pgd_steps},
                   "final_epoch": {k: float(v[-1]) for k, v in history.history.items()}, "held_out": results}
        common.write_json(os.path.join(out, "metrics.json"), metrics)
        what = f"'{target_class}'" if target_class else "lose the present classes"
        panel(os.path.join(out, "panel.png"), the_goal, val_images, adv_images["generator"],
              title=f"{goal}: {what}, {norm} eps {eps:g}; generator on held-out images "
                    f"(success {results['generator']['success_rate']:.0%})")
        print(f"run folder {out}", flush=True)
        return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="run folder of the model to attack (cls_train or seg_train)")
    p.add_argument("--goal", default="cls_targeted", choices=list(GOALS), help="default %(default)s")
    p.add_argument("--class", dest="target_class",
                   help="class the model should see (default: aeroplane for cls_targeted, chair for seg_targeted)")
    p.add_argument("--eps", type=float, default=8.0,
                   help="budget: linf in pixel levels out of 255, l2 in [0,1] pixel units (default %(default)s)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="default %(default)s")
    p.add_argument("--lambda", dest="lam", type=float, default=0.05,
                   help="weight of the perturbation-size penalty (default %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="generator training epochs (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=32,
                   help="generator filters at full resolution; 0: a universal perturbation per target (the template) "
                        "and a colour term only (default %(default)s)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the images as they are (default: random mirror and shift of each batch)")
    p.add_argument("--out", default="runs/attack", help="run folder (default %(default)s)")
    p.add_argument("--data", help="dataset of the target run (default: the one recorded in its config)")
    p.add_argument("--transfer", help="another run folder of the same task to test the perturbations on")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--max-train", type=int, help="use at most this many training images")
    p.add_argument("--max-eval", type=int, help="evaluate on at most this many held-out images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = vars(p.parse_args(argv))
    args.pop("debug")
    run(**args)


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
