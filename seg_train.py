"""Train a VOC segmenter (background + 20 classes, 255 = void): a U-Net from scratch, or a U-Net
whose encoder is an ImageNet MobileNetV2 (frozen first, then fine-tuned).

    python seg_train.py --data demo --arch unet --out runs/seg_unet
    KERAS_HOME=../shared/keras_home python seg_train.py --data DIR --arch mobilenetv2_unet --out runs/seg_mnv2

Training uses random rescales (longer side 0.5-1.5 x --img-size) and square crops of --crop-size
(default --img-size); evaluation and prediction run on the whole image (scaled so its longer side
is --img-size, padded to the network stride, cropped back) and return label maps at the image's
original size. The run folder gets model.keras (best val Dice), metrics.json (mIoU, per-class
IoU, competition Dice at original resolution), log.csv, curves.png, gallery.png and config.json.
"""

import argparse
import os
import sys

import common  # noqa: I001  (first: it quiets TensorFlow's start-up logging before Keras loads it)
import keras
import numpy as np
import tensorflow as tf
from common import CLASSES, NUM_CLASSES, VOID

SEG_DEFAULTS = {  # per architecture: image size, epochs (total), epochs with the backbone frozen, batch, learning rate
    "unet": dict(img_size=160, epochs=60, frozen_epochs=0, batch_size=8, lr=5e-3),
    "mobilenetv2_unet": dict(img_size=256, epochs=30, frozen_epochs=8, batch_size=8, lr=2e-3),
}
STRIDE = 32  # both networks downsample 32x: inputs are padded to a multiple of this


# ----------------------------------------------------------------------------------------------
# Models

def up_block(x, skip, filters, name, separable=False):
    """Resize-conv upsampling (bilinear x2: no checkerboard artefacts), concatenation with the
    encoder's skip connection, one conv-BN-ReLU."""
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
    x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
    return common.conv_bn_relu(x, filters, name, separable=separable)


def head(x):
    return keras.layers.Conv2D(NUM_CLASSES + 1, 1, dtype="float32", name="logits")(x)


