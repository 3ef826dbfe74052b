"""Train a multi-label VOC classifier: a VGG-like CNN from scratch, or an ImageNet backbone
(MobileNetV2 by default) with a new head, frozen first and then fine-tuned.

    python cls_train.py --data demo --arch scratch --out runs/cls_scratch
    KERAS_HOME=../shared/keras_home python cls_train.py --data DIR --arch mobilenetv2 --out runs/cls_mnv2

The run folder gets model.keras (best val Dice), thresholds.json (per class, tuned on the
validation split for the competition Dice), metrics.json, log.csv, curves.png, gallery.png and
config.json (what predict.py needs to use the model). predict.py decides each image's labels by
the expected-Dice rule (untuned: expected_dice_labels) unless told to use the tuned thresholds;
metrics.json gives the validation Dice of both.
"""

import argparse
import os
import sys

import common  # noqa: I001  (first: it quiets TensorFlow's start-up logging before Keras loads it)
import keras
import numpy as np
from common import CLASSES, NUM_CLASSES

CLS_DEFAULTS = {  # per architecture: image size, epochs (total), epochs with the backbone frozen, batch, learning rate
    "scratch": dict(img_size=128, epochs=60, frozen_epochs=0, batch_size=32, lr=2e-3),
    "mobilenetv2": dict(img_size=224, epochs=15, frozen_epochs=5, batch_size=16, lr=1e-3),
}


# ----------------------------------------------------------------------------------------------
# Models

def build_scratch(img_size=128, width=32, dropout=0.4, pools=5):
    """VGG-like: five blocks of two conv-BN-ReLU layers, max pooling after the first `pools` of
    them (default 5: all; fewer keep a larger final map at small sizes, e.g. 3 at 64 px: 8 x 8
    instead of 2 x 2), global average pooling, dropout and 20 sigmoid outputs. Takes float
    images (B, img_size, img_size, 3) in [0, 255]."""
    inputs = keras.Input((img_size, img_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    for b, filters in enumerate([width, 2 * width, 4 * width, 8 * width, 8 * width]):
        x = common.conv_bn_relu(x, filters, f"block{b + 1}a")
        x = common.conv_bn_relu(x, filters, f"block{b + 1}b")
        if b < pools:
            x = keras.layers.MaxPooling2D(name=f"block{b + 1}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="sigmoid", dtype="float32", name="labels")(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def build_transfer(img_size=224, backbone="mobilenetv2", weights="imagenet", dropout=0.3):
    """ImageNet backbone (BatchNorm always in inference mode) + pooling, dropout and a 20-way
    sigmoid head."""
    backbone_model, preprocess = common.make_backbone(backbone, img_size, weights)
    inputs = keras.Input((img_size, img_size, 3), name="image")
    x = preprocess(inputs) if preprocess is not None else inputs
    x = backbone_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="sigmoid", dtype="float32", name="labels")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_classifier")


@keras.saving.register_keras_serializable("voc")
class MultiLabelLoss(keras.losses.Loss):
    """Per-class binary loss for sigmoid outputs, averaged over classes.

    kind: 'bce' (binary cross-entropy), 'focal' (focal loss, gamma 2) or 'asl' (asymmetric loss:
    focusing gamma 4 on negatives, 0 on positives, negative probabilities shifted by 0.05).
    pos_weight: per-class weight of the positive term, to counter class imbalance.
    """

    def __init__(self, kind="bce", pos_weight=None, name="multilabel_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.kind = kind
        self.pos_weight = None if pos_weight is None else [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, "float32")
        p = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1 - 1e-7)
        w = 1.0 if self.pos_weight is None else ops.convert_to_tensor(self.pos_weight, "float32")
        if self.kind == "bce":
            pos, neg = -ops.log(p), -ops.log(1 - p)
        elif self.kind == "focal":
            pos, neg = -((1 - p) ** 2) * ops.log(p), -(p ** 2) * ops.log(1 - p)
        elif self.kind == "asl":
            pm = ops.maximum(p - 0.05, 0.0)
            pos, neg = -ops.log(p), -(pm ** 4) * ops.log(ops.clip(1 - pm, 1e-7, 1.0))
        else:
            raise ValueError(f"unknown loss kind {self.kind!r}")
        return ops.mean(y_true * w * pos + (1 - y_true) * neg, axis=-1)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "pos_weight": self.pos_weight}


@keras.saving.register_keras_serializable("voc")
class LabelDice(keras.metrics.Mean):
    """Training metric: the mean per-image competition Dice of multi-label predictions (B, 20)
    thresholded at `threshold`, against labels (B, 20) in {0, 1}; an image with no true and no
    predicted label scores 1. With top1=True every image also gets its most probable class, as
    the tuned-threshold rule (decide) does."""

    def __init__(self, threshold=0.5, top1=False, name="dice", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold, self.top1 = threshold, top1

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        chosen = y_pred >= self.threshold
        if self.top1:
            chosen = chosen | (y_pred >= ops.max(y_pred, axis=-1, keepdims=True))
        p = ops.cast(chosen, "float32")
        t = ops.cast(y_true > 0.5, "float32")
        inter, total = ops.sum(p * t, -1), ops.sum(p, -1) + ops.sum(t, -1)
        super().update_state(ops.where(total > 0, 2.0 * inter / ops.maximum(total, 1.0), 1.0))  # (B,)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "top1": self.top1}

def positive_weights(labels, cap=5.0):
    """sqrt(negatives / positives) per class, capped: rare classes weigh more, without the
    instability of the full ratio on ~750 images."""
    pos = np.maximum((labels > 0).sum(0), 1)
    return np.clip(np.sqrt((len(labels) - pos) / pos), 1.0, cap)


# ----------------------------------------------------------------------------------------------
# Evaluation: average precision (the field's ranking metric; the competition scores Dice)

def average_precision(y_true, scores):
    """Average precision of one class (area under the step precision-recall curve, as
    scikit-learn computes it); NaN when the class has no positive example."""
    y_true = np.asarray(y_true) > 0
    if not y_true.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, t = np.asarray(scores)[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall = tp / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true, scores):
    """(mAP over classes with positives, per-class AP list)."""
    per_class = [average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])]
    return float(np.nanmean(per_class)), per_class


