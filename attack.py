"""Adversarial attacks: train a perturbation generator against a frozen classifier or segmenter.

    python attack.py --target runs/cls --goal cls_targeted --class aeroplane --eps 8 --out runs/attack_cls
    python attack.py --target runs/cls --goal cls_untargeted --eps 8 --out runs/attack_untargeted
    python attack.py --target runs/seg --goal seg_targeted --class chair --eps 16 --out runs/attack_seg

The generator is an image-conditioned encoder-decoder CNN f(x, c) -> delta: its encoder is the
frozen target's own feature maps (one pass of the target's encoder per image), its decoder is
trained (with --gate it also gates its state by the target's active units, as a gradient through
the target is); the image and a condition map c (the deceptive target: class one-hot maps; for
segmentation the target class painted on the target region) in, a perturbation in pixel units
out. The budget holds by construction for every image: delta = eps * tanh(2 raw / rms(raw)) is
inside the L-inf ball of radius --eps (levels out of 255) and, with --psnr-min, is scaled into
the L2 ball that gives that PSNR; x + delta is clipped to [0, 255]. Normalising by the image's
RMS keeps the tanh from saturating, so the generator's gradients stay alive.

It trains with a custom train_step against the frozen target model on the target run's training
images, with a margin (logit) loss that is zero exactly when the product's tuned-threshold rule
(cls_train.decide; the segmenter's argmax) says the goal is reached, and is evaluated on the
run's validation images, which it never saw, beside a random sign-noise control, FGSM and PGD
at the same budget. Attacks act on the model's input
image (resized to its input size).

The run folder gets generator.keras, metrics.json, log.csv and curves.png (loss and success per
epoch on the training and the held-out images, against the number of training image-gradients),
and panel.png (original, amplified perturbation, perturbed image, the model's labels or masks
before and after).
"""

import argparse
import math
import os
import re
import sys
import time

import common  # noqa: I001  (first: it quiets TensorFlow's start-up logging before Keras loads it)
import cls_train
import keras
import numpy as np
import tensorflow as tf
from common import CLASSES, NUM_CLASSES

GOALS = {"cls_targeted": "classification", "cls_untargeted": "classification", "seg_targeted": "segmentation"}
DEFAULT_CLASS = {"cls_targeted": "aeroplane", "seg_targeted": "chair"}
REGION_SUCCESS = 0.8  # seg_targeted: an image counts as fooled when this share of its box is the class


# ----------------------------------------------------------------------------------------------
# Budget: L-inf and PSNR, enforced by construction

def l2_radius(psnr_min, img_size):
    """The L2 norm (pixel units, levels out of 255) of a perturbation of a img_size x img_size x 3
    image whose PSNR is exactly psnr_min dB: PSNR = 10 log10(255^2 / MSE), MSE = ||delta||^2 / N."""
    return 255.0 * math.sqrt(img_size * img_size * 3) * 10 ** (-psnr_min / 20)


def project(delta, eps, l2=None):
    """Project each perturbation (B, H, W, 3, pixel units) onto the L-inf ball of radius eps
    (levels out of 255: a clip) and then, if l2 is given, scale it into the L2 ball of radius l2
    (pixel units); the scaled perturbation is still inside the L-inf ball, so both bounds hold.
    Returns a tensor of delta's shape."""
    ops = keras.ops
    delta = ops.clip(delta, -eps, eps)
    if l2 is not None:
        norm = ops.sqrt(ops.sum(ops.square(delta), axis=(1, 2, 3), keepdims=True))
        delta = delta * ops.minimum(1.0, l2 / ops.maximum(norm, 1e-12))
    return delta


def squash_into_budget(raw, eps, l2=None):
    """The generator's bound on its raw output (B, H, W, 3): a perturbation in levels out of 255
    within L-inf eps and, if given, within the L2 radius l2 (pixel units).

    L-inf only: delta = eps * tanh(2 raw / rms(raw)) per image. Dividing by each image's
    root-mean-square keeps the tanh in its responsive range whatever the scale the network
    drifts to, so it cannot saturate (a plain eps * tanh(raw) ends with every pixel at +-eps and
    no gradient), and about 80% of the budget is used at a typical pixel (scaling raw by
    eps / max|raw| instead leaves a typical pixel at under a fifth of eps, as one peak sets the
    scale).
    With l2: delta = raw * l2 / ||raw||, clipped to +-eps: on the L2 sphere (inside it where
    the clip bites), shaped as the raw output, so the generator can put its energy where it
    works, as an L2 PGD step does (the tanh form spreads it evenly over the image and then
    shrinks it: 2% held-out success for aeroplane at PSNR 35 dB, where PGD-10 got 86%).
    Returns a tensor of raw's shape, |delta| <= eps everywhere."""
    ops = keras.ops
    if l2 is not None:
        norm = ops.sqrt(ops.sum(ops.square(raw), axis=(1, 2, 3), keepdims=True))
        return ops.clip(raw * (l2 / ops.maximum(norm, 1e-12)), -eps, eps)
    rms = ops.sqrt(ops.mean(ops.square(raw), axis=(1, 2, 3), keepdims=True))
    return eps * ops.tanh(2.0 * raw / ops.maximum(rms, 1e-12))


def perturb(images, delta):
    """The perturbed images: images + delta (both float, levels out of 255) clipped to [0, 255]."""
    return keras.ops.clip(images + delta, 0.0, 255.0)


@keras.saving.register_keras_serializable("voc")
class Budget(keras.layers.Layer):
    """The generator's last layer: `squash_into_budget` with its eps (levels out of 255) and L2
    radius (pixel units)."""

    def __init__(self, eps, l2=None, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.l2 = float(eps), None if l2 is None else float(l2)

    def call(self, raw):
        return squash_into_budget(raw, self.eps, self.l2)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "l2": self.l2}