def build_unet(img_size=None, width=16):
    """U-Net from scratch: five encoder scales of two conv-BN-ReLU layers (skip connections at
    strides 1, 2, 4, 8, 16; channels grow 1, 2, 4, 6, 8 x width, capped so that deep levels stay
    cheap on a CPU), a bottleneck at stride 32, and a decoder of resize-conv steps; 21 logits per
    pixel. Any input size that is a multiple of 32 works (img_size=None: any size)."""
    widths = [width * k for k in (1, 2, 4, 6, 8)]
    inputs = keras.Input((img_size, img_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    skips = []
    for level, filters in enumerate(widths, 1):
        x = common.conv_bn_relu(x, filters, f"enc{level}a")
        x = common.conv_bn_relu(x, filters, f"enc{level}b")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"enc{level}_pool")(x)
    x = common.conv_bn_relu(x, width * 10, "bottleneck_a")
    x = common.conv_bn_relu(x, width * 10, "bottleneck_b")
    for level in reversed(range(len(widths))):
        x = up_block(x, skips[level], widths[level], f"dec{level + 1}")
    return keras.Model(inputs, head(x), name="unet")


def build_transfer_unet(img_size=None, backbone="mobilenetv2", weights="imagenet", decoder=(128, 64, 48, 24),
                        global_context=False):
    """U-Net with an ImageNet encoder (BatchNorm always in inference mode; skips at strides 16, 8,
    4, 2) and a light decoder: the stride-32 features reduced by a 1x1 conv, then per skip a
    bilinear x2, the skip reduced by a 1x1 conv, and a separable 3x3 conv; logits at stride 2,
    upsampled x2 to full size. 21 logits per pixel.
    global_context: also add to the reduced stride-32 features a 1x1 conv-BN-ReLU of their average
    over the image (image pooling, DeepLabv3: Chen et al. 2017), so that every pixel's decision
    sees what the whole image holds."""
    backbone_model, preprocess = common.make_backbone(backbone, img_size, weights)
    skip_names = common.BACKBONES[backbone][3]
    encoder = keras.Model(backbone_model.input,
                          [backbone_model.get_layer(n).output for n in skip_names] + [backbone_model.output],
                          name=f"{backbone}_encoder")
    inputs = keras.Input((img_size, img_size, 3), name="image")
    x = preprocess(inputs) if preprocess is not None else inputs
    *skips, features = encoder(x, training=False)
    x = common.conv_bn_relu(features, decoder[0], "reduce", kernel=1)
    if global_context:
        pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="context_pool")(features)
        x = keras.layers.Add(name="context_add")([x, common.conv_bn_relu(pooled, decoder[0], "context", kernel=1)])
    for k, filters in enumerate(decoder):
        level = len(decoder) - k
        skip = common.conv_bn_relu(skips[-1 - k], filters // 2, f"skip{level}", kernel=1)
        x = up_block(x, skip, filters, f"dec{level}", separable=True)
    x = head(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", dtype="float32", name="full_size")(x)
    return keras.Model(inputs, x, name=f"{backbone}_unet")


# ----------------------------------------------------------------------------------------------
# Losses (void pixels never count)

@keras.saving.register_keras_serializable("voc")
class SegLoss(keras.losses.Loss):
    """'ce': sparse categorical cross-entropy averaged over non-void pixels; 'dice': 1 - soft Dice
    averaged over the 21 classes, over non-void pixels of the batch; 'ce+dice': their sum.
    A batch of void-only masks gives zero loss and zero gradient."""

    def __init__(self, kind="ce+dice", name="seg_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.kind = kind

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, "int32")
        valid = ops.cast(y_true != VOID, "float32")
        labels = ops.where(y_true == VOID, 0, y_true)
        n_valid = ops.sum(valid)
        total = 0.0
        if "ce" in self.kind.split("+"):
            ce = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
            total = total + ops.sum(ce * valid) / ops.maximum(n_valid, 1.0)
        if "dice" in self.kind.split("+"):
            probs = ops.softmax(y_pred, axis=-1) * valid[..., None]
            onehot = ops.one_hot(labels, NUM_CLASSES + 1) * valid[..., None]
            axes = (0, 1, 2)
            inter = ops.sum(probs * onehot, axes)
            denom = ops.sum(probs, axes) + ops.sum(onehot, axes)
            total = total + 1.0 - ops.mean((2.0 * inter + 1.0) / (denom + 1.0))
        # the batch's loss repeated per image: Keras averages it back and, under tf.distribute,
        # divides it by the replica count (which it never does for a scalar loss)
        return total * ops.ones_like(valid[:, 0, 0])

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


@keras.saving.register_keras_serializable("voc")
class MaskDice(keras.metrics.Mean):
    """Training metric: the mean per-image segmentation Dice (on the 20-class stack) of argmax
    predictions (B, H, W, 21) against label maps (B, H, W) with 255 = void. Unlike the
    competition's score, predictions on void pixels do not count: on training canvases void is
    mostly the padding around the image, which prediction crops away (seg_metrics gives the
    exact score)."""

    def __init__(self, name="dice", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        t = ops.cast(y_true, "int32")
        p = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        t_obj = ops.cast((t >= 1) & (t <= NUM_CLASSES), "float32")
        p_obj = ops.cast((p >= 1) & (t != VOID), "float32")
        inter = ops.sum(t_obj * p_obj * ops.cast(p == t, "float32"), (1, 2))
        total = ops.sum(p_obj, (1, 2)) + ops.sum(t_obj, (1, 2))
        super().update_state(ops.where(total > 0, 2.0 * inter / ops.maximum(total, 1.0), 1.0))  # (B,)

# ----------------------------------------------------------------------------------------------
# Sampling

def repeat_factors(labels, threshold=0.1):
    """Repeat-factor sampling (LVIS, Gupta et al. 2019): an image is shown
    round(max(1, max over its classes c of sqrt(threshold / f_c))) times an epoch, f_c the
    fraction of images containing c, so classes in fewer than `threshold` of the images are seen
    more often without dropping any image. labels: (N, 20) with 1 = present."""
    present = np.asarray(labels) > 0
    freq = np.maximum(present.mean(0), 1e-12)
    per_class = np.maximum(1.0, np.sqrt(threshold / freq))
    return np.round(np.max(np.where(present, per_class, 1.0), axis=1)).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Whole-image prediction at original size (also used by predict.py and attack.py)

def canvas_size(img_size, scale):
    return int(np.ceil(img_size * scale / STRIDE) * STRIDE)


def segment(model, images, img_size, scales=(1.0,), flip=False, batch_size=8):
    """Yield per-pixel class probabilities of each image on its network grid: the image resized so
    its longer side is img_size (label_map takes them to the original size).

    At each scale the image is resized so its longer side is img_size * scale and padded to a
    square canvas that is a multiple of the network stride; the model sees the batch (and its
    mirror, with flip) in one compiled call; the crops are averaged in probability space.
    """
    @tf.function(reduce_retracing=True)
    def probabilities(canvas):
        x = tf.concat([canvas, canvas[:, :, ::-1]], 0) if flip else canvas
        p = tf.nn.softmax(tf.cast(model(x, training=False), tf.float32), axis=-1)
        return (p[:batch_size] + p[batch_size:, :, ::-1]) / 2 if flip else p

    for k in range(0, len(images), batch_size):
        chunk = images[k:k + batch_size]
        grids = [grid_size(im.shape[:2], img_size) for im in chunk]
        total = None
        for scale in scales:
            size = canvas_size(img_size, scale)
            # always a full batch (the last one padded with blank canvases): one trace per scale
            boxes, canvas = [], np.full((batch_size, size, size, 3), common.PAD_VALUE, np.float32)
            for j, im in enumerate(chunk):
                nh, nw = grid_size(im.shape[:2], img_size * scale)
                canvas[j, :nh, :nw] = tf.image.resize(im.astype(np.float32), (nh, nw)).numpy()
                boxes.append((nh, nw))
            probs = probabilities(canvas).numpy()
            crops = [probs[j, :nh, :nw] for j, (nh, nw) in enumerate(boxes)]
            crops = [c if c.shape[:2] == g else tf.image.resize(c, g).numpy() for c, g in zip(crops, grids)]
            total = crops if total is None else [t + c for t, c in zip(total, crops)]
        for t in total:
            yield t / len(scales) if len(scales) > 1 else t


def grid_size(hw, longer_side):
    """(h, w) scaled so the longer side is `longer_side` (each at least 1 pixel)."""
    s = longer_side / max(hw)
    return max(1, round(hw[0] * s)), max(1, round(hw[1] * s))


DOMINANCE_MARGIN = 1e-5  # far above the float32 rounding of a bilinear weight sum of values in [0, 1]


def _contenders(probs, allowed):
    """Bool per class: the allowed classes that can win the argmax somewhere after any bilinear
    resize of probs (h, w, C). Each resized pixel is a convex combination of one 2x2 cell of the
    grid (same weights for every class), so a class whose maximum over a cell lies below another
    class's minimum over that cell (by DOMINANCE_MARGIN) loses everywhere that cell supports; a
    class doing so in every cell can be left out of the resize without changing the result."""
    p = tf.where(allowed, probs, -1.0)
    p = tf.pad(p, [[0, 1], [0, 1], [0, 0]], mode="SYMMETRIC")[None]  # a 1-pixel grid still has cells
    high = tf.nn.max_pool2d(p, 2, 1, "VALID")[0]  # per 2x2 cell
    low = -tf.nn.max_pool2d(-p, 2, 1, "VALID")[0]
    beaten = high + DOMINANCE_MARGIN < tf.reduce_max(low, -1, keepdims=True)
    return allowed & ~tf.reduce_all(beaten, axis=[0, 1])


@tf.function(reduce_retracing=True)
def _label_map(probs, size, allowed):
    """Bilinear resize to size, then the argmax among allowed classes, resizing only the classes
    that can win (_contenders): bit-identical to resizing all, faster with few contenders."""
    keep = tf.cast(tf.where(_contenders(probs, allowed))[:, 0], tf.int32)
    up = tf.image.resize(tf.gather(probs, keep, axis=-1), size)
    return tf.cast(tf.gather(keep, tf.argmax(up, axis=-1, output_type=tf.int32)), tf.uint8)


def label_map(probs, size, allowed=None):
    """uint8 label map of the given (H, W) size: probabilities (h, w, 21) resized bilinearly, then
    the most probable class among `allowed` (a bool per class; default all)."""
    allowed = np.ones(NUM_CLASSES + 1, bool) if allowed is None else np.asarray(allowed, bool)
    return _label_map(tf.constant(probs, tf.float32), tf.constant(size[:2], tf.int32), tf.constant(allowed)).numpy()


def predict_masks(model, images, img_size, scales=(1.0,), flip=False, batch_size=8):
    """uint8 label maps (0 background, 1..20) at each image's original size."""
    probs = segment(model, images, img_size, scales, flip, batch_size)
    return [label_map(p, im.shape[:2]) for p, im in zip(probs, images)]


def confusion_matrix(pred, true, num_classes=NUM_CLASSES + 1):
    """(num_classes x num_classes) counts, rows = truth; void (255) pixels ignored."""
    pred, true = np.asarray(pred).ravel().astype(np.int64), np.asarray(true).ravel().astype(np.int64)
    keep = true != VOID
    return np.bincount(true[keep] * num_classes + pred[keep],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_from_confusion(cm):
    """(mIoU over classes present in truth or prediction, per-class IoU with NaN for absent)."""
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)), iou.tolist()


def seg_metrics(pred_masks, true_masks):
    """Original-resolution metrics: mIoU and per-class IoU (void ignored), competition Dice."""
    cm = sum(confusion_matrix(p, t) for p, t in zip(pred_masks, true_masks))
    miou, iou = iou_from_confusion(cm)
    dice = [common.segmentation_dice(p, t) for p, t in zip(pred_masks, true_masks)]
    return {"miou": miou, "iou": dict(zip(("background",) + CLASSES, iou)), "dice": float(np.mean(dice)),
            "per_image_dice": dice}


# ----------------------------------------------------------------------------------------------
# Pictures

def seg_gallery(path, split, examples, pred_masks, per_image_dice, n=4):
    """The n best and n worst validation images: image, true mask, predicted mask, with a legend."""
    order = np.argsort(-np.asarray(per_image_dice), kind="stable")
    tiles, shown = [], set()
    for k, i in enumerate(list(order[:n]) + list(order[::-1][:n])):
        image, mask = examples[i]
        tag = "good" if k < n else "bad"
        tiles.append(common.tile(image, 120, f"id {split.ids[i]}\n{tag}: Dice {per_image_dice[i]:.2f}", width=160))
        tiles.append(common.tile(common.colorize(mask), 120, "true", width=160))
        tiles.append(common.tile(common.colorize(pred_masks[i]), 120, "predicted", width=160))
        shown |= set(np.unique(mask).tolist()) | set(np.unique(pred_masks[i]).tolist())
    pic = common.grid(tiles, 6, title=f"validation: {n} best (top rows) and {n} worst (bottom rows)")
    common.save_png(path, common.with_legend(pic, [c - 1 for c in sorted(shown) if 1 <= c <= NUM_CLASSES]))


# ----------------------------------------------------------------------------------------------
# Training

def train(data="demo", arch="unet", out="runs/seg", img_size=None, crop_size=None, epochs=None, frozen_epochs=None,
          batch_size=None, lr=None, finetune_lr_factor=0.25, finetune_from=None, lr_warmup=0, weights="imagenet",
          backbone="mobilenetv2", global_context=False, loss="ce+dice", val_fraction=0.2, repeat_factor=False,
          copy_paste=None, patience=12, time_limit=None, width=16, seed=0, resume=False, checkpoint_every=60.0,
          overwrite=False, strategy="auto", mixed_precision="auto", jit="auto", verbose=None):
    """Train a 21-class segmenter (background + 20; void pixels ignored) and write its run folder `out`.

    data: dataset folder (competition or VOC devkit layout) with a mask for every training
        image, 'demo' (the built-in synthetic set) or None (the competition data under /kaggle/input).
    arch: the architecture, 'unet' (U-Net from random init) or 'mobilenetv2_unet' (U-Net whose
        encoder is an ImageNet `backbone`, frozen for `frozen_epochs`, then fine-tuned from
        `finetune_from`, by default its top stage).
    img_size: the image scale in pixels, a multiple of 32 (default: unet 160, mobilenetv2_unet
        256): training rescales each image so its longer side is img_size x a random factor in
        0.5-1.5, per-epoch validation letterboxes whole images to img_size, and metrics.json (and
        predict.py) score whole images predicted with their longer side at img_size (segment),
        resized back to their original size.
    crop_size: side in pixels of the square training crops, a positive multiple of 32 and at most
        img_size (default img_size). Below img_size, training sees objects at the scale of
        prediction for a fraction of the compute: each step costs about (crop_size / img_size)^2
        of a full-size one.
    epochs: total epochs, frozen ones included (default: unet 60, mobilenetv2_unet 30).
    frozen_epochs: transfer only: epochs with the backbone frozen (default 8).
    batch_size: images per replica per step (default 8).
    lr: AdamW learning rate at the start of each stage, cosine-decayed over the stage (default:
        unet 5e-3, mobilenetv2_unet 2e-3). batch_size and lr are multiplied by the replica count.
    finetune_lr_factor: transfer only: the fine-tuning stage starts at lr * finetune_lr_factor
        (default 0.25).
    finetune_from: transfer only: the first backbone layer trained in the fine-tuning stage, a
        layer name of the keras.applications model (default None: the top stage,
        common.BACKBONES, block_13_expand for MobileNetV2); e.g. block_6_expand also trains the
        stride-16 blocks. BatchNorm layers stay frozen. Checked before training (common.finetune_start).
    lr_warmup: epochs of linear learning-rate warm-up at the start of each stage (fine-tuning
        too): the stage's cosine rate times 1/(lr_warmup+1), 2/(lr_warmup+1), ...; a short stage
        peaks below its lr (common.cosine; default 0, none).
    weights: transfer only: 'imagenet', 'none' (random init) or the path of a no-top .h5 file.
    backbone: transfer only: a name in common.BACKBONES (default 'mobilenetv2').
    global_context: transfer only: the decoder also takes the stride-32 features averaged over
        the image (image pooling; build_transfer_unet; default False).
    loss: 'ce', 'dice' or 'ce+dice' (SegLoss; default 'ce+dice').
    val_fraction: share of the labelled images held out for validation (default 0.2).
    repeat_factor: repeat-factor sampling: images of rare classes repeat within an epoch
        (repeat_factors; default False).
    copy_paste: copy-paste augmentation: the probability in [0, 1] that a training crop receives
        the objects (with their labels) of the crop before it in its batch (common.copy_paste_batch;
        needs a batch of 2 or more; default None: 0, never, or with resume the interrupted run's).
    patience: early stopping on validation Dice, in epochs, per stage (default 12).
    time_limit: minutes (default None: no limit); from the epochs' pace, the last stage is
        shortened to the epochs that fit, so its cosine schedule still decays fully (the frozen
        stage keeps its epochs; common.TimeLimit); metrics.json says epochs_planned and
        stopped_by_time_limit.
    width: unet only: filters at full resolution (default 16; up to 8 x width deeper, 10 x at the bottleneck).
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
    reloaded from out/model.keras (not compiled; takes any input size that is a multiple of 32);
    history maps each Keras log key ('loss', 'miou', 'dice', 'val_loss', 'val_miou', 'val_dice',
    ...) to its per-epoch values for the epochs this call ran. Also writes metrics.json (at
    original resolution), log.csv, curves.png, gallery.png, config.json.
    Raises common.UserError for an unknown arch, loss, backbone, finetune_from layer or device
    option, global_context with arch 'unet', a copy_paste outside [0, 1] (or above 0 with a batch of
    one, or other than the interrupted run's), an lr_warmup that is
    not a whole number >= 0, a negative checkpoint_every, an img_size or crop_size that is not a
    positive multiple of 32, a crop_size above img_size, weights that cannot be loaded, data that
    is missing, unreadable, without masks or with fewer than 2 labelled images, an existing `out`
    without resume or overwrite, resume without an interrupted run (or with global_context where it had none), or
    training that ends with no epoch of finite loss; a run that fails before its first epoch leaves
    no folder.
    """
    if arch not in SEG_DEFAULTS:
        raise common.UserError(f"unknown --arch {arch!r}; choose unet or mobilenetv2_unet")
    if global_context and arch == "unet":
        raise common.UserError("--global-context is for the transfer U-Net (--arch mobilenetv2_unet)")
    if loss not in ("ce", "dice", "ce+dice"):
        raise common.UserError(f"unknown --loss {loss!r}; choose ce, dice or ce+dice")
    if copy_paste is not None and not 0 <= copy_paste <= 1:
        raise common.UserError(f"--copy-paste is a probability in [0, 1], not {copy_paste}")
    lr_warmup = common.warmup_epochs(lr_warmup)
    checkpoint_every = common.checkpoint_interval(checkpoint_every)
    d = SEG_DEFAULTS[arch]
    img_size, epochs = img_size or d["img_size"], epochs or d["epochs"]
    batch_size, lr = batch_size or d["batch_size"], lr or d["lr"]
    frozen_epochs = d["frozen_epochs"] if frozen_epochs is None else frozen_epochs
    crop_size = img_size if crop_size is None else crop_size
    for flag, size in (("--img-size", img_size), ("--crop-size", crop_size)):
        if size <= 0 or size % STRIDE:
            raise common.UserError(f"{flag} must be a positive multiple of {STRIDE}, not {size}")
    if crop_size > img_size:
        raise common.UserError(f"--crop-size {crop_size} is larger than --img-size {img_size}: the crops would "
                               f"hold mostly padding; use a crop of at most the image scale")
    verbose = common.keras_verbosity(verbose)
    jit_compile = common.jit_flag(jit)
    strategy, devices = common.setup_devices(strategy, mixed_precision, batch_size, lr)
    batch_size, lr = devices["global_batch_size"], devices["lr"]
    with common.run_folder(out, resume, overwrite) as state:
        keras.utils.set_random_seed(seed)
        if resume:  # an interrupted run keeps its copy-paste probability
            resumed = common.read_json(os.path.join(out, "config.json")).get("copy_paste", 0.0)
            if copy_paste is not None and copy_paste != resumed:
                raise common.UserError(f"the interrupted run trains with --copy-paste {resumed:g}, not "
                                       f"{copy_paste:g}: resume it without --copy-paste")
            copy_paste = resumed
        copy_paste = copy_paste or 0.0
        if copy_paste and batch_size < 2:
            raise common.UserError("--copy-paste pastes between the crops of a batch: it needs --batch-size 2 or more")

        # Data: training crops (B, crop_size, crop_size, 3) float32 in [0, 255] with masks (B, crop_size,
        # crop_size) int32, 255 = void; validation images letterboxed to img_size
        split, train_split, val_split = common.split_for_training(data, val_fraction, seed, masks=True)
        config = dict(task="segmentation", arch=arch, backbone=None if arch == "unet" else backbone,
                      img_size=img_size, crop_size=crop_size, fit="letterbox", data=split.root, seed=seed,
                      global_context=global_context, val_fraction=val_fraction, loss=loss,
                      repeat_factor=repeat_factor, copy_paste=copy_paste, devices=devices,
                      classes=list(CLASSES), val_ids=list(val_split.ids))
        train_examples = common.load_examples(train_split) if common.cache_fits(split) else None
        val_examples = common.load_examples(val_split)
        train_ds = common.make_dataset(train_split, train_examples, img_size, batch_size, training=True, seed=seed,
                                       target="mask", scale=(0.5, 1.5), crop=crop_size, copy_paste=copy_paste,
                                       repeats=repeat_factors(train_split.labels) if repeat_factor else None)
        val_ds = common.make_dataset(val_split, val_examples, img_size, batch_size, target="mask")

        # Model: built new (any input size that is a multiple of 32), or the interrupted run's last
        # epoch (optimizer included) with --resume
        with strategy.scope():
            if resume:
                model = common.resume_model(out, state)
            elif arch == "unet":
                model = build_unet(None, width)
            else:
                model = build_transfer_unet(None, backbone, weights, global_context=global_context)
        backbone_model = common.backbone_of(model)  # None for the scratch U-Net
        resumed = common.read_json(os.path.join(out, "config.json")).get("finetune_from") if resume else None
        config["finetune_from"] = common.finetune_start(backbone_model, backbone, finetune_from, resumed)
        if resume:  # the interrupted run's decoder stays
            config["global_context"] = any(layer.name == "context_pool" for layer in model.layers)
            if global_context and not config["global_context"]:
                raise common.UserError("the interrupted run has no global context: resume it without --global-context")
        common.write_json(os.path.join(out, "config.json"), config)

        # Training: compile and fit per stage, (first epoch, end epoch, learning rate, first
        # backbone layer to train): the decoder on the frozen backbone, then the backbone fine-tuned from
        # the layer in config["finetune_from"] (default its top stage)
        stages = [(0, epochs, lr, None)] if arch == "unet" else \
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
                    model.compile(optimizer=keras.optimizers.AdamW(stage_lr, weight_decay=1e-4), loss=SegLoss(loss),
                                  metrics=[keras.metrics.MeanIoU(NUM_CLASSES + 1, ignore_class=VOID,
                                                                 sparse_y_pred=False, name="miou"),
                                           MaskDice(name="dice")], jit_compile=jit_compile)
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

        # Evaluation: the best epoch's model on whole validation images, at their original size
        best = keras.models.load_model(os.path.join(out, "model.keras"), compile=False, safe_mode=True)
        metrics = evaluate_segmenter(best, val_split, val_examples, img_size, out)
        metrics.update(epochs_trained=state["epoch"], best_epoch=state["best_epoch"],
                       stopped_by_nan=bool(state["nan_epoch"]), stopped_by_time_limit=state["time_limited"],
                       epochs_planned=state["epochs_planned"])
        common.write_json(os.path.join(out, "metrics.json"), metrics)
        common.plot_curves(os.path.join(out, "log.csv"), os.path.join(out, "curves.png"),
                           [("loss", ["loss", "val_loss"]), ("mIoU", ["miou", "val_miou"]),
                            ("Dice", ["dice", "val_dice"])],
                           title=f"{arch} segmenter on {split.root} (training crops of {crop_size} px, "
                                 f"images at {img_size} px)")
        common.finish_run(out, state)
        print(f"val mIoU {metrics['val_miou']:.3f}  val Dice {metrics['val_dice']:.3f} "
              f"(all-background {metrics['all_background_dice']:.3f}), original resolution; run folder {out}",
              flush=True)
        return best, history


def evaluate_segmenter(model, val_split, val_examples, img_size, out):
    """Validation metrics at original resolution (mIoU, per-class IoU, the competition's
    segmentation Dice, the all-background baseline) and the gallery PNG."""
    pred = predict_masks(model, [im for im, _ in val_examples], img_size)
    m = seg_metrics(pred, [mask for _, mask in val_examples])
    seg_gallery(os.path.join(out, "gallery.png"), val_split, val_examples, pred, m["per_image_dice"])
    all_background = float(np.mean([common.segmentation_dice(np.zeros_like(mask), mask) for _, mask in val_examples]))
    return {"val_miou": m["miou"], "val_iou": m["iou"], "val_dice": m["dice"],
            "all_background_dice": all_background, "val_images": len(val_split)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset folder (competition or VOC layout) or 'demo' (default: /kaggle/input)")
    p.add_argument("--arch", default="unet", choices=list(SEG_DEFAULTS), help="default %(default)s")
    p.add_argument("--out", default="runs/seg", help="run folder (default %(default)s)")
    p.add_argument("--img-size", type=int, help="image scale: longer side at prediction, around which training "
                                                "rescales; a positive multiple of 32 (default: unet 160, "
                                                "mobilenetv2_unet 256)")
    p.add_argument("--crop-size", type=int, help="training crop size, a positive multiple of 32, at most "
                                                 "--img-size (default: --img-size)")
    p.add_argument("--epochs", type=int, help="total epochs (default: unet 60, mobilenetv2_unet 30)")
    p.add_argument("--frozen-epochs", type=int, help="transfer: epochs with the backbone frozen (default 8)")
    p.add_argument("--batch-size", type=int, help="default 8")
    p.add_argument("--lr", type=float, help="learning rate (default: unet 5e-3, mobilenetv2_unet 2e-3)")
    p.add_argument("--finetune-lr-factor", type=float, default=0.25,
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
                   help="encoder of the transfer U-Net (default %(default)s)")
    p.add_argument("--global-context", action="store_true",
                   help="transfer: the decoder also takes the deepest features averaged over the image "
                        "(image pooling, as in DeepLabv3)")
    p.add_argument("--loss", default="ce+dice", choices=["ce", "dice", "ce+dice"], help="default %(default)s")
    p.add_argument("--val-fraction", type=float, default=0.2, help="default %(default)s")
    p.add_argument("--repeat-factor-sampling", dest="repeat_factor", action="store_true",
                   help="repeat images of rare classes within an epoch (repeat-factor sampling)")
    p.add_argument("--copy-paste", type=float, metavar="P",
                   help="copy-paste augmentation: probability in [0, 1] that a training crop receives the "
                        "objects of the crop before it in its batch (default 0; with --resume the run's)")
    p.add_argument("--patience", type=int, default=12, help="early-stopping patience in epochs (default %(default)s)")
    p.add_argument("--time-limit", type=float, help="stop training after this many minutes")
    p.add_argument("--width", type=int, default=16, help="U-Net: filters at full resolution (default %(default)s)")
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
    if common.in_notebook(globals()):  # pasted into a notebook cell: the cells after it can `import seg_train`
        sys.modules["seg_train"] = common.cell_module("seg_train", globals())
    else:
        sys.exit(common.run_cli(main))