# ----------------------------------------------------------------------------------------------
# Decisions: the expected-Dice rule (predict.py's default), or tuned thresholds with "every image
# gets at least its top class" (predict.py --cls-decision thresholds, and attack.py's success)

def default_decision(config):
    """predict.py's decision rule for a classification run's config: 'expected-dice' for a
    classifier trained with the bce loss, 'thresholds' for focal or asl (their probabilities are
    not calibrated: with asl, on held-out proxy photos, 0.774 against 0.822; focal unmeasured)."""
    return "expected-dice" if config.get("loss", "bce") == "bce" else "thresholds"


def labels_for(probs, thresholds, decision):
    """Binary labels (N, 20) int8 from probabilities (N, 20) by a decision rule: 'expected-dice'
    (expected_dice_labels; thresholds unused) or 'thresholds' (decide). Raises common.UserError
    for any other name (no silent fallback to one of the two)."""
    if decision == "expected-dice":
        return expected_dice_labels(probs)
    if decision == "thresholds":
        return decide(probs, thresholds)
    raise common.UserError(f"unknown classifier decision {decision!r}; use expected-dice or thresholds")


def decide(probs, thresholds):
    """Binary labels: probability >= the class threshold; an image with none gets its top class."""
    probs = np.asarray(probs)
    pred = probs >= np.asarray(thresholds)[None]
    empty = ~pred.any(1)
    pred[empty, probs[empty].argmax(1)] = True
    return pred.astype(np.int8)


def expected_dice_labels(probs):
    """Binary labels (N, 20) int8 of (approximately) the largest expected competition Dice per
    image, taking the probabilities (N, 20) as calibrated and independent: the top-k classes by
    probability, with the k >= 1 of largest 2 * (sum of their probabilities) / (k + sum of all 20),
    the expected Dice approximated by the ratio of the expectations (on 1,000 simulated images of
    calibrated probabilities the exact optimum over top-k sets was 0.0006 better on average, at
    most 0.03 on one image; the same k on 83%). No thresholds are tuned,
    so the validation Dice under this rule is not inflated by tuning (the checkpoint is still
    chosen on the validation split).

    Under independence the set of largest exact expected F1 (= Dice) is a top-k set (Lewis 1995,
    "Evaluating and optimizing autonomous text classification systems"); plug-in decisions of this
    kind are compared with tuned thresholds by Ye et al. 2012 ("Optimizing F-measures: a tale of
    two approaches"). On held-out proxy photos it beat the per-class tuned thresholds on every
    draw of the bce classifier (bench/README.md, "Decision rules"); with the asymmetric loss,
    whose probabilities are not calibrated, it lost.
    """
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")
    top = np.take_along_axis(probs, order, axis=1)
    sizes = np.arange(1, probs.shape[1] + 1)[None]
    expected = 2 * np.cumsum(top, axis=1) / (sizes + probs.sum(1, keepdims=True))
    chosen = sizes <= expected.argmax(1)[:, None] + 1  # per image, the first k positions of `order`
    labels = np.zeros(probs.shape, np.int8)
    np.put_along_axis(labels, order, chosen.astype(np.int8), axis=1)
    return labels