# ----------------------------------------------------------------------------------------------
# Generator

def conv(x, filters, kernel=3):
    """Convolution + GroupNorm + ReLU (GroupNorm: the same in training and inference, stable at
    batch 16)."""
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False)(x)
    x = keras.layers.GroupNormalization(groups=min(8, filters))(x)
    return keras.layers.ReLU()(x)


def feature_taps(model, img_size):
    """The target's own feature maps as the generator's encoder: a frozen keras.Model from the
    image (B, img_size, img_size, 3), levels out of 255, to the target's feature maps at every
    scale, finest first (the last ReLU of each block of a scratch model; the U-Net skip layers
    and the final features of an ImageNet backbone). One forward of the target's encoder per
    image."""
    base = common.backbone_of(model)
    image = keras.Input((img_size, img_size, 3), name="image")
    if base is None:  # cls_train.build_scratch / seg_train.build_unet: block<k>b_relu / enc<k>b_relu
        names = [layer.name for layer in model.layers if re.fullmatch(r"(block|enc)\d+b_relu", layer.name)]
        features = keras.Model(model.inputs, [model.get_layer(n).output for n in names])(image)
    else:
        if len(base.outputs) == 1:  # a classifier's backbone: tap the layers a U-Net uses as skips
            layers = {layer.name for layer in base.layers}
            skips = next(v[3] for v in common.BACKBONES.values() if set(v[3]) <= layers)
            base = keras.Model(base.input, [base.get_layer(n).output for n in skips] + [base.output])
        names = {layer.name for layer in model.layers}
        features = base(model.get_layer("preprocess")(image) if "preprocess" in names else image, training=False)
    taps = keras.Model(image, features, name="target_features")
    taps.trainable = False
    return taps