THRESHOLD_GRID = np.arange(0.05, 0.96, 0.05)


def tune_thresholds(probs, labels, grid=THRESHOLD_GRID, min_positives=3, passes=2):
    """Per-class thresholds maximising the mean per-image competition Dice on (probs, labels).

    A global threshold first; then coordinate ascent class by class, only for classes with at
    least `min_positives` positives (the others keep the global value, as a handful of examples
    cannot pick a threshold without overfitting).
    """
    truth = np.asarray(labels) > 0
    score = lambda t: common.classification_dice(decide(probs, t), truth)  # noqa: E731
    best_global = max(grid, key=lambda g: score(np.full(NUM_CLASSES, g)))
    thresholds = np.full(NUM_CLASSES, best_global)
    best = score(thresholds)
    for _ in range(passes):
        for c in np.flatnonzero(truth.sum(0) >= min_positives):
            for g in grid:
                trial = thresholds.copy()
                trial[c] = g
                s = score(trial)
                if s > best + 1e-9:
                    best, thresholds = s, trial
    return thresholds, best


def out_of_fold_dice(probs, labels, folds=5, seed=0, resamples=2000):
    """An honest estimate of the Dice that tune_thresholds' thresholds reach on images they were
    not tuned on: the images are cut into `folds` parts, each part is decided with thresholds tuned
    on the others, and the per-image Dice of those decisions is averaged (k-fold cross-validation
    of the tuning; the Dice at thresholds tuned on all images counts them twice and overstates it:
    on the demo 0.889 tuned, 0.807 out of fold, 0.768 on the test split).

    probs: (N, 20) probabilities; labels: (N, 20) 0/1. Returns (mean Dice, (low, high)): the 95%
    percentile-bootstrap interval of the mean over `resamples` resamplings of the images.
    """
    truth = np.asarray(labels) > 0
    if len(probs) < 2:  # nothing to tune on for the only image
        return float("nan"), (float("nan"), float("nan"))
    order = np.random.default_rng(seed).permutation(len(probs))
    pred = np.zeros_like(truth)
    for k in range(min(folds, len(probs))):
        held = order[k::folds]
        rest = np.setdiff1d(order, held)
        thresholds, _ = tune_thresholds(probs[rest], truth[rest])
        pred[held] = decide(probs[held], thresholds)
    per_image = common.classification_dice_per_image(pred, truth)
    means = np.random.default_rng(seed).choice(per_image, (resamples, len(per_image))).mean(1)
    return float(per_image.mean()), (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


# ----------------------------------------------------------------------------------------------
# Prediction helpers (also used by predict.py and attack.py)

def load_classifier(run_dir):
    """(model, config, thresholds) of a finished classification run folder."""
    model, config = common.load_run(run_dir, "classification")
    thresholds = np.array(common.read_json(os.path.join(run_dir, "thresholds.json"))["thresholds"])
    return model, config, thresholds


def image_only(x, y):
    """The image of an (image, labels) pair, for Dataset.map."""
    return x


def mirror(x):
    """A batch (B, H, W, 3) flipped left-right."""
    return x[:, :, ::-1]


def predict_probs(model, split, examples, config, batch_size=32, flip=False):
    """Class probabilities (N, 20) for every image of a split (optionally averaged with the
    horizontally flipped image)."""
    ds = common.make_dataset(split, examples, config["img_size"], batch_size, fit=config["fit"])
    images = ds.map(image_only)
    probs = model.predict(images, verbose=0)
    if flip:
        probs = (probs + model.predict(images.map(mirror), verbose=0)) / 2
    return probs


# ----------------------------------------------------------------------------------------------
# Pictures

def cls_gallery(path, split, examples, probs, pred, n=6):
    """The n best and n worst validation images by per-image Dice, with true and predicted labels."""
    truth = split.labels > 0
    scores = common.classification_dice_per_image(pred, truth)
    order = np.argsort(-scores + 1e-6 * np.arange(len(scores)), kind="stable")
    tiles = []
    for k, i in enumerate(list(order[:n]) + list(order[::-1][:n])):
        names_true = [CLASSES[c] for c in np.flatnonzero(truth[i])]
        names_pred = [f"{CLASSES[c]} {probs[i, c]:.2f}" for c in np.flatnonzero(pred[i])]
        caption = (f"id {split.ids[i]}\nDice {scores[i]:.2f} ({'good' if k < n else 'bad'})\n"
                   f"true: {common.wrap_names(names_true, 28)}\npred: {common.wrap_names(names_pred, 28)}")
        tiles.append(common.tile(examples[i][0], 150, caption, width=180))
    common.save_png(path, common.grid(tiles, n, title=f"validation: {n} best (top) and {n} worst (bottom)"))


# ----------------------------------------------------------------------------------------------
# Training

def train(data="demo", arch="scratch", out="runs/cls", img_size=None, epochs=None, frozen_epochs=None,
          batch_size=None, lr=None, finetune_lr_factor=0.1, finetune_from=None, lr_warmup=0, weights="imagenet",
          backbone="mobilenetv2", loss="bce", pos_weight=True, val_fraction=0.2, patience=10, time_limit=None, width=32,
          pools=5, dropout=0.4, jitter=True, seed=0,
          resume=False, checkpoint_every=60.0, overwrite=False, strategy="auto", mixed_precision="auto", jit="auto",
          verbose=None):
    """Train a 20-class multi-label classifier and write its run folder `out`.

    data: dataset folder (competition or VOC devkit layout), 'demo' (the built-in synthetic set,
        generated and cached on first use) or None (the competition data under /kaggle/input).
    arch: the architecture, 'scratch' (VGG-like CNN, random init) or 'mobilenetv2' (transfer: an
        ImageNet `backbone` with a new head, frozen for `frozen_epochs`, then fine-tuned from
        `finetune_from`, by default its top stage).
    img_size: square input side in pixels; images are resized to it, aspect ratio not kept
        (default: scratch 128, mobilenetv2 224).
    epochs: total epochs, frozen ones included (default: scratch 60, mobilenetv2 15).
    frozen_epochs: transfer only: epochs with the backbone frozen (default 5); the rest run with
        the backbone unfrozen from `finetune_from` at lr * finetune_lr_factor.
    batch_size: images per replica per step (default: scratch 32, mobilenetv2 16).
    lr: AdamW learning rate at the start of each stage, cosine-decayed over the stage (default:
        scratch 2e-3, mobilenetv2 1e-3). batch_size and lr are multiplied by the replica count.
    finetune_lr_factor: transfer only: the fine-tuning stage starts at lr * finetune_lr_factor
        (default 0.1).
    finetune_from: transfer only: the first backbone layer trained in the fine-tuning stage, a
        layer name of the keras.applications model (default None: the top stage,
        common.BACKBONES, block_13_expand for MobileNetV2); e.g. block_6_expand also trains the
        stride-16 blocks. BatchNorm layers stay frozen. Checked before training (common.finetune_start).
    lr_warmup: epochs of linear learning-rate warm-up at the start of each stage (fine-tuning
        too): the stage's cosine rate times 1/(lr_warmup+1), 2/(lr_warmup+1), ...; a short stage
        peaks below its lr (common.cosine; default 0, none).
    weights: transfer only: 'imagenet', 'none' (random init) or the path of a no-top .h5 file.
    backbone: transfer only: a name in common.BACKBONES (default 'mobilenetv2').
    loss: 'bce', 'focal' or 'asl' (MultiLabelLoss; default 'bce').
    pos_weight: weight each class's positives by sqrt(negatives / positives), capped at 5 (default True).
    val_fraction: share of the labelled images held out for validation, every class with at
        least 2 images on both sides (default 0.2).
    patience: early stopping on validation Dice, in epochs, per stage (default 10).
    time_limit: minutes (default None: no limit); from the epochs' pace, the last stage is
        shortened to the epochs that fit, so its cosine schedule still decays fully (the frozen
        stage keeps its epochs; common.TimeLimit); metrics.json says epochs_planned and
        stopped_by_time_limit.
    width: scratch only: filters in the first block, doubled up to 8 x width (default 32).
    pools: scratch only: max-pooling stages, after the first `pools` of the five blocks (default 5).
    dropout: scratch only: dropout rate before the output layer (default 0.4).
    jitter: random colour jitter of the training images (default True; off for data whose classes
        differ by colour, like the demo's).
    seed: seeds the split, the initialisation and the augmentation (default 0).
    resume: continue the interrupted run in `out` from its last checkpoint.
    checkpoint_every: seconds between writes of the run's checkpoint (last.keras, for resume; model.keras
        and state.json): after the first epoch, after an epoch that ends at least this long after
        the last write, and when each stage ends; the best epoch's weights wait in memory in
        between (default 60; 0: after every epoch; common.RunCheckpoint).
    overwrite: replace an existing `out` (put back if the new run fails before its first epoch).
    strategy, mixed_precision, jit: see common.add_device_args (default 'auto' each).
    verbose: Keras fit verbosity (0 silent, 1 progress bar, 2 one line per epoch; default None:
        common.keras_verbosity, 1 on a terminal, else 2).

    Returns (best, history): best is the model of the epoch with the best validation Dice, as
    reloaded from out/model.keras (not compiled); history maps each Keras log key ('loss',
    'dice', 'val_loss', 'val_dice', ...) to its per-epoch values for the epochs this call ran.
    Also writes thresholds.json, metrics.json, log.csv, curves.png, gallery.png, config.json.
    Raises common.UserError for an unknown arch, loss, backbone, finetune_from layer or device
    option, an lr_warmup that is not a whole number >= 0, a negative checkpoint_every, weights that
    cannot be loaded, data that is missing, unreadable or has fewer than 2 labelled images, an
    existing `out` without resume or overwrite, resume without an interrupted run, or training that
    ends with no epoch of finite loss; a run that fails before its first epoch leaves no folder.
    """
    d = CLS_DEFAULTS["scratch" if arch == "scratch" else "mobilenetv2"]
    img_size, epochs = img_size or d["img_size"], epochs or d["epochs"]
    batch_size, lr = batch_size or d["batch_size"], lr or d["lr"]
    frozen_epochs = d["frozen_epochs"] if frozen_epochs is None else frozen_epochs
    if arch not in CLS_DEFAULTS:
        raise common.UserError(f"unknown --arch {arch!r}; choose scratch or mobilenetv2")
    if loss not in ("bce", "focal", "asl"):
        raise common.UserError(f"unknown --loss {loss!r}; choose bce, focal or asl")
    lr_warmup = common.warmup_epochs(lr_warmup)
    checkpoint_every = common.checkpoint_interval(checkpoint_every)
    verbose = common.keras_verbosity(verbose)
    jit_compile = common.jit_flag(jit)
    strategy, devices = common.setup_devices(strategy, mixed_precision, batch_size, lr)
    batch_size, lr = devices["global_batch_size"], devices["lr"]
    with common.run_folder(out, resume, overwrite) as state:
        keras.utils.set_random_seed(seed)

        # Data: images (B, img_size, img_size, 3) float32 in [0, 255], labels (B, 20) float32
        split, train_split, val_split = common.split_for_training(data, val_fraction, seed)
        config = dict(task="classification", arch=arch, backbone=None if arch == "scratch" else backbone,
                      img_size=img_size, fit="resize", data=split.root, seed=seed, val_fraction=val_fraction,
                      loss=loss, pos_weight=pos_weight, devices=devices, classes=list(CLASSES),
                      val_ids=list(val_split.ids))
        train_examples = common.load_examples(train_split, masks=False) if common.cache_fits(split) else None
        val_examples = common.load_examples(val_split, masks=False)
        train_ds = common.make_dataset(train_split, train_examples, img_size, batch_size, training=True, seed=seed,
                                       fit="resize", scale=(0.8, 1.25), jitter=jitter)
        val_ds = common.make_dataset(val_split, val_examples, img_size, batch_size, fit="resize")

        # Model: built new, or the interrupted run's last epoch (optimizer included) with --resume
        with strategy.scope():
            if resume:
                model = common.resume_model(out, state)
            elif arch == "scratch":
                model = build_scratch(img_size, width, dropout, pools)
            else:
                model = build_transfer(img_size, backbone, weights)
        backbone_model = common.backbone_of(model)  # None for the scratch CNN
        resumed = common.read_json(os.path.join(out, "config.json")).get("finetune_from") if resume else None
        config["finetune_from"] = common.finetune_start(backbone_model, backbone, finetune_from, resumed)
        common.write_json(os.path.join(out, "config.json"), config)
        # Loss: positives of rare classes weigh more (pos_weights: (20,) or None)
        pos_weights = positive_weights(train_split.labels) if pos_weight else None

        # Training: compile and fit per stage, (first epoch, end epoch, learning rate, first
        # backbone layer to train): the head on the frozen backbone, then the backbone fine-tuned from
        # the layer in config["finetune_from"] (default its top stage)
        stages = [(0, epochs, lr, None)] if arch == "scratch" else \
            [(0, frozen_epochs, lr, None), (frozen_epochs, epochs, lr * finetune_lr_factor, config["finetune_from"])]
        # model.keras (best), last.keras (for --resume), state.json
        checkpoint = common.RunCheckpoint(out, "val_dice", state, checkpoint_every)
        timer = common.TimeLimit(time_limit)
        history = {}
        for stage, (start, end, stage_lr, train_from) in enumerate(stages, 1):
            first = max(start, checkpoint.state.get("epoch", 0))  # a resumed run skips its finished epochs
            if first >= end:
                continue
            print(f"stage {stage}/{len(stages)}: epochs {first + 1}-{end}, lr {stage_lr:g}", flush=True)
            if stage != checkpoint.state.get("stage"):  # else: resuming this stage, its optimizer restored
                common.set_backbone_trainable(backbone_model, train_from)
                with strategy.scope():
                    model.compile(optimizer=keras.optimizers.AdamW(stage_lr, weight_decay=1e-4),
                                  loss=MultiLabelLoss(loss, pos_weights),
                                  metrics=[LabelDice(top1=True, name="dice")], jit_compile=jit_compile)
                    common.build_optimizer(model)
            checkpoint.state["stage"] = stage
            callbacks = common.stage_callbacks(out, checkpoint, timer, stage_lr, start, end, epochs, patience,
                                               warmup=lr_warmup)
            fit = model.fit(train_ds, validation_data=val_ds, initial_epoch=first, epochs=end, verbose=verbose,
                            callbacks=callbacks)
            for key, values in fit.history.items():
                history.setdefault(key, []).extend(values)
            if checkpoint.nan_epoch or timer.hit:
                break
        state = common.end_training(out, checkpoint, timer)

        # Evaluation: the best epoch's model on the validation split; thresholds tuned there
        best = keras.models.load_model(os.path.join(out, "model.keras"), compile=False, safe_mode=True)
        metrics = evaluate_classifier(best, val_split, val_examples, train_split, config, out)
        metrics.update(epochs_trained=state["epoch"], best_epoch=state["best_epoch"],
                       stopped_by_nan=bool(state["nan_epoch"]), stopped_by_time_limit=state["time_limited"],
                       epochs_planned=state["epochs_planned"])
        common.write_json(os.path.join(out, "metrics.json"), metrics)
        common.plot_curves(os.path.join(out, "log.csv"), os.path.join(out, "curves.png"),
                           [("loss", ["loss", "val_loss"]), ("Dice (0.5 or top class)", ["dice", "val_dice"])],
                           title=f"{arch} classifier, {split.root}")
        common.finish_run(out, state)
        print(f"val mAP {metrics['val_map']:.3f}  val Dice@0.5 {metrics['val_dice_at_0.5']:.3f}  val Dice "
              f"(expected-Dice rule, untuned) {metrics['val_dice_expected_dice']:.3f}; tuned thresholds "
              f"{metrics['val_dice_tuned']:.3f}, out of fold "
              f"{metrics['val_dice_out_of_fold']:.3f}  "
              f"(constant baseline {metrics['baseline_dice']:.3f}); run folder {out}", flush=True)
        return best, history


def evaluate_classifier(model, val_split, val_examples, train_split, config, out):
    """Validation metrics, tuned thresholds (thresholds.json) and the gallery PNG (labels as
    predict.py decides them by default: default_decision)."""
    probs = predict_probs(model, val_split, val_examples, config)
    truth = val_split.labels > 0
    val_map, per_class_ap = mean_average_precision(truth, probs)
    thresholds, tuned = tune_thresholds(probs, truth)
    oof, oof_ci = out_of_fold_dice(probs, truth)
    common.write_json(os.path.join(out, "thresholds.json"),
                      {"thresholds": thresholds.tolist(), "classes": list(CLASSES),
                       "rule": "label = prob >= threshold; an image with none gets its top class"})
    # constant baseline: the training class frequencies as scores for every image, thresholds tuned
    freq = np.tile((train_split.labels > 0).mean(0), (len(val_split), 1))
    _, baseline = tune_thresholds(freq, truth, passes=0)
    expected = expected_dice_labels(probs)
    shown = labels_for(probs, thresholds, default_decision(config))  # predict.py's labels
    cls_gallery(os.path.join(out, "gallery.png"), val_split, val_examples, probs, shown)
    return {"val_map": val_map, "val_ap": dict(zip(CLASSES, per_class_ap)),
            "val_dice_expected_dice": common.classification_dice(expected, truth),
            "val_dice_at_0.5": common.classification_dice(probs >= 0.5, truth),
            "val_dice_at_0.5_top1": common.classification_dice(decide(probs, np.full(NUM_CLASSES, 0.5)), truth),
            "val_dice_tuned": tuned, "val_dice_out_of_fold": oof, "val_dice_out_of_fold_95ci": oof_ci,
            "baseline_dice": baseline, "val_images": len(val_split)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset folder (competition or VOC layout) or 'demo' (default: /kaggle/input)")
    p.add_argument("--arch", default="scratch", choices=list(CLS_DEFAULTS), help="default %(default)s")
    p.add_argument("--out", default="runs/cls", help="run folder (default %(default)s)")
    p.add_argument("--img-size", type=int, help="input size (default: scratch 128, mobilenetv2 224)")
    p.add_argument("--epochs", type=int, help="total epochs (default: scratch 60, mobilenetv2 15)")
    p.add_argument("--frozen-epochs", type=int, help="transfer: epochs with the backbone frozen (default 5)")
    p.add_argument("--batch-size", type=int, help="default: scratch 32, mobilenetv2 16")
    p.add_argument("--lr", type=float, help="learning rate (default: scratch 2e-3, mobilenetv2 1e-3)")
    p.add_argument("--finetune-lr-factor", type=float, default=0.1,
                   help="transfer: learning-rate factor once the backbone is unfrozen from --finetune-from "
                        "(default %(default)s)")
    p.add_argument("--finetune-from", metavar="LAYER",
                   help="transfer: first backbone layer fine-tuned after the frozen epochs, a layer name of "
                        "the keras.applications model, e.g. block_6_expand (default: its top stage, "
                        "block_13_expand for mobilenetv2)")
    p.add_argument("--lr-warmup", type=int, default=0, metavar="EPOCHS",
                   help="epochs of linear learning-rate warm-up at the start of each stage: 1/(N+1), 2/(N+1), "
                        "... of its cosine rate (default %(default)s)")
    p.add_argument("--weights", default="imagenet", help="backbone weights: imagenet, none or a .h5 path")
    p.add_argument("--backbone", default="mobilenetv2", choices=list(common.BACKBONES),
                   help="transfer backbone (default %(default)s)")
    p.add_argument("--loss", default="bce", choices=["bce", "focal", "asl"], help="default %(default)s")
    p.add_argument("--no-pos-weight", dest="pos_weight", action="store_false",
                   help="do not up-weight the positives of rare classes (positive-class weights)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="default %(default)s")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (default %(default)s)")
    p.add_argument("--time-limit", type=float, help="stop training after this many minutes")
    p.add_argument("--width", type=int, default=32,
                   help="scratch CNN: filters in the first block (default %(default)s)")
    p.add_argument("--pools", type=int, default=5,
                   help="scratch CNN: max-pooling stages, after the first N of 5 blocks (default %(default)s)")
    p.add_argument("--dropout", type=float, default=0.4,
                   help="scratch CNN: dropout before the output (default %(default)s)")
    p.add_argument("--no-jitter", dest="jitter", action="store_false", help="no colour jitter of training images")
    p.add_argument("--seed", type=int, default=0)
    common.add_device_args(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="write the checkpoint (last.keras for --resume, model.keras, state.json) after the "
                        "first epoch, then after an epoch that ends at least this long after the last write, "
                        "and when each stage ends (default %(default)g; 0: every epoch)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = vars(p.parse_args(argv))
    args.pop("debug")
    train(**args)


if __name__ == "__main__":
    if common.in_notebook(globals()):  # pasted into a notebook cell: the cells after it can `import cls_train`
        sys.modules["cls_train"] = common.cell_module("cls_train", globals())
    else:
        sys.exit(common.run_cli(main))