@keras.saving.register_keras_serializable("voc")
class Template(keras.layers.Layer):
    """The generator's universal part: a learned raw perturbation per pixel for every condition
    channel plus one shared by all, out[h, w] = T0[h, w] + sum_c cond[h, w, c] * T[h, w, c].
    Free per-pixel weights get the summed image-gradients directly, so a pattern that works on
    most images forms in a few hundred steps (a convolutional decoder, equivariant to shifts, can
    hardly draw one); the decoder adds what each image needs on top. Stored divided by `gain`,
    so that Adam moves it `gain` times faster than the decoder (probes on the proxy classifier: a
    template alone learned fast at lr 1e-2, the decoder did worse at 1e-2 than at 3e-3);
    initialised small (std `init`), so that the first steps change it by about its own size."""

    def __init__(self, gain=3.0, init=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.gain, self.init = gain, init

    def build(self, input_shape):
        _, h, w, c = input_shape
        self.t = self.add_weight(shape=(h, w, c + 1, 3), name="template",
                                 initializer=keras.initializers.RandomNormal(stddev=self.init, seed=0))

    def call(self, cond):
        ones = keras.ops.ones_like(cond[..., :1])
        return self.gain * keras.ops.einsum("bhwc,hwcd->bhwd", keras.ops.concatenate([ones, cond], -1), self.t)

    def get_config(self):
        return {**super().get_config(), "gain": self.gain, "init": self.init}


@keras.saving.register_keras_serializable("voc")
class ActiveUnits(keras.layers.Layer):
    """1.0 where a unit of the target's feature map is active (> 0), else 0.0: the gate a gradient
    passes through a ReLU. Same shape as its input; no weights."""

    def call(self, features):
        return keras.ops.cast(features > 0, self.compute_dtype)


def build_generator(taps, eps, psnr_min=None, width=16, gate=False):
    """Perturbation generator: a decoder on the frozen target's features (`feature_taps`).

    Inputs: image (B, S, S, 3) float in [0, 255] and condition (B, S, S, 20) float (the goal's
    map, `Goal.condition`). Output: delta (B, S, S, 3) in pixel units (levels out of 255),
    within L-inf eps and, with psnr_min (dB), within the L2 radius of that PSNR.
    The decoder starts from the deepest features with the condition resized onto them, and at
    each finer scale upsamples (bilinear), adds the target's features there (1x1-reduced) and,
    with `gate`, a gated path, and a conv. The gated path works as a gradient does on its way back
    through the target: the decoder's state is expanded to the tap's channels, multiplied by where
    the target's units are active (`ActiveUnits`) and projected back. On the proxy classifier it
    gained on cls_untargeted 8/255 (held-out 0.788 against 0.748, same schedule) and lost on
    aeroplane 16/255 (0.753 against 0.781), one run each (bench/README.md), so it is off by
    default. At full size the image itself joins, and a zero-initialised 3x3 conv gives the
    image-dependent part of the raw perturbation. Added to it: a learned universal part per
    condition (`Template`); `squash_into_budget` bounds the sum. Reading the target's own
    features costs the target's encoder once per image and lets a small decoder adapt the
    perturbation to each image.
    """
    size = taps.inputs[0].shape[1]
    image = keras.Input((size, size, 3), name="image")
    condition = keras.Input((size, size, NUM_CLASSES), name="condition")
    features = taps(image)
    features = features if isinstance(features, (list, tuple)) else [features]
    x = None
    for k, tap in enumerate(reversed(features)):
        filters = width * max(1, 8 >> k)  # 8w at the deepest scale, halving to w
        f = conv(tap, filters, kernel=1)
        if x is None:
            x = keras.layers.Concatenate()([f, keras.layers.Resizing(f.shape[1], f.shape[2])(condition)])
        else:
            x = keras.layers.Resizing(f.shape[1], f.shape[2], interpolation="bilinear")(x)
            parts = [x, f]
            if gate:
                gated = keras.layers.Multiply()([keras.layers.Conv2D(tap.shape[-1], 1, use_bias=False)(x),
                                                 ActiveUnits()(tap)])
                gated = keras.layers.Conv2D(filters, 1, use_bias=False)(gated)
                parts.append(keras.layers.GroupNormalization(groups=min(8, filters))(gated))
            x = keras.layers.Concatenate()(parts)
        x = conv(x, filters)
    x = keras.layers.Resizing(size, size, interpolation="bilinear")(x)
    x = conv(keras.layers.Concatenate()([x, keras.layers.Rescaling(1 / 255.0)(image), condition]), width)
    image_part = keras.layers.Conv2D(3, 3, padding="same", kernel_initializer="zeros", name="image_part")(x)
    # one Adam step moves a conv output by about lr x its fan-in-weighted activations (~50 x lr
    # here) and a template pixel by lr: scaled so that neither part drowns the other at the start
    image_part = keras.layers.Rescaling(0.02, name="image_part_scale")(image_part)
    raw = keras.layers.Add(name="raw")([Template(name="template")(condition), image_part])
    l2 = None if psnr_min is None else l2_radius(psnr_min, size)
    return keras.Model([image, condition], Budget(eps, l2, name="budget")(raw), name="perturbation_generator")


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
# Goals: what the target model should see, as margin losses (shared by the generator, FGSM, PGD)

def logit(p):
    return math.log(p / (1 - p))


def logits_model(model):
    """The classifier's logits: its `labels` Dense layer without the sigmoid (exact and unsaturated,
    where log(p / (1 - p)) of a float32 probability is not)."""
    dense = model.get_layer("labels")
    features = keras.Model(model.inputs, dense.input)
    return lambda images: keras.ops.matmul(features(images, training=False), dense.kernel) + dense.bias


class Goal:
    """One attack goal against one frozen target model.

    target: the loaded keras.Model; config: its run's config.json; target_class: class name
    (cls_targeted, seg_targeted); thresholds: the classifier's per-class thresholds (20 floats in
    [0, 1]); region: side of the central box as a share of the image side (seg_targeted);
    keep_weight: weight of the term that keeps the other labels as they were.
    margin_loss: 'linear' (the loss is margin + keep_weight x keep) or 'log' (log(1 + that loss): the
    same zero set and the same balance of the two terms within an image, with a gradient scaled by
    1 / (1 + loss) that favours images near the goal over hopeless ones, since the success rate
    counts images, not logits).
    """

    def __init__(self, name, target, config, target_class=None, thresholds=None, region=0.5, keep_weight=0.5,
                 margin_loss="linear"):
        self.name, self.target, self.config = name, target, config
        self.task = GOALS[name]
        self.t = None if target_class is None else CLASSES.index(target_class)
        self.keep_weight, self.margin_loss = keep_weight, margin_loss
        if self.task == "classification":
            self.thresholds = np.asarray(thresholds, np.float32)
            self.tau = tf.constant([logit(min(max(p, 1e-6), 1 - 1e-6)) for p in self.thresholds], tf.float32)
            self.logits = logits_model(target)
        else:
            self.logits = lambda images: target(images, training=False)
        size = config["img_size"]
        box = np.zeros((size, size), np.float32)  # the central box, `region` of each side
        lo, hi = int(round(size * (1 - region) / 2)), int(round(size * (1 + region) / 2))
        box[lo:hi, lo:hi] = 1
        self.region, self.region_pixels = tf.constant(box), float(box.sum())
        # compiled once for evaluation's many batches: the outputs, and the reference of clean images
        self.outputs = compiled(lambda images: target(images, training=False), size)
        self.clean_reference = compiled(lambda images: self.reference(self.logits(images)), size)

    def reference(self, z):
        """What the model says about the clean images, from their logits: the reported labels (B, 20)
        0/1 float for a classifier (its thresholds, top class when none passes: `cls_train.decide`),
        the argmax mask (B, H, W) int32 for a segmenter."""
        if self.task == "segmentation":
            return tf.argmax(z, -1, output_type=tf.int32)
        passes = z >= self.tau
        top = tf.one_hot(tf.argmax(z, -1), NUM_CLASSES) > 0
        return tf.cast(passes | (top & ~tf.reduce_any(passes, -1, keepdims=True)), tf.float32)

    def condition(self, batch):
        """The generator's condition map, (batch, S, S, 20) float32 for the model's input size S:
        the target class's one-hot everywhere (cls_targeted) or on the box only (seg_targeted);
        zeros for cls_untargeted (the generator reads what to remove from the target's features).
        It never needs the target's output, so the generator costs one target encoder pass."""
        size = self.config["img_size"]
        if self.name == "cls_untargeted":
            return tf.zeros((batch, size, size, NUM_CLASSES))
        cond = tf.broadcast_to(tf.one_hot(self.t, NUM_CLASSES), (batch, size, size, NUM_CLASSES))
        return cond * self.region[None, :, :, None] if self.name == "seg_targeted" else cond

    def margin(self, z, reference):
        """Per-image margin loss (B,), in logits: zero exactly when the goal is reached by the
        tuned-threshold rule (the segmenter's argmax), and growing linearly with the logit
        distance from it (so images far from the goal keep a gradient without dominating).

        cls_targeted: the class is reported: z_t >= tau_t, or no class passes its threshold and t
        has the top logit. cls_untargeted: no clean label is reported: each below its threshold,
        and another class passes its threshold or has the top logit. seg_targeted: at least
        REGION_SUCCESS of the box is labelled the class: the mean of the smallest REGION_SUCCESS
        share of per-pixel margins (max other logit - class logit)."""
        relu = tf.nn.relu
        if self.name == "cls_targeted":
            others = tf.reduce_max(z - 1e9 * tf.one_hot(self.t, NUM_CLASSES), -1)
            passes = relu(self.tau[self.t] - z[:, self.t])
            top = relu(tf.reduce_max(z - self.tau, -1)) + relu(others - z[:, self.t])
            return tf.minimum(passes, top)
        if self.name == "cls_untargeted":
            drop = tf.reduce_sum(reference * relu(z - self.tau), -1)
            outside = tf.reduce_max(z - 1e9 * reference, -1)  # best logit among classes not reported before
            other_passes = relu(-tf.reduce_max(z - self.tau - 1e9 * reference, -1))
            top = relu(tf.reduce_max(z - 1e9 * (1 - reference), -1) - outside)
            return drop + tf.minimum(other_passes, top)
        pixel = self.pixel_margin(z, tf.fill(tf.shape(z)[:-1], self.t + 1))
        inside = tf.boolean_mask(tf.transpose(pixel, (1, 2, 0)), self.region > 0)  # (box pixels, B)
        k = int(math.ceil(REGION_SUCCESS * self.region_pixels))
        easiest = -tf.math.top_k(-tf.transpose(inside), k).values
        return tf.reduce_mean(easiest, -1)

    @staticmethod
    def pixel_margin(z, labels):
        """Per pixel: max logit of the other classes minus the logit of `labels`, at least 0."""
        own = tf.one_hot(labels, z.shape[-1])
        return tf.nn.relu(tf.reduce_max(z - 1e9 * own, -1) - tf.reduce_sum(z * own, -1))

    def keep(self, z, reference):
        """Per-image margin for 'everything else as before' (B,): the clean labels other than the
        target stay above their thresholds (cls_targeted), the pixels outside the box keep their
        clean label (seg_targeted); 0 for cls_untargeted."""
        if self.name == "cls_targeted":
            others = reference * (1 - tf.one_hot(self.t, NUM_CLASSES))
            return tf.reduce_sum(others * tf.nn.relu(self.tau - z), -1) / tf.maximum(tf.reduce_sum(others, -1), 1)
        if self.name == "seg_targeted":
            outside = 1 - self.region
            return tf.reduce_sum(self.pixel_margin(z, reference) * outside, (1, 2)) / tf.reduce_sum(outside)
        return tf.zeros(tf.shape(z)[:1])

    def loss(self, z, reference, confidence=0.0):
        """Per-image training loss (B,): margin + keep_weight x keep, or log(1 + that) (margin_loss).
        confidence: the margin is taken on logits each moved this many against the goal (the ones
        that help it lowered, all others raised), so the loss is zero only when the decision would
        survive such a shift of every logit (a threshold passed by that much, a comparison of two
        logits won by twice that): the confidence kappa of Carlini & Wagner (2017), "Towards
        evaluating the robustness of neural networks". The keep term and success (margin 0) use
        the logits as they are."""
        if self.name == "cls_untargeted":  # the clean labels hurt the goal, every other class helps it
            against = 2.0 * reference - 1.0
        else:  # the class (channel t + 1, after background, for a segmenter) helps, every other one hurts
            against = 1.0 - 2.0 * tf.one_hot(self.t + (self.task == "segmentation"), z.shape[-1])
        handicapped = z + confidence * tf.cast(against, z.dtype)
        loss = self.margin(handicapped, reference) + self.keep_weight * self.keep(z, reference)
        return tf.math.log1p(loss) if self.margin_loss == "log" else loss

    def judge(self, outputs, reference):
        """Per image, judged by the tuned-threshold rule on the model's outputs (NumPy): (success
        bool (B,), score (B,)). Classifier: `cls_train.decide`, the run's tuned thresholds (as
        predict.py --cls-decision thresholds reports; its default expected-Dice rule has no fixed
        per-class boundary for a margin loss to aim at: it depends on the other probabilities); score =
        target probability (cls_targeted) or mean probability of the clean labels
        (cls_untargeted). Segmenter: argmax; score = share of the box labelled the class,
        success = score >= REGION_SUCCESS."""
        outputs, reference = np.asarray(outputs), np.asarray(reference)
        if self.name == "cls_targeted":
            reported = cls_train.decide(outputs, self.thresholds)
            return reported[:, self.t] > 0, outputs[:, self.t]
        if self.name == "cls_untargeted":
            reported = cls_train.decide(outputs, self.thresholds)
            kept = (reported * reference).sum(-1)
            return kept == 0, (outputs * reference).sum(-1) / np.maximum(reference.sum(-1), 1)
        hit = outputs.argmax(-1) == self.t + 1
        share = (hit * self.region.numpy()).sum((1, 2)) / self.region_pixels
        return share >= REGION_SUCCESS, share


# ----------------------------------------------------------------------------------------------
# Training the generator: a Model subclass with a custom train_step

class GeneratorAttack(keras.Model):
    """Trains `generator` so that goal.target(x + generator(x, c)) reaches the goal; the target
    model is frozen (never in the trainable variables, always called in inference mode)."""

    def __init__(self, generator, goal, augment=True, confidence=0.0, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.goal, self.augment, self.confidence = generator, goal, augment, confidence
        goal.target.trainable = False
        self.attack_loss = keras.metrics.Mean(name="attack_loss")
        self.success = keras.metrics.Mean(name="success")

    def call(self, images):
        """Perturbed images (B, S, S, 3), levels out of 255."""
        return perturb(images, self.generator([images, self.goal.condition(tf.shape(images)[0])], training=False))

    def losses_on(self, images, training):
        """Per-image attack loss and margin on one batch."""
        reference = self.goal.reference(self.goal.logits(images))  # what to keep or remove
        delta = self.generator([images, self.goal.condition(tf.shape(images)[0])], training=training)
        z = self.goal.logits(perturb(images, delta))
        return self.goal.loss(z, reference, self.confidence), self.goal.margin(z, reference)

    def train_step(self, data):
        images = data[0] if isinstance(data, tuple) else data
        if self.augment:  # new views of the same few hundred images, against memorising them
            images = shift_and_flip(images)
        with tf.GradientTape() as tape:
            loss, margin = self.losses_on(images, training=True)
            mean_loss = tf.reduce_mean(loss)
        grads = tape.gradient(mean_loss, self.generator.trainable_variables)
        self.optimizer.apply(grads, self.generator.trainable_variables)
        return self.record(loss, margin)

    def test_step(self, data):
        return self.record(*self.losses_on(data[0] if isinstance(data, tuple) else data, training=False))

    def record(self, loss, margin):
        self.attack_loss.update_state(loss)
        self.success.update_state(tf.cast(margin <= 0, tf.float32))  # margin 0 <=> the goal is reached
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [self.attack_loss, self.success]


class ImageGradients(keras.callbacks.Callback):
    """Adds `image_gradients` (training images back-propagated through the target so far) to the
    epoch logs, the x-axis of the learning curve."""

    def __init__(self, per_epoch):
        super().__init__()
        self.per_epoch = per_epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["image_gradients"] = (epoch + 1) * self.per_epoch


# ----------------------------------------------------------------------------------------------
# Per-image baselines at the same budget

def gradient_attack(goal, images, eps, l2=None, steps=10, start=None):
    """FGSM (steps=1, step = eps) or PGD (steps > 1, step = 2.5 eps / steps) from no perturbation:
    signed gradient steps down the goal's loss, projected onto the budget (L-inf eps in levels out
    of 255; L2 radius l2 in pixel units) and the valid pixel range.
    With `start` (B, S, S, 3), e.g. a generator's perturbation, a refinement instead: steps of
    eps / 4, taken only by the images whose goal is not reached yet. Both differ from PGD's
    from-zero form on purpose (measured on the proxy `aeroplane` generator, 16/255, 146 held-out
    images: one step of eps moving every image 0.370, of eps / 8 moving every image 0.753, both
    below the generator's own 0.781, since a fooled image's sign step, driven by the keep term
    alone, is as large as any other and undoes it; eps / 4 on the images not yet fooled 0.979).
    Costs one target forward (the clean reference) plus `steps` forward+backward passes per image.
    Returns delta (B, S, S, 3), pixel units."""
    reference = goal.reference(goal.logits(images))
    if start is None:
        delta, step_size = tf.zeros_like(images), eps if steps == 1 else 2.5 * eps / steps
    else:
        delta, step_size = start, eps / 4
    for _ in tf.range(steps):  # a loop in the graph when compiled (tf.function), not `steps` copies of it
        with tf.GradientTape() as tape:
            tape.watch(delta)
            z = goal.logits(perturb(images, delta))
            loss = tf.reduce_sum(goal.loss(z, reference))
        step = step_size * tf.sign(tape.gradient(loss, delta))
        if start is not None:
            step *= tf.cast(goal.margin(z, reference) > 0, step.dtype)[:, None, None, None]
        delta = project(delta - step, eps, l2)
        delta = perturb(images, delta) - images  # stay in [0, 255]
    return delta


def compiled(fn, img_size):
    """fn(images) as one tf.function for every batch of (B, img_size, img_size, 3) float32 images:
    traced once, not once per batch size (a trace of the model with its gradient costs seconds)."""
    return tf.function(fn, input_signature=[tf.TensorSpec((None, img_size, img_size, 3), tf.float32)])


def random_noise(images, eps, l2=None, seed=0):
    """Control: random signs at +-eps (levels out of 255), projected like every other method."""
    signs = tf.sign(tf.random.stateless_uniform(tf.shape(images), (seed, 1), -1.0, 1.0))
    return project(eps * signs, eps, l2)


# ----------------------------------------------------------------------------------------------
# Evaluation

def wilson(successes, n, z=1.96):
    """95% Wilson score interval (lower, upper) of a success rate from `successes` of `n`."""
    if n == 0:
        return (None, None)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def image_quality(images, adv):
    """Per image: L-inf (levels out of 255), L2 (pixel units), PSNR (dB; an unchanged image counts
    as 100 dB, not infinity, so that means stay finite) and SSIM of adv vs images."""
    d = adv - images
    return {"linf": tf.reduce_max(tf.abs(d), (1, 2, 3)).numpy(),
            "l2": tf.sqrt(tf.reduce_sum(tf.square(d), (1, 2, 3))).numpy(),
            "psnr": np.minimum(tf.image.psnr(adv, images, 255.0).numpy(), 100.0),
            "ssim": tf.image.ssim(adv, images, 255.0).numpy()}


def evaluate(goal, images, craft, batch_size=16, transfer=None):
    """Run one crafting method over held-out images. craft(batch) -> perturbed batch (float, levels
    out of 255). transfer: a Goal on another model of the same task, to judge the same perturbed
    images there too. ms_per_image is the steady-state time: craft is called once untimed on each
    batch shape first, so a compiled method's one-off tracing is not counted as a per-image cost.
    Returns (summary dict, perturbed images as float32 array)."""
    rows = {k: [] for k in ("ok_before", "ok", "score_before", "score_after", "linf", "l2", "psnr", "ssim", "seconds")}
    if transfer is not None:
        rows.update(transfer_ok=[], transfer_ok_before=[])
    adv_all = []
    for n in {len(images[k:k + batch_size]) for k in range(0, len(images), batch_size)}:
        craft(tf.constant(images[:n]))  # untimed warm-up per batch shape: a compiled method traces once
    for k in range(0, len(images), batch_size):
        x = tf.constant(images[k:k + batch_size])
        t = time.time()
        adv = np.asarray(craft(x))  # copied to host memory inside the timed window: a GPU method is timed to its end
        rows["seconds"].append(np.full(len(x), (time.time() - t) / len(x)))
        adv_all.append(adv)
        adv = tf.constant(adv)
        reference = goal.clean_reference(x)
        for key, out in (("before", goal.outputs(x)), ("", goal.outputs(adv))):
            ok, score = goal.judge(out, reference)
            rows["ok" + ("_" + key if key else "")].append(ok)
            rows["score_" + (key or "after")].append(score)
        for key, v in image_quality(x, adv).items():
            rows[key].append(v)
        if transfer is not None:
            size = transfer.config["img_size"]
            xt, at = tf.image.resize(x, (size, size)), tf.image.resize(adv, (size, size))
            ref_t = transfer.clean_reference(xt)
            rows["transfer_ok"].append(transfer.judge(transfer.outputs(at), ref_t)[0])
            rows["transfer_ok_before"].append(transfer.judge(transfer.outputs(xt), ref_t)[0])
    per_image = {k: np.concatenate(v) for k, v in rows.items()}
    n, hits = len(images), int(per_image["ok"].sum())
    summary = {"success_rate": hits / n, "success_95ci": wilson(hits, n),
               "success_rate_clean": float(per_image["ok_before"].mean()),
               "score_before": float(per_image["score_before"].mean()),
               "score_after": float(per_image["score_after"].mean()),
               "linf_mean_255": float(per_image["linf"].mean()), "linf_max_255": float(per_image["linf"].max()),
               "l2_mean": float(per_image["l2"].mean()), "l2_max": float(per_image["l2"].max()),
               "psnr_mean": float(per_image["psnr"].mean()), "psnr_min": float(per_image["psnr"].min()),
               "ssim_mean": float(per_image["ssim"].mean()),
               "ms_per_image": float(per_image["seconds"].mean() * 1000), "images": n}
    if transfer is not None:
        summary["transfer_success_rate"] = float(per_image["transfer_ok"].mean())
        summary["transfer_success_rate_clean"] = float(per_image["transfer_ok_before"].mean())
    return summary, np.concatenate(adv_all)


# ----------------------------------------------------------------------------------------------
# Pictures

def describe(goal, images):
    """Per image: a caption of the model's labels, or its mask as a colour picture."""
    out = goal.target(tf.constant(images), training=False).numpy()
    if goal.task == "classification":
        reported = cls_train.decide(out, goal.thresholds)
        return [common.wrap_names([f"{CLASSES[c]} {p[c]:.2f}" for c in np.flatnonzero(r)], 26)
                for r, p in zip(reported, out)]
    return [common.colorize(m) for m in out.argmax(-1).astype(np.uint8)]


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
    if goal.task == "segmentation":
        pic = common.with_legend(pic, range(NUM_CLASSES))
    common.save_png(path, pic)


# ----------------------------------------------------------------------------------------------
# The whole attack

def load_target(run_dir, goal_name, target_class, margin_loss="linear"):
    """A Goal against the model of a finished run folder (UserError if it is of the wrong task)."""
    if GOALS[goal_name] == "classification":
        model, config, thresholds = cls_train.load_classifier(run_dir)
    else:
        model, config = common.load_run(run_dir, "segmentation")
        thresholds = None
    return Goal(goal_name, model, config, target_class, thresholds, margin_loss=margin_loss)


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


def summary_line(name, r, budget_note=""):
    lo, hi = r["success_95ci"]
    return (f"{name:>16}: success {r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}]  score {r['score_before']:.3f}"
            f" -> {r['score_after']:.3f}  L-inf max {r['linf_max_255']:.2f}/255  PSNR mean/min "
            f"{r['psnr_mean']:.1f}/{r['psnr_min']:.1f} dB  SSIM {r['ssim_mean']:.3f}  {r['ms_per_image']:.0f} ms/image"
            + (f"  transfer {r['transfer_success_rate']:.3f}" if "transfer_success_rate" in r else "") + budget_note)


def run(target="runs/cls", goal="cls_targeted", target_class=None, eps=8.0, psnr_min=None, epochs=10,
        time_limit=None, batch_size=16, lr=1e-3, margin_loss="linear", confidence=0.0, width=16, gate=False,
        augment=True, out="runs/attack", data=None, transfer=None, pgd_steps=10, hybrid_steps=0, budgets=(),
        max_train=None, max_eval=None, seed=0, overwrite=False, verbose=None):
    """Train a perturbation generator for one goal against a frozen model, evaluate it on held-out
    images beside a random-noise control, FGSM and PGD, and write the run folder `out`.

    target: run folder of cls_train.py (goals cls_*) or seg_train.py (seg_targeted).
    goal: 'cls_targeted' (the classifier reports target_class on images without it, its other
        labels kept), 'cls_untargeted' (no clean label is reported any more) or 'seg_targeted'
        (the central box, half of each side, labelled target_class).
    target_class: class name (default aeroplane for cls_targeted, chair for seg_targeted).
    eps: L-inf budget, levels out of 255 (default 8). psnr_min: also keep the PSNR of every
        perturbed image at least this many dB (default None: L-inf only).
    epochs, batch_size, lr: generator training (Adam, cosine decay per epoch from lr towards 2% of it).
    margin_loss: 'linear' (default) or 'log': the training loss per image is the goal's margin plus
        half its keep term, or log(1 + that) (`Goal`).
    confidence: train the generator until its decision would survive every logit moving this many
        against the goal (`Goal.loss`; default 0): a threshold passed by that much, a comparison
        of two logits won by twice that; so that held-out images near the boundary pass too;
        success is judged at 0 as always.
    time_limit: minutes of generator training (default None: no limit); from the epochs' pace the
        schedule is shortened to the epochs that fit, so that it still decays fully
        (`common.TimeLimit`); metrics.json says how many epochs ran and were planned.
    width: generator filters at full resolution (default 16). gate: the gated decoder path
        (`build_generator`; default False). augment: random mirror and shift
        of each training batch (default True).
    data: dataset folder (default: the one in the target run's config). transfer: another run
        folder of the same task on which the same perturbed images are judged too.
    pgd_steps: steps of the PGD baseline (default 10). hybrid_steps: if > 0, also evaluate the
        generator's output refined by this many gradient steps (`gradient_attack` with a start; a
        labelled hybrid row, generator+refine<k>).
    budgets: extra L-inf budgets (levels out of 255) for a success-vs-budget table of the
        generator (its perturbation rescaled to the budget) and PGD: success rate and mean score
        after (`evaluate`'s score_after: the target probability for cls_targeted, the mean
        probability of the clean labels for cls_untargeted, the share of the box for seg_targeted).
    max_train, max_eval: use at most this many training / held-out images.
    Returns the metrics dict (also written to out/metrics.json). Raises common.UserError for an
    unknown goal or class, a bad budget, a run folder of the wrong task or an existing `out`.
    """
    if goal not in GOALS:
        raise common.UserError(f"unknown --goal {goal!r}; choose from {', '.join(GOALS)}")
    if goal == "cls_untargeted":
        target_class = None
    else:
        target_class = target_class or DEFAULT_CLASS[goal]
        if target_class not in CLASSES:
            raise common.UserError(f"unknown class {target_class!r}; choose from {', '.join(CLASSES)}")
    if eps <= 0 or eps > 255 or any(b <= 0 or b > 255 for b in budgets):
        raise common.UserError("--eps and --budgets must be in (0, 255] (levels out of 255)")
    if psnr_min is not None and psnr_min <= 0:
        raise common.UserError("--psnr-min must be positive (dB)")
    if time_limit is not None and time_limit <= 0:
        raise common.UserError("--time-limit must be positive (minutes)")
    if margin_loss not in ("linear", "log"):
        raise common.UserError(f"unknown --margin-loss {margin_loss!r}; choose linear or log")
    if confidence < 0:
        raise common.UserError("--confidence must be at least 0 (logits)")
    if width < 1 or epochs < 1 or pgd_steps < 1:
        raise common.UserError("--width, --epochs and --pgd-steps must be at least 1")
    verbose = common.keras_verbosity(verbose)
    the_goal = load_target(target, goal, target_class, margin_loss)
    other = load_target(transfer, goal, target_class) if transfer else None
    with common.run_folder(out, overwrite=overwrite):
        keras.utils.set_random_seed(seed)
        excluded = target_class if goal == "cls_targeted" else None
        _, train_images = attack_images(the_goal.config, data, False, excluded, max_train)
        _, val_images = attack_images(the_goal.config, data, True, excluded, max_eval)
        size = the_goal.config["img_size"]
        l2 = None if psnr_min is None else l2_radius(psnr_min, size)
        print(f"goal {goal}{' -> ' + target_class if target_class else ''}, L-inf {eps:g}/255"
              f"{f', PSNR >= {psnr_min:g} dB' if psnr_min else ''}: {len(train_images)} training and "
              f"{len(val_images)} held-out images", flush=True)

        # Training: the generator against the frozen target, custom train_step, compile and fit
        generator = build_generator(feature_taps(the_goal.target, size), eps, psnr_min, width, gate)
        trainer = GeneratorAttack(generator, the_goal, augment, confidence)
        trainer.compile(optimizer=keras.optimizers.Adam(lr))
        common.build_optimizer(trainer, generator.trainable_variables)
        timer = common.TimeLimit(time_limit)  # plans the last epoch from the pace so far
        schedule = common.planned_cosine(timer, lr, 0, epochs, epochs)
        weights_before = [w.copy() for w in the_goal.target.get_weights()]
        ds = tf.data.Dataset.from_tensor_slices(train_images).shuffle(len(train_images), seed=seed)
        ds = common.without_autotune(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))
        val_ds = common.without_autotune(tf.data.Dataset.from_tensor_slices(val_images).batch(2 * batch_size))
        t = time.time()
        history = trainer.fit(ds, epochs=epochs, verbose=verbose, validation_data=val_ds,
                              callbacks=[schedule, ImageGradients(len(train_images)),
                                         keras.callbacks.CSVLogger(os.path.join(out, "log.csv")), timer])
        train_seconds = time.time() - t
        epochs_trained = len(history.history["attack_loss"])
        common.plot_curves(os.path.join(out, "log.csv"), os.path.join(out, "curves.png"),
                           [("attack loss", ["attack_loss", "val_attack_loss"]),
                            ("success (margin 0)", ["success", "val_success"])],
                           title=f"generator {goal}, training vs held-out images, per epoch of "
                                 f"{len(train_images)} image-gradients")
        unchanged = all(np.array_equal(a, b) for a, b in zip(weights_before, the_goal.target.get_weights()))
        common.save_model(generator, os.path.join(out, "generator.keras"))

        # Evaluation on held-out images, every method judged by the tuned-threshold rule; the
        # gradient attacks compiled, as the generator is (predict_on_batch): run eagerly, PGD-10
        # against the quickstart's classifier took 233 ms an image, compiled 42-48 (bench/README.md)
        gen = trainer.predict_on_batch  # the perturbed batch (NumPy)
        pgd = f"pgd{pgd_steps}"
        methods = {"generator": gen,
                   "random_noise": lambda x: perturb(x, random_noise(x, eps, l2)),
                   "fgsm": compiled(lambda x: x + gradient_attack(the_goal, x, eps, l2, steps=1), size),
                   pgd: compiled(lambda x: x + gradient_attack(the_goal, x, eps, l2, steps=pgd_steps), size)}
        if hybrid_steps:
            methods[f"generator+refine{hybrid_steps}"] = compiled(lambda x: x + gradient_attack(
                the_goal, x, eps, l2, steps=hybrid_steps, start=trainer(x) - x), size)
        # target passes per image (forward, backward): the generator reads the target's encoder once;
        # the gradient attacks run it on the clean image (reference) and once per step
        cost = {"generator": (1, 0), "random_noise": (0, 0), "fgsm": (2, 1), pgd: (pgd_steps + 1, pgd_steps),
                f"generator+refine{hybrid_steps}": (hybrid_steps + 2, hybrid_steps)}
        results, adv_images = {}, {}
        for name, craft in methods.items():
            results[name], adv_images[name] = evaluate(the_goal, val_images, craft, transfer=other)
            results[name]["target_forward_per_image"], results[name]["target_backward_per_image"] = cost[name]
            print(summary_line(name, results[name]), flush=True)
        budget_table = {}
        for b in budgets:  # success vs budget: the generator's perturbation rescaled, PGD at that budget
            scaled = lambda x, b=b: perturb(x, project((tf.convert_to_tensor(gen(x)) - x) * (b / eps), b, l2))  # noqa: E731
            pgd_at_b = compiled(lambda x, b=b: x + gradient_attack(the_goal, x, b, l2, steps=pgd_steps), size)
            row = {}
            for name, craft in (("generator_rescaled", scaled), (pgd, pgd_at_b)):
                r = evaluate(the_goal, val_images, craft)[0]
                row[name], row[f"{name}_score"] = r["success_rate"], r["score_after"]
            budget_table[f"{b:g}"] = row
            print(f"budget {b:g}/255: generator (rescaled) {row['generator_rescaled']:.3f} (score "
                  f"{row['generator_rescaled_score']:.3f}), {pgd} {row[pgd]:.3f} (score {row[pgd + '_score']:.3f})",
                  flush=True)
        metrics = {"goal": goal, "target_class": target_class, "target_run": target, "transfer_run": transfer,
                   "eps_255": eps, "psnr_min": psnr_min, "l2_radius": l2, "epochs": epochs_trained,
                   "epochs_configured": epochs, "epochs_planned": timer.planned, "time_limit_minutes": time_limit,
                   "stopped_by_time_limit": timer.hit, "margin_loss": margin_loss,
                   "confidence": confidence, "width": width, "gate": gate,
                   "augment": augment, "lr": lr, "batch_size": batch_size, "train_images": len(train_images),
                   "held_out_images": len(val_images), "train_seconds": train_seconds,
                   "train_image_gradients": epochs_trained * len(train_images), "target_weights_unchanged": unchanged,
                   "success_rule": ("cls_train.decide: the run's tuned thresholds" if the_goal.task == "classification"
                                    else f"share of the box labelled the class >= {REGION_SUCCESS}"),
                   "final_epoch": {k: float(v[-1]) for k, v in history.history.items()}, "held_out": results,
                   "budget_table": budget_table}
        common.write_json(os.path.join(out, "metrics.json"), metrics)
        what = f"'{target_class}'" if target_class else "lose the present classes"
        panel(os.path.join(out, "panel.png"), the_goal, val_images, adv_images["generator"],
              title=f"{goal}: {what}, L-inf {eps:g}/255; generator on held-out images "
                    f"(success {results['generator']['success_rate']:.0%})")
        print(f"run folder {out}", flush=True)
        return metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="run folder of the model to attack (cls_train or seg_train)")
    p.add_argument("--goal", default="cls_targeted", choices=list(GOALS), help="default %(default)s")
    p.add_argument("--class", dest="target_class",
                   help="class the model should see (default: aeroplane for cls_targeted, chair for seg_targeted)")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf budget in levels out of 255 (default %(default)s)")
    p.add_argument("--psnr-min", type=float, help="also keep every perturbed image at this PSNR or more (dB)")
    p.add_argument("--epochs", type=int, default=10, help="generator training epochs (default %(default)s)")
    p.add_argument("--time-limit", type=float,
                   help="minutes of generator training; the schedule is fitted to it (default: no limit)")
    p.add_argument("--batch-size", type=int, default=16, help="default %(default)s")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, cosine decay (default %(default)s)")
    p.add_argument("--margin-loss", default="linear", choices=["linear", "log"],
                   help="training loss per image: the margin (plus half the keep term), or log(1 + that), which "
                        "favours images near the goal (default %(default)s)")
    p.add_argument("--confidence", type=float, default=0.0,
                   help="train until the decision survives every logit moving this many against the goal (a "
                        "threshold passed by that much, two logits compared won by twice that; Carlini-Wagner "
                        "kappa), so held-out images near the boundary pass too; success is still judged at 0 "
                        "(default %(default)s)")
    p.add_argument("--width", type=int, default=16, help="generator filters at full resolution (default %(default)s)")
    p.add_argument("--gate", action="store_true",
                   help="gate the decoder by the target's active units (helped cls_untargeted, not aeroplane)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train on the images as they are (default: random mirror and shift of each batch)")
    p.add_argument("--out", default="runs/attack", help="run folder (default %(default)s)")
    p.add_argument("--data", help="dataset of the target run (default: the one recorded in its config)")
    p.add_argument("--transfer", help="another run folder of the same task to test the perturbations on")
    p.add_argument("--pgd-steps", type=int, default=10, help="default %(default)s")
    p.add_argument("--hybrid-steps", type=int, default=0,
                   help="also evaluate the generator refined by this many gradient steps of eps/4 on the images "
                        "not fooled yet, a labelled hybrid (default: off)")
    p.add_argument("--budgets", type=float, nargs="*", default=[],
                   help="extra L-inf budgets for a success-vs-budget table, e.g. 4 8 12 16")
    p.add_argument("--max-train", type=int, help="use at most this many training images")
    p.add_argument("--max-eval", type=int, help="evaluate on at most this many held-out images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = vars(p.parse_args(argv))
    args.pop("debug")
    run(**args)


if __name__ == "__main__":
    if common.in_notebook(globals()):  # pasted into a notebook cell: the cells after it can `import attack`
        sys.modules["attack"] = common.cell_module("attack", globals())
    else:
        sys.exit(common.run_cli(main))
