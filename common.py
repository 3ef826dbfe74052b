"""Shared base for the VOC 2009 toolkit. Each script imports it (`import common`); what only one
script uses lives in that script (a metric beside its loss, a sampler beside its training loop).

Sections, in order (who uses them):
- Data sources: the competition and VOC devkit layouts, image and mask readers, the train/val
  split (every script).
- Input pipeline: cached examples, letterbox or resize, augmentation, make_dataset (cls_train,
  seg_train, attack).
- Competition contract: RLE, the competition Dice, submission.csv, validator, scorer, JSON files
  (predict, run_all; the Dice also cls_train and seg_train).
- Pictures: VOC palette, tiles, grids, legends, learning-curve charts (every script).
- Model building blocks: conv_bn_relu, ImageNet backbones and their freezing (cls_train,
  seg_train; attack reads the backbone).
- Devices: tf.distribute strategy, mixed precision, XLA (cls_train, seg_train).
- Run folders: run_folder, load_run and read_config (every script).
- Training: RunCheckpoint, TimeLimit, the cosine schedule, stage_callbacks, end_training, resume
  (cls_train, seg_train, whose train() holds the compile and fit loop).
- Demo data: a synthetic, deterministic data set in the competition layout (--data demo, tests).
- Command line: `check` and `score`, run_cli, the notebook-paste helpers (every script).

Command line:
    python common.py check --data demo --out runs/data_check   # dataset summary + sample PNG
    python common.py score --pred submission.csv --truth solution.csv
"""

import argparse
import concurrent.futures
import contextlib
import csv
import glob
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import types
import warnings
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # silence TF C++ chatter (and the cuInit error without a GPU)
# TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 extensions; on an
# AVX2-only CPU (a 2-core AMD EPYC here) turning them on made a MobileNetV2 U-Net training step 1.5x
# faster (bench/README.md). Set TF_ENABLE_ONEDNN_OPTS=0 to keep TensorFlow's choice.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_CLASSES = len(CLASSES)  # 20 object classes; masks use 0 = background, 1..20, 255 = void
VOID = 255


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, bad flag): reported as one line, no traceback."""


# ----------------------------------------------------------------------------------------------
# Data sources

@dataclass
class Split:
    """One split of a dataset: everything needed to find and label its images.

    labels: (N, 20) int8, 1/0 per class, -1 where unknown (unlabelled test images).
    mask_paths: None for images without a mask.
    """
    name: str
    layout: str
    root: str
    ids: list
    image_paths: list
    mask_paths: list
    labels: np.ndarray

    def __len__(self):
        return len(self.ids)

    @property
    def has_masks(self):
        return len(self.ids) > 0 and all(p is not None for p in self.mask_paths)

    @property
    def has_labels(self):
        return len(self.ids) > 0 and bool((self.labels >= 0).all())

    def subset(self, indices):
        indices = list(indices)
        return Split(self.name, self.layout, self.root, [self.ids[i] for i in indices],
                     [self.image_paths[i] for i in indices], [self.mask_paths[i] for i in indices],
                     self.labels[indices])


def is_competition_dir(d):
    return os.path.isfile(os.path.join(d, "train", "train_set.csv"))


def is_voc_dir(d):
    return os.path.isdir(os.path.join(d, "JPEGImages"))


def resolve_data(data=None):
    """Turn a --data value into (root, layout): a directory of either layout, 'demo', or None to
    look for the competition data under /kaggle/input."""
    if data is None:
        for d in sorted(glob.glob("/kaggle/input/*/")) + sorted(glob.glob("/kaggle/input/*/*/")):
            if is_competition_dir(d):
                return d.rstrip("/"), "competition"
        raise UserError("no --data given and no competition data under /kaggle/input; "
                        "pass --data DIR (competition or VOC devkit layout) or --data demo")
    if data == "demo":
        return make_demo(), "competition"
    if not os.path.exists(data):
        raise UserError(f"data directory {data!r} does not exist")
    if not os.path.isdir(data):
        raise UserError(f"--data {data!r} is not a directory")
    if is_competition_dir(data):
        return data, "competition"
    if is_voc_dir(data):
        return data, "voc"
    raise UserError(f"{data!r} is in neither layout: expected train/train_set.csv (competition) "
                    "or JPEGImages/ (VOC devkit)")


def load_split(data=None, split="train"):
    """Describe the 'train' (labelled) or 'test' split of a dataset of either layout."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root, layout = resolve_data(data)
    if layout == "competition":
        return _load_competition(root, split)
    return _load_voc(root, split)


CSV_FIELD_LIMIT = 2 ** 31 - 1  # csv's default 131072 is shorter than a speckled mask's RLE row


def open_csv(path):
    """Open a CSV for csv.reader the way every reader here does: UTF-8 with or without a BOM (a
    spreadsheet's 'CSV UTF-8'), LF or CRLF line ends, and fields of any length (the RLE row of a
    speckled 375x500 mask is over 131072 characters, csv's default limit). Raises OSError."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    return open(path, newline="", encoding="utf-8-sig")


def _read_class_csv(path):
    """Read a competition CSV: Id column then the 20 class columns. Returns (ids, labels)."""
    try:
        with open_csv(path) as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8 CSV") from None
    if not rows:
        raise UserError(f"{path} is empty")
    header = [h.strip() for h in rows[0]]
    if not header or header[0] != "Id":
        raise UserError(f"{path}: first column must be 'Id', found {header[:1]}")
    missing = [c for c in CLASSES if c not in header]
    if missing:
        raise UserError(f"{path}: missing class columns {', '.join(missing)}")
    cols = [header.index(c) for c in CLASSES]
    ids, labels = [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            labels.append([int(float(row[c])) for c in cols])
        except (ValueError, IndexError):
            raise UserError(f"{path} line {n}: class values must be 0, 1 or -1") from None
        ids.append(row[0].strip())
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise UserError(f"{path}: duplicate ids {', '.join(dup[:5])}")
    labels = np.array(labels, dtype=np.int8).reshape(-1, NUM_CLASSES)
    if not np.isin(labels, (-1, 0, 1)).all():
        raise UserError(f"{path}: class values must be 0, 1 or -1")
    return ids, labels


def _load_competition(root, split):
    ids, labels = _read_class_csv(os.path.join(root, split, f"{split}_set.csv"))
    images = [os.path.join(root, split, "img", f"{split}_{i}.npy") for i in ids]
    masks = [os.path.join(root, split, "seg", f"{split}_{i}.npy") for i in ids]
    masks = [m if os.path.isfile(m) else None for m in masks]
    missing = [i for i, p in zip(ids, images) if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{split}: {len(missing)} ids in the CSV have no image file "
                        f"({split}/img/{split}_{missing[0]}.npy ...)")
    listed = {os.path.basename(p) for p in images}
    folder = os.path.join(root, split, "img")
    orphans = sorted(f for f in os.listdir(folder) if f not in listed) if os.path.isdir(folder) else []
    if orphans:
        raise UserError(f"{split}: {len(orphans)} files in {split}/img have no row in {split}_set.csv "
                        f"({orphans[0]} ...); fix the CSV or remove the files")
    if split == "train" and any(m is None for m in masks) and any(m is not None for m in masks):
        lost = [i for i, m in zip(ids, masks) if m is None]
        raise UserError(f"train: {len(lost)} images have no mask ({split}/seg/train_{lost[0]}.npy ...)")
    if split == "test":
        labels = np.full_like(labels, -1)  # the test CSV holds -1 placeholders
    return Split(split, "competition", root, ids, images, masks, labels)


def _load_voc(root, split):
    sets = os.path.join(root, "ImageSets", "Segmentation")
    listed = []
    for name in ("train", "val", "trainval", "test"):
        p = os.path.join(sets, f"{name}.txt")
        if os.path.isfile(p):
            with open(p, encoding="utf-8-sig") as f:
                listed += [line.split()[0] for line in f if line.strip()]
    if not listed:  # no ImageSets: every JPEG, labelled where a mask exists
        listed = sorted(os.path.splitext(os.path.basename(p))[0]
                        for p in glob.glob(os.path.join(root, "JPEGImages", "*.jpg")))
    ids = list(dict.fromkeys(listed))  # de-duplicate, keep order
    mask_of = {i: os.path.join(root, "SegmentationClass", f"{i}.png") for i in ids}
    has_mask = {i: os.path.isfile(mask_of[i]) for i in ids}
    ids = [i for i in ids if has_mask[i] == (split == "train")]
    images = [os.path.join(root, "JPEGImages", f"{i}.jpg") for i in ids]
    missing = [i for i, p in zip(ids, images) if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{split}: {len(missing)} listed ids have no image (JPEGImages/{missing[0]}.jpg ...)")
    if split == "train":
        masks = [mask_of[i] for i in ids]
        labels = np.zeros((len(ids), NUM_CLASSES), np.int8)
        for n, (i, m) in enumerate(zip(ids, masks)):  # VOC labels = classes present in the mask
            labels[n] = labels_from_mask(read_mask(m, i))
    else:
        masks = [None] * len(ids)
        labels = np.full((len(ids), NUM_CLASSES), -1, np.int8)
    return Split(split, "voc", root, ids, images, masks, labels)


def labels_from_mask(mask):
    """20-vector of the classes with at least one pixel in a label map."""
    present = np.bincount(mask.ravel(), minlength=256)[1:NUM_CLASSES + 1] > 0
    return present.astype(np.int8)


def _load_npy(path, what):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise UserError(f"{what}: {path} holds Python objects (needs pickle); refused") from None
        raise UserError(f"{what}: {path} is not a readable .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise UserError(f"{what}: cannot read {path} ({e})") from None


def image_levels(a, what, path):
    """An image array of any numeric dtype as uint8 levels 0..255, by what its dtype and range mean:
    uint8 as it is; bool as 0/255; integers within 0..255 as they are; uint16 (or 16-bit values
    up to 65535) above 255 scaled down by 257; floats within [0, 1] scaled by 255 and floats within
    [0, 255] kept, both rounded to the nearest level (values that round to 255 count as within).
    Anything else (negative, NaN/inf, float between the two ranges or above 255, integers above
    65535, complex, strings) raises UserError naming `what` and the file; nothing is truncated or
    clipped."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * np.uint8(255)
    fix = "save it as uint8 0..255 (or uint16 for 16-bit images, float in [0, 1] or [0, 255])"
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)) or not a.size:
        raise UserError(f"{what}: image {path} has dtype {a.dtype}; {fix}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise UserError(f"{what}: image {path} holds NaN or infinite values; {fix}")
    lo, hi = a.min(), a.max()
    if lo < 0:
        raise UserError(f"{what}: image {path} has negative values (min {lo:g}, dtype {a.dtype}); {fix}")
    if np.issubdtype(a.dtype, np.floating):
        if 1 + 0.5 / 255 < hi < 2 or hi >= 255.5:  # beyond what rounds to level 255 of either range
            raise UserError(f"{what}: image {path} is float with values up to {hi:g}, neither in [0, 1] "
                            f"nor in [0, 255]; {fix}")
        scale = 255.0 if hi < 2 else 1.0  # [0, 1] (img / 255.) or [0, 255] (after a resize)
        return np.minimum(np.rint(a.astype(np.float64) * scale), 255).astype(np.uint8)
    if hi <= 255:
        return a.astype(np.uint8)
    if hi <= 65535 and (a.dtype == np.uint16 or a.dtype.itemsize > 2):  # 16-bit levels
        return np.rint(a / 257.0).astype(np.uint8)
    raise UserError(f"{what}: image {path} has values up to {hi} (dtype {a.dtype}); {fix}")


def _channels_first(shape):
    """Whether an image array's shape is (3 or 4, H, W) (a PyTorch habit), not HxWxC."""
    return len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (1, 3, 4)


def read_image(path, what=""):
    """HxWx3 uint8 RGB from a .npy or image file (PNG, JPEG, ... of any mode).

    Values: see image_levels (float [0, 1] scaled by 255, 16-bit scaled down by 257, bool as
    0/255). Grayscale is repeated to 3 channels, alpha dropped, palette images take their
    colours, channels-first (3, H, W) arrays are transposed. Raises UserError (naming `what` and
    the file) for anything that cannot be read as such an image."""
    what = what or os.path.basename(path)
    if path.endswith(".npy"):
        a = _load_npy(path, what)
        if _channels_first(a.shape):
            a = a.transpose(1, 2, 0)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) < 1:
            raise UserError(f"{what}: image {path} has shape {a.shape}, expected HxWx3")
        a = image_levels(a, what, path)
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        return np.ascontiguousarray(a[:, :, :3])
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):  # 16/32-bit grayscale, float
                a = image_levels(np.asarray(im), what, path)
                return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
            return np.asarray(im.convert("RGB"))  # 8-bit modes; 48-bit RGB PNGs decode to 8 bit
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{what}: cannot decode image {path} ({e})") from None


def read_mask(path, what=""):
    """HxW uint8 label map (0 background, 1..20 classes, 255 void) from a .npy of integers or a
    PNG read by what it means: a palette PNG by index when the palette gives every used index its
    VOC colour (or its grey level, as a grayscale image converted to 'P' has); a grayscale PNG
    (8 or 16 bit) by value. Raises UserError naming `what` and the file for a palette that gives a
    used index another class's colour or a colour VOC does not use (an RGB mask re-quantised by an
    editor), for RGB and other modes, and for values outside 0..20 and 255."""
    what = what or os.path.basename(path)
    if path.endswith(".npy"):
        m = _load_npy(path, what)
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[:, :, 0]
        if m.ndim != 2 or not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
            raise UserError(f"{what}: mask {path} has shape {m.shape} / dtype {m.dtype}, expected HxW integers")
    else:
        try:
            with Image.open(path) as im:
                if im.mode not in ("P", "L", "I") and not im.mode.startswith("I;16"):
                    raise UserError(f"{what}: mask {path} is {im.mode}, expected a palette or grayscale PNG "
                                    "of class indices (0 background, 1..20, 255 void)")
                m = np.asarray(im)
                if im.mode == "P":
                    _check_mask_palette(im.getpalette(), m, what, path)
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"{what}: cannot decode mask {path} ({e})") from None
    bad = (m > NUM_CLASSES) & (m != VOID) | (m < 0)
    if bad.any():
        raise UserError(f"{what}: mask {path} has values {sorted(set(np.unique(m[bad]).tolist()))[:5]} "
                        "outside 0..20 and 255; a mask holds class indices, not colours or grey levels")
    return m.astype(np.uint8)


def _check_mask_palette(palette, m, what, path):
    """Refuse a palette mask whose palette does not mean 'index = class': some used index of m
    coloured neither with its own VOC colour nor (for every used index) with its grey level.
    Only the used indices count: VOC-style files often hold arbitrary colours for the others."""
    if not palette:
        return  # no palette: the indices are all there is
    colours = np.zeros((256, 3), np.int32) - 1  # -1: no palette entry
    pal = np.asarray(palette, np.int32).reshape(-1, 3)[:256]
    colours[:len(pal)] = pal
    used = np.flatnonzero(np.bincount(m.ravel(), minlength=256))
    voc = voc_palette().astype(np.int32)
    if (colours[used] == voc[used]).all() or (colours[used] == used[:, None]).all():
        return
    i = next(int(k) for k in used if (colours[k] != voc[k]).any())
    same = np.flatnonzero((voc == colours[i]).all(1))
    names = {**dict(enumerate(("background",) + CLASSES)), VOID: "void"}
    meaning = (f"VOC's colour of {names.get(int(same[0]), f'index {same[0]}')}" if len(same)
               else "a colour VOC does not use")
    raise UserError(f"{what}: mask {path} has a palette that is not VOC's: index {i} is coloured "
                    f"{tuple(colours[i].tolist())}, {meaning}; save the mask with the VOC palette "
                    "(index = class) or as a grayscale PNG of class indices")


def read_example(split, i, mask=True):
    """(image, mask or None) of example i, checked against each other; mask=False reads the
    image alone (mask None)."""
    what = f"{split.name} id {split.ids[i]}"
    image = read_image(split.image_paths[i], what)
    if not mask or split.mask_paths[i] is None:
        return image, None
    mask = read_mask(split.mask_paths[i], what)
    if mask.shape != image.shape[:2]:
        raise UserError(f"{what}: mask is {mask.shape[0]}x{mask.shape[1]} but image is "
                        f"{image.shape[0]}x{image.shape[1]}")
    return image, mask


def image_size(path, what=""):
    """(H, W) read from the file header only."""
    what = what or os.path.basename(path)
    try:
        if path.endswith(".npy"):
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
            if dtype.hasobject:
                raise UserError(f"{what}: {path} holds Python objects (needs pickle); refused")
            return tuple(shape[1:] if _channels_first(shape) else shape[:2])
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{what}: cannot read {path} ({e})") from None


def train_val_split(labels, val_fraction=0.2, seed=0):
    """Split example indices (labels: (N, 20), > 0 = present) into (train, val) int arrays so
    that every class with >= 2 examples lands on both sides.

    Iterative stratification: classes from rarest to commonest, each class's unassigned examples
    shuffled and dealt to validation until it holds its share (at least one) of that class.
    With N >= 2 the validation side is never empty: where stratification leaves it so (every
    image holds a class seen in no other), round(val_fraction * N) images (at least one) move
    there, those that take the fewest classes away from training first. Training keeps >= 1.
    """
    labels = np.asarray(labels) > 0
    n = len(labels)
    rng = np.random.default_rng(seed)
    side = np.full(n, -1)  # 0 train, 1 val
    for c in np.argsort(labels.sum(0), kind="stable"):
        members = np.flatnonzero(labels[:, c])
        if len(members) < 2:
            side[members[side[members] < 0]] = 0
            continue
        want_val = max(1, int(round(val_fraction * len(members))))
        want_val = min(want_val, len(members) - 1)
        free = rng.permutation(members[side[members] < 0])
        have_val = int((side[members] == 1).sum())
        have_train = int((side[members] == 0).sum())
        for i in free:
            if have_val < want_val and not (have_train == 0 and i == free[-1]):
                side[i], have_val = 1, have_val + 1
            else:
                side[i], have_train = 0, have_train + 1
    rest = rng.permutation(np.flatnonzero(side < 0))  # images with no class at all
    n_val_rest = int(round(val_fraction * n)) - int((side == 1).sum())
    side[rest] = 0
    side[rest[:max(0, n_val_rest)]] = 1
    if n >= 2 and not (side == 1).any():  # e.g. every image holds a class of its own
        for _ in range(min(max(1, int(round(val_fraction * n))), n - 1)):
            train = np.flatnonzero(side == 0)
            in_train = labels[train].sum(0)
            lost = (labels[train] & (in_train == 1)).sum(1)  # classes training would lose
            side[train[rng.permutation(np.flatnonzero(lost == lost.min()))[0]]] = 1
    return np.flatnonzero(side == 0), np.flatnonzero(side == 1)


# ----------------------------------------------------------------------------------------------
# Input pipeline

def split_for_training(data, val_fraction=0.2, seed=0, masks=False):
    """The labelled split of `data` and its (train, validation) parts, as every training script
    takes them; masks=True requires a mask for every image. Returns (split, train, val)."""
    split = load_split(data, "train")
    if masks and not split.has_masks:
        raise UserError("the training split has no masks; segmentation needs them")
    if len(split) == 0:
        raise UserError(f"the training split of {split.root} has no images")
    if not split.has_labels:
        raise UserError("the training split has no labels")
    if len(split) < 2:
        raise UserError(f"the validation split would be empty: {split.root} has only {len(split)} labelled "
                        "image, and training needs one image to learn from and one to validate on")
    train_idx, val_idx = train_val_split(split.labels, val_fraction, seed)
    train_split, val_split = split.subset(train_idx), split.subset(val_idx)
    print(f"data: {split.root} ({split.layout}); {len(train_split)} train / {len(val_split)} val images", flush=True)
    return split, train_split, val_split


def load_examples(split, indices=None, masks=True, progress=True):
    """Decode examples once into a list of uint8 (image, mask) pairs (mask None when absent).

    This is the pipeline's cache: uint8 at original size, never float32. Unreadable files are
    reported by id.
    """
    indices = range(len(split)) if indices is None else indices
    out, t0 = [], time.time()
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow decodes outside the GIL
        for k, example in enumerate(pool.map(lambda i: read_example(split, i, masks), indices)):
            out.append(example)
            if progress and time.time() - t0 > 5 and k % 100 == 0:
                print(f"  decoded {k + 1}/{len(indices)} {split.name} images", flush=True)
    return out


def cache_fits(split, memory_fraction=0.25):
    """Whether the decoded uint8 images and masks of a split take less than a fraction of this
    machine's memory (sizes read from the file headers)."""
    pixels = sum(int(np.prod(image_size(p, f"{split.name} id {i}"))) for i, p in zip(split.ids, split.image_paths))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 4 * pixels < memory_fraction * total


PAD_VALUE = 114.0  # image padding: mid-gray, so padding is neither black nor a class colour


def _place(image, mask, size, offset, new_hw):
    """Resize image (bilinear, to float32) and mask (nearest; None: no mask) to new_hw, then
    crop/pad into a size x size canvas at offset (negative offset = image starts inside it)."""
    image = tf.image.resize(image, new_hw, method="bilinear")
    oy, ox = offset[0], offset[1]
    y0, x0 = tf.maximum(oy, 0), tf.maximum(ox, 0)
    image = image[y0:y0 + size, x0:x0 + size]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    top, left = tf.maximum(-oy, 0), tf.maximum(-ox, 0)
    pads = [[top, size - h - top], [left, size - w - left]]
    image = tf.ensure_shape(tf.pad(image, pads + [[0, 0]], constant_values=PAD_VALUE), (size, size, 3))
    if mask is not None:
        mask = tf.image.resize(mask[:, :, None], new_hw, method="nearest")[y0:y0 + size, x0:x0 + size, 0]
        mask = tf.ensure_shape(tf.pad(mask, pads, constant_values=VOID), (size, size))
    return image, mask


def fit_to_size(image, mask, size, fit="letterbox"):
    """Deterministic resize for evaluation: 'letterbox' keeps the aspect ratio (longer side = size,
    centred, padded with PAD_VALUE and void); 'resize' stretches to size x size."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    if fit == "resize":
        new_hw = tf.constant([size, size])
    else:
        new_hw = tf.maximum(tf.cast(tf.round(hw * size / tf.reduce_max(hw)), tf.int32), 1)
    offset = -((size - new_hw) // 2)
    return _place(image, mask, size, offset, new_hw)


def augment(image, mask, size, seed, scale=(0.75, 1.25), fit="letterbox", flip=True, crop=None):
    """Training geometry, the same for image and mask: random rescale around the fitted size
    (letterbox: longer side `size` pixels, resize: size x size, times a factor drawn from `scale`),
    random crop/pad to crop x crop (crop=None: size), horizontal flip. (Colour jitter runs per
    batch: colour_jitter.)"""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    s = tf.random.stateless_uniform([], seeds[0], scale[0], scale[1])
    if fit == "resize":
        new_hw = tf.cast(tf.round(tf.fill([2], float(size)) * s), tf.int32)
    else:
        new_hw = tf.cast(tf.round(hw * (size / tf.reduce_max(hw)) * s), tf.int32)
    new_hw = tf.maximum(new_hw, 1)
    crop = size if crop is None else crop
    slack = new_hw - crop  # > 0: crop that much, < 0: pad that much
    u = tf.random.stateless_uniform([2], seeds[1])
    offset = tf.where(slack > 0, tf.cast(u * tf.cast(slack + 1, tf.float32), tf.int32),
                      -tf.cast(u * tf.cast(-slack + 1, tf.float32), tf.int32))
    offset = tf.minimum(offset, tf.maximum(slack, 0))
    image, mask = _place(image, mask, crop, offset, new_hw)
    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
        image = tf.cond(do_flip, lambda: image[:, ::-1], lambda: image)
        if mask is not None:
            mask = tf.cond(do_flip, lambda: mask[:, ::-1], lambda: mask)
    return image, mask


def colour_jitter(images, seed):
    """Random brightness, contrast, saturation and colour balance, drawn per image, on a whole
    batch (B, H, W, 3) in [0, 255]: a handful of batch-wide ops instead of dozens of small ones per
    image, which keeps the input pipeline cheap beside the model on a CPU. Padding pixels
    (PAD_VALUE in every channel) are left as they are."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)

    def uniform(k, low, high, channels=1):
        return tf.random.stateless_uniform([n, 1, 1, channels], seeds[k], low, high)

    pad = tf.reduce_all(tf.equal(images, PAD_VALUE), axis=-1, keepdims=True)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    x = (images - mean) * uniform(1, 0.75, 1.25) + mean + 255.0 * uniform(0, -0.15, 0.15)
    grey = tf.reduce_mean(x, axis=-1, keepdims=True)
    x = (grey + (x - grey) * uniform(2, 0.7, 1.3)) * uniform(3, 0.95, 1.05, channels=3)
    return tf.where(pad, images, tf.clip_by_value(x, 0.0, 255.0))


def copy_paste_batch(images, masks, seed, probability=0.5):
    """Copy-paste augmentation (Ghiasi et al., 2021, "Simple Copy-Paste is a Strong Data
    Augmentation Method for Instance Segmentation") on a batch of training crops: with
    `probability`, drawn per image, image i receives the object pixels (classes 1-20) of image
    i-1 of the batch (the last image's for the first), with their labels, on top of its own scene,
    where they lie in the donor crop (each crop was rescaled, cropped and flipped on its own by
    augment): objects among other objects and other backgrounds, more cluttered scenes than the
    photos hold. A batch of one receives its own objects: nothing changes.

    images: (B, S, S, 3) float32; masks: (B, S, S) int32, 255 = void; seed: a stateless seed (2,).
    Returns (images, masks) of the same shapes and dtypes; the donors' void and background pixels
    are not pasted, so an image that receives nothing is returned unchanged."""
    take = tf.random.stateless_uniform([tf.shape(masks)[0], 1, 1], seed) < probability
    donor_images, donor_masks = tf.roll(images, 1, axis=0), tf.roll(masks, 1, axis=0)
    paste = take & (donor_masks >= 1) & (donor_masks <= NUM_CLASSES)
    return tf.where(paste[..., None], donor_images, images), tf.where(paste, donor_masks, masks)


def make_dataset(split, examples, size, batch_size, training=False, seed=0, target="labels",
                 scale=(0.75, 1.25), fit="letterbox", flip=True, jitter=True, repeat=False, repeats=None, crop=None,
                 copy_paste=0.0):
    """tf.data pipeline over decoded uint8 examples (from load_examples, same order as split),
    or, with examples=None (data too large to cache), decoding from disk every epoch.
    repeats: per-example counts an epoch (seg_train.repeat_factors); default once each.
    crop: training only: side of the random crops, from images rescaled around a longer side of
    `size` (augment); default `size`.
    copy_paste: training with target 'mask' only: the probability in [0, 1] that an image receives
    the objects of the image before it in its batch (copy_paste_batch, after the colour jitter;
    default 0). Raises ValueError above 0 with another target.

    Yields (images float32 [0,255] of shape (B,S,S,3), target) with S = crop when training with a
    crop, else size, and target: 'labels' -> (B,20) float32, 'mask' -> (B,S,S) int32 with 255 = void,
    'both' -> dict(labels=..., mask=...). Deterministic for a seed; reshuffled every epoch; tf.data's
    autotuning off (`without_autotune`).
    """
    n = len(split)
    if n == 0:
        raise UserError(f"{split.name} split is empty")
    labels = np.maximum(split.labels, 0).astype(np.float32)
    if target in ("mask", "both") and any(m is None for m in split.mask_paths):
        raise UserError(f"{split.name} split has images without masks; cannot train segmentation")

    def fetch(i):
        i = int(i)
        if target == "labels":  # no mask to read, resize or crop (as load_examples(masks=False))
            return (read_example(split, i, mask=False) if examples is None else examples[i])[0]
        image, mask = read_example(split, i) if examples is None else examples[i]
        return image, np.full(image.shape[:2], VOID, np.uint8) if mask is None else mask

    def load(i, s):
        if target == "labels":
            image, mask = tf.numpy_function(fetch, [i], tf.uint8, stateful=False), None
        else:
            image, mask = tf.numpy_function(fetch, [i], (tf.uint8, tf.uint8), stateful=False)
            mask = tf.ensure_shape(mask, (None, None))
        image = tf.ensure_shape(image, (None, None, 3))  # uint8: the resize makes it float32
        if training:
            image, mask = augment(image, mask, size, s, scale, fit, flip, crop)
        else:
            image, mask = fit_to_size(image, mask, size, fit)
        y = tf.gather(labels, i)
        if target == "labels":
            return image, y
        out = {"labels": y, "mask": tf.cast(mask, tf.int32)}
        return image, (out if target == "both" else out["mask"])

    order = np.arange(n) if repeats is None else np.repeat(np.arange(n), repeats)
    if training and len(order) < batch_size:  # full batches only: one of every image, not none
        print(f"note: {len(order)} training images, fewer than the batch size {batch_size}; "
              f"batches of {len(order)}", flush=True)
        batch_size = len(order)
    index = tf.data.Dataset.from_tensor_slices(order)
    if training:
        index = index.shuffle(len(order), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((index, seeds)).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=training)
    if training and jitter:
        batch_seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, batch_seeds)).map(lambda xy, s: (colour_jitter(xy[0], s), xy[1]),
                                                       num_parallel_calls=tf.data.AUTOTUNE)
    if training and copy_paste > 0:
        if target != "mask":
            raise ValueError("copy-paste augmentation needs target 'mask'")
        paste_seeds = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, paste_seeds)).map(lambda xy, s: copy_paste_batch(xy[0], xy[1], s, copy_paste),
                                                       num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotune(ds.prefetch(tf.data.AUTOTUNE))


def without_autotune(ds):
    """`ds` with tf.data's autotuning off, for every dataset that Keras iterates epoch after epoch.

    Keras deletes its training and validation iterators at the end of every epoch, and with
    autotuning on, the deletion often waited for the autotuning thread's next wake-up (it sleeps 10
    ms, 20 ms, 40 ms, ..., doubling up to a minute, between tunings): epochs of 2.7 s ended 5.11 s
    after their iterator's creation, U-Net epochs of 5.2 s at 10.23 s, in up to almost half of
    the epochs, with the cores idle meanwhile (bench/README.md, eighth round). Without autotuning,
    `num_parallel_calls=AUTOTUNE` runs min(16, cores) calls at once (tf.data's
    AutotuneOptions.initial_parallelism) and prefetching stays on: the segmentation pipeline kept
    both cores of a 2-core machine busy as before (7.9 CPU-s in 4.2 s, against 8.3 in 4.5 s)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


# ----------------------------------------------------------------------------------------------
# Competition contract: RLE, Dice, submission.csv, scorer

def rle_encode(x):
    """Run-length encoding of a binary array, flattened in C order: '1-indexed start, length'
    pairs joined by single spaces; same string as the competition template's _rle_encode."""
    pixels = np.asarray(x).ravel()
    if pixels.dtype != bool:
        if pixels.size and not np.isin(pixels, (0, 1)).all():
            raise ValueError("rle_encode takes a binary array (0/1 or bool)")
        pixels = pixels.astype(bool)
    padded = np.concatenate([[False], pixels, [False]])
    runs = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs.tolist()))


def rle_runs(rle, size=None):
    """Parse an RLE string into (starts, lengths) 0-indexed int64 arrays, checking that it is
    well formed and, if size is given, that every run lies inside an array of that many items."""
    text = "" if rle is None else str(rle).strip()
    try:
        values = np.array(text.split(), dtype=np.int64) if text else np.zeros(0, np.int64)
    except ValueError:
        raise ValueError(f"RLE holds a non-integer: {text[:40]!r}") from None
    if len(values) % 2:
        raise ValueError("RLE has an odd number of values")
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any() or (lengths < 1).any():
        raise ValueError("RLE has a start below 1 or a length below 1")
    if (starts[1:] < starts[:-1] + lengths[:-1]).any():
        raise ValueError("RLE runs overlap or are out of order")
    if size is not None and len(starts) and starts[-1] + lengths[-1] > size:
        raise ValueError(f"RLE run ends at {starts[-1] + lengths[-1]}, beyond the array size {size}")
    return starts, lengths


def rle_decode(rle, shape):
    """Inverse of rle_encode: a uint8 0/1 array of the given shape."""
    size = int(np.prod(shape))
    starts, lengths = rle_runs(rle, size)
    flat = np.zeros(size + 1, np.int32)
    np.add.at(flat, starts, 1)
    np.add.at(flat, starts + lengths, -1)
    return (np.cumsum(flat[:-1]) > 0).astype(np.uint8).reshape(shape)


def dice(pred, true):
    """Competition Dice of two binary arrays: 2|P∩T| / (|P|+|T|), 1.0 when both are empty."""
    pred, true = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    total = int(pred.sum()) + int(true.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & true).sum()) / total


def rle_dice(a, b):
    """Dice of two RLE strings, computed from the runs (no decoding needed)."""
    sa, la = rle_runs(a)
    sb, lb = rle_runs(b)
    total = int(la.sum() + lb.sum())
    if total == 0:
        return 1.0
    if len(sa) == 0 or len(sb) == 0:
        return 0.0
    ea, eb = sa + la, sb + lb
    # overlap of every run in a with the runs of b it can touch
    lo = np.searchsorted(eb, sa, side="right")
    hi = np.searchsorted(sb, ea, side="left")
    inter = 0
    for i in np.flatnonzero(hi > lo):
        j = slice(lo[i], hi[i])
        inter += int(np.maximum(0, np.minimum(ea[i], eb[j]) - np.maximum(sa[i], sb[j])).sum())
    return 2.0 * inter / total


def classification_dice_per_image(pred, true):
    """Competition Dice of each row of binary label vectors (N, 20): (N,) float64, `dice` of each
    row (1.0 for a row empty in both), computed for all rows at once, with the same values as
    `dice` (threshold tuning calls this thousands of times)."""
    pred, true = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    pred, true = pred.reshape(len(pred), -1), true.reshape(len(true), -1)
    total = pred.sum(1) + true.sum(1)
    return np.where(total == 0, 1.0, 2.0 * (pred & true).sum(1) / np.maximum(total, 1))


def classification_dice(pred, true):
    """Mean per-image competition Dice of binary label vectors (N, 20)."""
    return float(np.mean(classification_dice_per_image(pred, true)))


def segmentation_dice(pred_mask, true_mask):
    """Competition Dice of one image's label maps, on the 20xHxW class stack (void pixels are in
    no class of the truth, so predicting a class there counts against the prediction)."""
    pred_mask, true_mask = np.asarray(pred_mask), np.asarray(true_mask)
    p = (pred_mask >= 1) & (pred_mask <= NUM_CLASSES)
    t = (true_mask >= 1) & (true_mask <= NUM_CLASSES)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t & (pred_mask == true_mask)).sum()) / total


def seg_stack(mask):
    """The competition's segmentation target: the 20xHxW stack [mask == c for c in 1..20]."""
    mask = np.asarray(mask)
    return mask[None] == np.arange(1, NUM_CLASSES + 1, dtype=mask.dtype)[:, None, None]


def submission_rows(ids, labels, masks):
    """Two (Id, RLE) rows per image: {id}_classification and {id}_segmentation."""
    if len(ids) != len(labels) or len(ids) != len(masks):
        raise ValueError(f"{len(ids)} ids, {len(labels)} label vectors and {len(masks)} masks")
    rows = []
    for i, y, m in zip(ids, labels, masks):
        y = np.asarray(y)
        if y.shape != (NUM_CLASSES,):
            raise ValueError(f"id {i}: label vector has shape {y.shape}, expected (20,)")
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(f"id {i}: mask has shape {m.shape}, expected HxW")
        rows.append((f"{i}_classification", rle_encode(y > 0)))
        rows.append((f"{i}_segmentation", rle_encode(seg_stack(m))))
    return rows


def write_submission(path, ids, labels, masks, shapes=False):
    """Write submission.csv (header Id,Predicted; two rows per image in the given order),
    validated and atomically. shapes=True adds a Shape column (used for solution files, so the
    scorer can check that predicted runs fit the true array size)."""
    rows = submission_rows(ids, labels, masks)
    sizes = []
    for m in masks:
        h, w = np.asarray(m).shape
        sizes += [(NUM_CLASSES,), (NUM_CLASSES, h, w)]
    header = ["Id", "Predicted"] + (["Shape"] if shapes else [])
    lines = [header] + [[r[0], r[1]] + (["x".join(map(str, s))] if shapes else [])
                        for r, s in zip(rows, sizes)]
    validate_rows(rows, [str(i) for i in ids], [int(np.prod(s)) for s in sizes])
    atomic_write(path, lambda f: csv.writer(f, lineterminator="\n").writerows(lines), newline="")
    return path


def validate_rows(rows, ids, sizes=None):
    """Check a submission's rows: each id exactly twice (classification then segmentation, in the
    given order), every RLE well formed and, when sizes are known, inside its array."""
    if len(set(ids)) != len(ids):
        raise UserError(f"submission: duplicate image ids, e.g. {next(i for i in ids if ids.count(i) > 1)!r}")
    expected = [f"{i}_{kind}" for i in ids for kind in ("classification", "segmentation")]
    got = [r[0] for r in rows]
    if got != expected:
        have, want = set(got), set(expected)
        if len(got) != len(have):
            dup = next(g for g in got if got.count(g) > 1)
            raise UserError(f"submission: row {dup!r} appears more than once")
        if want - have:
            raise UserError(f"submission: {len(want - have)} rows missing, e.g. {sorted(want - have)[0]!r}")
        if have - want:
            raise UserError(f"submission: unexpected row {sorted(have - want)[0]!r}")
        raise UserError("submission: rows are not in test order (classification, segmentation per id)")
    for k, (row_id, rle) in enumerate(rows):
        try:
            rle_runs(rle, None if sizes is None else sizes[k])
        except ValueError as e:
            raise UserError(f"submission row {row_id}: {e}") from None


def read_submission(path):
    """Rows of a submission or solution CSV as a list of dicts (Id, Predicted[, Shape]) of str;
    UTF-8 with or without a BOM, LF or CRLF, rows of any length (open_csv). Raises UserError."""
    try:
        with open_csv(path) as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or reader.fieldnames[:2] != ["Id", "Predicted"]:
                raise UserError(f"{path}: header must start with Id,Predicted")
            return [dict(r) for r in reader]
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8 CSV") from None


def validate_submission(path, ids, sizes=None):
    """Check a written submission file strictly: header, test order, each id twice, every RLE
    well formed and (with sizes: items per row) inside its array."""
    rows = read_submission(path)
    validate_rows([(r["Id"], r["Predicted"]) for r in rows], [str(i) for i in ids], sizes)
    return len(rows)


def score_submission(pred_csv, truth):
    """Score a submission against a solution CSV (the truth in the same format). Returns
    {'classification', 'segmentation', 'score', 'images'}: mean Dice over each half's rows and
    over all rows, as the competition does."""
    truth_rows = read_submission(truth)
    pred_rows = read_submission(pred_csv)
    ids = [r["Id"][: -len("_classification")] for r in truth_rows if r["Id"].endswith("_classification")]
    sizes = None
    if truth_rows and truth_rows[0].get("Shape"):
        sizes = [int(np.prod([int(v) for v in r["Shape"].split("x")])) for r in truth_rows]
    validate_rows([(r["Id"], r["Predicted"]) for r in truth_rows], ids, sizes)
    pred = {r["Id"]: r["Predicted"] for r in pred_rows}
    order = {r["Id"]: k for k, r in enumerate(truth_rows)}
    rows = sorted(pred_rows, key=lambda r: order.get(r["Id"], len(order)))
    validate_rows([(r["Id"], r["Predicted"]) for r in rows], ids, sizes)
    halves = {"classification": [], "segmentation": []}
    for r in truth_rows:
        kind = r["Id"].rsplit("_", 1)[1]
        halves[kind].append(rle_dice(pred[r["Id"]], r["Predicted"]))
    all_rows = halves["classification"] + halves["segmentation"]
    return {"classification": float(np.mean(halves["classification"])),
            "segmentation": float(np.mean(halves["segmentation"])),
            "score": float(np.mean(all_rows)), "images": len(ids)}


TMP_PREFIX = ".tmp-"  # the temporary files of atomic_write and save_model, which --resume deletes


def atomic_write(path, write, mode="w", newline=None):
    """Write a file through a temporary name in the same folder, then rename: readers never see
    a half-written file, and an existing file survives a failed write."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1], dir=folder)
    except OSError as e:
        raise UserError(f"cannot write in {folder}: {e.strerror}") from None
    try:
        with os.fdopen(fd, mode, newline=newline) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise


def json_safe(obj):
    """obj with every float that is NaN or infinite (an undefined metric: a class with no
    validation image) replaced by None, NumPy scalars and arrays as Python numbers and lists,
    tuples as lists: what strict JSON (json.dump(..., allow_nan=False)) can hold."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path, obj):
    """Write obj as strict JSON (indented; NaN/inf as null, see json_safe), atomically."""
    atomic_write(path, lambda f: json.dump(json_safe(obj), f, indent=2, allow_nan=False))


# ----------------------------------------------------------------------------------------------
# Pictures

def voc_palette():
    """The standard VOC colour map: (256, 3) uint8, index 255 (void) is cream."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    pal[VOID] = (224, 224, 192)
    return pal


def colorize(mask):
    return voc_palette()[np.asarray(mask)]


def font(size=12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def tile(image, height, caption="", width=None):
    """An image scaled to a given height (or fitted into a width x height box) with a caption
    (one or more lines) below it."""
    im = Image.fromarray(np.asarray(image, np.uint8))
    scale = height / im.height if width is None else min(height / im.height, width / im.width)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im = im.resize(size, Image.NEAREST if np.asarray(image).ndim == 2 else Image.BILINEAR)
    w = size[0] if width is None else width
    out = Image.new("RGB", (w, height + 14 * (caption.count("\n") + 1) + 4), "white")
    out.paste(im.convert("RGB"), ((w - size[0]) // 2, (height - size[1]) // 2))
    ImageDraw.Draw(out).multiline_text((2, height + 2), caption, fill="black", font=font(11), spacing=1)
    return out


def grid(tiles, columns, pad=6, title=""):
    """Lay tiles out in rows, left to right; returns a PIL image."""
    rows = [tiles[k:k + columns] for k in range(0, len(tiles), columns)]
    widths = [sum(t.width for t in r) + pad * (len(r) + 1) for r in rows]
    heights = [max(t.height for t in r) + pad for r in rows]
    top = 24 if title else 0
    out = Image.new("RGB", (max(widths), sum(heights) + pad + top), "white")
    if title:
        ImageDraw.Draw(out).text((pad, 4), title, fill="black", font=font(14))
    y = top + pad
    for r, h in zip(rows, heights):
        x = pad
        for t in r:
            out.paste(t, (x, y))
            x += t.width + pad
        y += h
    return out


def save_png(path, image):
    atomic_write(path, lambda f: image.save(f, format="PNG"), mode="wb")


def wrap_names(names, width=40):
    lines, line = [], ""
    for n in names:
        if line and len(line) + len(n) + 2 > width:
            lines.append(line + ",")
            line = n
        else:
            line = f"{line}, {n}" if line else n
    return "\n".join(lines + [line])


def with_legend(pic, classes):
    """A picture with a palette legend of the given classes (0-based indices) below it."""
    key = legend(classes)
    out = Image.new("RGB", (max(pic.width, key.width + 6), pic.height + key.height + 6), "white")
    out.paste(pic, (0, 0))
    out.paste(key, (6, pic.height))
    return out


def legend(classes, height=16):
    """A strip of palette swatches with class names, for mask pictures."""
    pal = voc_palette()
    items = [(0, "background")] + [(c + 1, CLASSES[c]) for c in classes] + [(VOID, "void")]
    out = Image.new("RGB", (130 * min(len(items), 6), (height + 4) * ((len(items) + 5) // 6)), "white")
    d = ImageDraw.Draw(out)
    for k, (idx, name) in enumerate(items):
        x, y = 130 * (k % 6), (height + 4) * (k // 6)
        d.rectangle([x + 2, y + 2, x + height, y + height], fill=tuple(int(v) for v in pal[idx]), outline="black")
        d.text((x + height + 6, y + 3), name, fill="black", font=font(11))
    return out


def read_log(path):
    """Rows of a CSVLogger file as a dict of float columns."""
    if not os.path.isfile(path):
        return {}
    with open_csv(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows])
            for k in (rows[0].keys() if rows else [])}


COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def line_chart(series, title, width=420, height=260):
    """A small line chart (PIL): series = {name: y values per epoch}."""
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 48, width - 10, 24, height - 44
    d.text((left, 4), title, fill="black", font=font(13))
    values = np.concatenate([np.asarray(v, float) for v in series.values()] or [np.zeros(1)])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    n = max((len(v) for v in series.values()), default=1)
    sx = lambda k: left + (right - left) * (k / max(n - 1, 1))  # noqa: E731
    sy = lambda y: bottom - (bottom - top) * (y - lo) / (hi - lo)  # noqa: E731
    d.rectangle([left, top, right, bottom], outline="black")
    for t in np.linspace(lo, hi, 5):
        d.line([left - 3, sy(t), left, sy(t)], fill="black")
        d.text((2, sy(t) - 6), f"{t:.3g}", fill="black", font=font(10))
    for k in sorted({0, n - 1} | set(range(0, n, max(1, n // 6)))):
        d.line([sx(k), bottom, sx(k), bottom + 3], fill="black")
        d.text((sx(k) - 4, bottom + 5), str(k + 1), fill="black", font=font(10))
    d.text(((left + right) // 2 - 14, bottom + 17), "epoch", fill="black", font=font(10))
    for c, (name, ys) in enumerate(series.items()):
        colour = COLOURS[c % len(COLOURS)]
        pts = [(sx(k), sy(y)) for k, y in enumerate(ys) if np.isfinite(y)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        x = left + 4 + 110 * c
        d.line([x, height - 8, x + 16, height - 8], fill=colour, width=3)
        d.text((x + 20, height - 14), name, fill="black", font=font(10))
    return im


def plot_curves(log_path, out_path, panels, title=""):
    """Learning-curve PNG from a CSV log: panels = [(panel title, [column, ...]), ...]."""
    log = read_log(log_path)
    charts = [line_chart({c: log[c] for c in cols if c in log}, name) for name, cols in panels]
    save_png(out_path, grid(charts, len(charts), title=title))


# ----------------------------------------------------------------------------------------------
# Model building blocks and pretrained backbones (ImageNet weights only; never weights trained on VOC)

def conv_bn_relu(x, filters, name, kernel=3, separable=False):
    """Conv (or depthwise-separable conv) without bias, BatchNorm, ReLU: layers `{name}_conv`,
    `{name}_bn`, `{name}_relu` (saved models and attack.py's feature taps rely on these names)."""
    conv = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
    x = conv(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # momentum .9: small data, adapt fast; synchronized: batch statistics over all replicas
    x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


# name: (constructor, first layer of the top stage to fine-tune, input scaling, skip layers at
# strides 2, 4, 8, 16 for U-Nets)
BACKBONES = {
    "mobilenetv2": ("MobileNetV2", "block_13_expand", "tf",
                    ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")),
    "efficientnetv2b0": ("EfficientNetV2B0", "block6a_expand_conv", "raw",
                         ("block1a_project_activation", "block2b_add", "block3b_add", "block5e_add")),
    "resnet50v2": ("ResNet50V2", "conv5_block1_preact_bn", "tf",
                   ("conv1_conv", "conv2_block3_1_relu", "conv3_block4_1_relu", "conv4_block6_1_relu")),
}


def make_backbone(name, size, weights="imagenet"):
    """An ImageNet backbone without its top, taking float images in [0, 255] of size x size
    (None: any size, with the 224-pixel weights).

    weights: 'imagenet' (Keras' download, or the file already in $KERAS_HOME/models), 'none'
    (random init), or the path of a no-top weights file. Returns (backbone model, preprocessing
    layer or None). BACKBONES[name][1] names the first layer of its top stage.
    """
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    constructor, _, scaling, _ = BACKBONES[name]
    if weights not in ("imagenet", "none", None) and not os.path.isfile(weights):
        raise UserError(f"--weights {weights!r}: no such file (use imagenet, none or a .h5 path)")
    try:
        with warnings.catch_warnings():  # size None loads the 224-pixel weights, as intended: no warning
            warnings.filterwarnings("ignore", message=".*input_shape. is undefined")
            backbone_model = getattr(keras.applications, constructor)(
                input_shape=(size, size, 3), include_top=False,
                weights=None if weights in ("none", None) else weights)
    except (OSError, ValueError, Exception) as e:  # a failed download surfaces as a plain Exception
        if isinstance(e, UserError):
            raise
        raise UserError(f"cannot load {weights} weights for {name}: {str(e).splitlines()[0][:200]}; "
                        "offline, set KERAS_HOME to a folder holding models/<Keras file name> "
                        "or pass --weights PATH") from None
    preprocess = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess") if scaling == "tf" else None
    return backbone_model, preprocess


def backbone_of(net):
    """The pretrained backbone nested in a model (its keras.Model layer), or None for a scratch model."""
    return next((layer for layer in net.layers if isinstance(layer, keras.Model)), None)


def finetune_start(backbone_model, backbone, layer=None, resumed=None):
    """The name of the first backbone layer that the fine-tuning stage trains: `layer`, or the
    backbone's top stage (BACKBONES, e.g. block_13_expand for MobileNetV2) when None; None for a
    scratch model (backbone_model None). resumed: the layer an interrupted run recorded in its
    config.json (--resume), which a resumed run keeps. Called before the first epoch, so that a
    misspelt layer fails then, not after the frozen epochs. Raises UserError for a layer the
    backbone does not have, or one other than the interrupted run's."""
    if backbone_model is None:
        return None
    if resumed and layer and layer != resumed:
        raise UserError(f"the interrupted run fine-tunes from {resumed!r}, not {layer!r}: resume it without "
                        f"--finetune-from or with --finetune-from {resumed}")
    layer = resumed or layer or BACKBONES[backbone][1]
    names = [x.name for x in backbone_model.layers]
    if layer not in names:
        starts = [n for n in names if n.endswith("_expand")]  # MobileNetV2's blocks
        hint = ", ".join(starts[:4] + ["...", starts[-1]]) if len(starts) > 5 else BACKBONES[backbone][1]
        raise UserError(f"--finetune-from {layer!r} is not a layer of the {backbone} backbone "
                        f"(keras.applications.{BACKBONES[backbone][0]}); e.g. {hint}")
    return layer


def set_backbone_trainable(backbone_model, from_layer=None):
    """Freeze the backbone, or unfreeze it from `from_layer` upwards. BatchNorm layers stay frozen
    (and the backbone is always called with training=False), so their statistics never move.
    A scratch model (backbone_model None) has nothing to freeze."""
    if backbone_model is None:
        return
    print(f"backbone {'frozen' if from_layer is None else f'trainable from layer {from_layer} up'}", flush=True)
    names = [layer.name for layer in backbone_model.layers]
    start = len(names) if from_layer is None else names.index(from_layer)
    backbone_model.trainable = True
    for k, layer in enumerate(backbone_model.layers):
        layer.trainable = k >= start and not isinstance(layer, keras.layers.BatchNormalization)


# ----------------------------------------------------------------------------------------------
# Devices: tf.distribute strategies, mixed precision, XLA

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def make_strategy(name="auto"):
    """The tf.distribute strategy for --strategy.

    auto: a TPU if one is attached, else all local GPUs when there are several, else one device.
    mirrored: MirroredStrategy over all local GPUs (with none: over every logical CPU device, so
    it can be tested on a CPU split into logical devices). multiworker: MultiWorkerMirroredStrategy,
    the cluster described by $TF_CONFIG. tpu: TPUStrategy (Kaggle/Colab TPUs)."""
    if name not in STRATEGIES:
        raise UserError(f"unknown --strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        has_tpu = tf.config.list_physical_devices("TPU") or "TPU_NAME" in os.environ or "COLAB_TPU_ADDR" in os.environ
        name = "tpu" if has_tpu else "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        # CPU devices: reduce through one device (collective all-reduces across logical CPU devices
        # can be launched in a different order per replica and then fail)
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--strategy multiworker needs $TF_CONFIG describing the cluster and this worker's index "
                            "(see README, 'Speed and scale')")
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise UserError(f"--strategy tpu: no TPU found ({str(e).splitlines()[0][:120]})") from None
    return tf.distribute.TPUStrategy(resolver)


def set_precision(mode="auto", strategy=None):
    """Set Keras' global dtype policy for --mixed-precision auto|on|off and return its name.

    on: mixed_bfloat16 on TPUs and CPUs, mixed_float16 on GPUs (Keras then wraps the optimizer
    in a LossScaleOptimizer); auto: on for GPUs and TPUs, off (float32) on a CPU, where float16
    is emulated and slower. Models keep float32 outputs, so losses and metrics run in float32."""
    if mode not in ("auto", "on", "off"):
        raise UserError(f"--mixed-precision must be auto, on or off, not {mode!r}")
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    if mode == "off" or (mode == "auto" and not (on_tpu or on_gpu)):
        policy = "float32"
    else:
        policy = "mixed_float16" if on_gpu and not on_tpu else "mixed_bfloat16"
    keras.config.set_dtype_policy(policy)
    return policy


def jit_flag(mode="auto"):
    """compile(jit_compile=...) for --jit auto|on|off. auto is Keras' rule: XLA on a single GPU
    or TPU, not on a CPU nor under tf.distribute. (On a 2-core CPU XLA trained the scratch
    classifier 17% faster, bench/speed.py; the other models were not measured, so CPU runs keep
    Keras' rule and --jit on is there for long ones.)"""
    if mode not in ("auto", "on", "off"):
        raise UserError(f"--jit must be auto, on or off, not {mode!r}")
    return {"auto": "auto", "on": True, "off": False}[mode]


def setup_devices(strategy="auto", mixed_precision="auto", batch_size=32, lr=1e-3):
    """Strategy, dtype policy and the global batch size and learning rate: both scale with the
    replica count (each replica keeps `batch_size` images; linear learning-rate scaling).
    Returns (strategy, dict for config.json)."""
    chosen = make_strategy(strategy)
    policy = set_precision(mixed_precision, chosen)
    replicas = chosen.num_replicas_in_sync
    devices = dict(strategy=type(chosen).__name__, replicas=replicas, precision=policy,
                   global_batch_size=batch_size * replicas, lr=lr * replicas)
    if replicas > 1 or policy != "float32":
        print(f"devices: {devices['strategy']} with {replicas} replicas, {policy}; global batch "
              f"{devices['global_batch_size']}, learning rate {devices['lr']:g}", flush=True)
    return chosen, devices


def add_device_args(p):
    """The --strategy, --mixed-precision and --jit flags shared by the training scripts."""
    p.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="tf.distribute strategy (default auto: TPU if attached, all GPUs if several, else one device)")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "on", "off"],
                   help="mixed precision (default auto: float16 on GPU, bfloat16 on TPU, off on CPU)")
    p.add_argument("--jit", default="auto", choices=["auto", "on", "off"],
                   help="XLA compilation (default auto: on for a single GPU/TPU, off on CPU and under tf.distribute)")


# ----------------------------------------------------------------------------------------------
# Run folders: one folder per run, never half-written, never mixed with an older run

@contextlib.contextmanager
def run_folder(out, resume=False, overwrite=False, progress="state.json"):
    """Create a run folder for the `with` block and yield the saved progress of an interrupted run
    (--resume; {} for a new run). An existing run is only continued (--resume) or replaced
    (--overwrite), never mixed with a new one. If the block fails before `progress` (a file in
    the folder: a finished epoch) exists, the new folder is removed and a replaced one put back,
    so a failed run leaves no partial output and loses nothing; with progress it stays, for
    --resume. Resuming deletes the temporary files (.tmp-*) of a write the interruption cut short."""
    state_path = os.path.join(out, "state.json")
    if resume:
        if not os.path.isfile(state_path):
            raise UserError(f"--resume: {out} holds no interrupted run (no state.json)")
        state = read_json(state_path)
        if state.get("finished"):
            raise UserError(f"{out} is already finished; nothing to resume")
        for name in os.listdir(out):  # a write the kill interrupted (save_model, atomic_write)
            if name.startswith(TMP_PREFIX):
                os.unlink(os.path.join(out, name))
        yield state
        return
    backup = None
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        if not overwrite:
            raise UserError(f"{out} already exists; pass --resume to continue it or --overwrite to replace it")
        backup = f"{out.rstrip(os.sep)}.replaced-{os.getpid()}"
        os.rename(out, backup)
    try:
        os.makedirs(out, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise UserError(f"run folder {out} is not writable")
    except OSError as e:
        if backup:
            os.rename(backup, out)
        raise UserError(f"cannot create run folder {out}: {e.strerror}") from None
    try:
        yield {}
    except BaseException:
        if not os.path.exists(os.path.join(out, progress)):
            shutil.rmtree(out, ignore_errors=True)
            if backup:
                os.rename(backup, out)
                backup = None
        raise
    finally:
        if backup:
            shutil.rmtree(backup, ignore_errors=True)


def load_run(run_dir, task):
    """(model, config) of a finished run folder of the given task; a clear error for anything else."""
    config_path = os.path.join(run_dir, "config.json")
    model_path = os.path.join(run_dir, "model.keras")
    if not os.path.isfile(config_path) or not os.path.isfile(model_path):
        raise UserError(f"{run_dir} is not a finished run folder (needs config.json and model.keras)")
    config = read_config(config_path)
    if config.get("task") != task:
        raise UserError(f"{run_dir} holds a {config.get('task')} model, not a {task} model")
    return keras.models.load_model(model_path, compile=False, safe_mode=True), config


OLD_CONFIG_KEYS = {"model": "arch", "warmup_epochs": "frozen_epochs", "balance": "repeat_factor",
                   "finetune_factor": "finetune_lr_factor"}  # config.json names before issue 17


def read_config(path):
    """A run's config.json, with the names of runs written before the renames of issue 17
    (model -> arch, warmup_epochs -> frozen_epochs, balance -> repeat_factor, fit 'pad' ->
    'letterbox') read as today's."""
    config = {OLD_CONFIG_KEYS.get(k, k): v for k, v in read_json(path).items()}
    if config.get("fit") == "pad":
        config["fit"] = "letterbox"
    return config


def read_json(path):
    """The object in a JSON file the project wrote (null where a value is undefined)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_model(model, path, copy_of=None):
    """model.save through a temporary name + rename, so a crash never leaves a broken file. With
    copy_of, the path of a file just saved from the same model, copy that file instead (3 ms
    against 0.18-0.44 s for a quick demo model's save)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f"{TMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")
    try:
        if copy_of:
            shutil.copyfile(copy_of, tmp)
        else:
            model.save(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UserError(f"cannot save {path}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------------------------
# Training: checkpoints, NaN stop, time limit, learning-rate schedule, resume (the two training scripts)

class RunCheckpoint(keras.callbacks.Callback):
    """The run's files: last.keras (the model after an epoch, optimizer included, for --resume),
    model.keras (the epoch that scored best on `monitor`) and state.json (progress: the epoch that
    last.keras holds, the best score and its epoch). Written after the first epoch, then after an
    epoch that ends at least `every` seconds after the last write, and when a stage's fit ends
    (finished, early-stopped or at the time limit); in between, the best epoch's weights wait in
    memory. A save of a quick demo model takes 0.18-0.44 s, up to a tenth of its 5-s epoch
    (bench/README.md, "Ninth round"); every=0 writes after every epoch. An interrupted run (a
    kill) resumes from the last write and loses at most `every` seconds and an epoch. Files are
    replaced atomically. Stops training, keeping the best model, if the loss is NaN.

    Put it after the CSVLogger in the callbacks, so that state.json never counts an epoch whose
    log row is missing (resume_model cuts log rows past the last write)."""

    def __init__(self, out, monitor="val_dice", state=None, every=60.0):
        super().__init__()
        self.out, self.monitor, self.every = out, monitor, every
        self.state = dict(state or {})
        self.state.setdefault("best", None)
        self.state.setdefault("best_epoch", None)
        self.nan_epoch = None
        self.epoch = self.state.get("epoch", 0)  # the last finished epoch with a finite loss
        self.best_weights = None  # the best epoch's weights, while model.keras holds an older one
        self.written = None  # time.time() of the last write

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not np.isfinite(logs.get("loss", 0.0)):
            self.nan_epoch = epoch + 1
            self.model.stop_training = True
            return
        self.epoch = epoch + 1
        value = logs.get(self.monitor)
        if value is not None and (self.state["best"] is None or value > self.state["best"]):
            self.state.update(best=float(value), best_epoch=epoch + 1)
            self.best_weights = self.model.get_weights()
        if self.written is None or time.time() - self.written >= self.every:
            self.write()

    def on_train_batch_end(self, batch, logs=None):
        if logs and not np.isfinite(logs.get("loss", 0.0)):
            self.nan_epoch = "current"
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.write()

    def write(self):
        """last.keras (not after a NaN: those weights are lost, the file keeps the last finite
        epoch it was written at), model.keras if a better epoch waits in memory, state.json."""
        last = os.path.join(self.out, "last.keras")
        saved_last = self.nan_epoch is None and self.epoch != self.state.get("epoch")
        if not saved_last and self.best_weights is None:
            return  # nothing new since the last write
        if saved_last:
            save_model(self.model, last)
            self.state["epoch"] = self.epoch
        if self.best_weights is not None:
            best = os.path.join(self.out, "model.keras")
            if saved_last and self.state["best_epoch"] == self.epoch:
                save_model(self.model, best, copy_of=last)
            else:
                current = self.model.get_weights()
                self.model.set_weights(self.best_weights)
                save_model(self.model, best)
                self.model.set_weights(current)
            self.best_weights = None
        write_json(os.path.join(self.out, "state.json"), self.state)
        self.written = time.time()


class TimeLimit(keras.callbacks.Callback):
    """Fit training into a time limit (minutes, counted from creation; None or 0: no limit).

    The learning-rate schedule asks `plan` at the start of every epoch where the stage should
    end. The last stage (the long one: fine-tuning, or the only one) ends where it was
    configured to while its remaining epochs fit in the time left at its pace so far (median
    epoch duration), else earlier, at the last epoch that fits, so that the cosine schedule
    decays fully by the limit instead of being cut mid-way. Earlier stages (the short frozen-
    backbone stage) keep their epochs. Training stops at the planned end, and in any case
    before an epoch that would end past the limit at the pace or the last epoch's duration,
    whichever is slower. `hit`: the limit shortened or stopped training; `planned`: the planned
    epochs in all (None without a limit or before the last stage's first epoch).
    """

    def __init__(self, minutes=None):
        super().__init__()
        self.limit = minutes * 60 if minutes else float("inf")
        self.start, self.hit, self.planned = time.time(), False, None
        self.stage, self.stage_end, self.durations, self.printed = None, None, [], None

    def plan(self, epoch, start, end, final):
        """The epoch (exclusive, counted from 0) at which the stage of epochs [start, end) should
        stop, planned at the start of `epoch`; final: the end of the last stage."""
        if self.stage != (start, end, final):
            self.stage, self.durations = (start, end, final), []
        self.stage_end = end
        if end == final and self.durations and self.limit < float("inf"):
            pace = float(np.median(self.durations))
            left = self.limit - (time.time() - self.start)
            self.stage_end = min(end, epoch + max(1, int(left // pace)))
            if self.printed is None or abs(self.stage_end - self.printed) >= max(2, final // 10):  # news only
                print(f"time limit: {self.stage_end} of {final} epochs planned ({pace:.0f} s an epoch, "
                      f"{left / 60:.1f} min left)", flush=True)
                self.printed = self.stage_end
            self.planned = self.stage_end
        return self.stage_end

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.durations.append(time.time() - self.epoch_start)
        if epoch + 1 >= self.stage_end and self.stage_end < self.stage[1]:  # planned end before the configured one
            self.hit = self.model.stop_training = True
        # the next epoch's duration: the pace, or the last epoch's if slower (the first epoch of a
        # stage, which includes tracing, counts only while it is the only one)
        upcoming = max(self.durations[-1], float(np.median(self.durations)))
        if epoch + 1 < self.stage_end and time.time() - self.start + upcoming > self.limit:
            self.hit = self.model.stop_training = True


def cosine(lr, start, end, floor=0.02, warmup=0):
    """Epoch -> learning rate: cosine from lr at epoch `start` down to lr*floor at `end`, its first
    `warmup` epochs scaled by 1/(warmup+1), 2/(warmup+1), ... : a linear learning-rate warm-up
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD", ramp per step there, per epoch here) that
    keeps Adam's first steps from random weights small. The cosine is not delayed, so the rate
    peaks below lr (0.66 lr for warmup 2 over 5 epochs, 0.99 lr over 26)."""
    def schedule(epoch, _lr=None):
        t = min(max((epoch - start) / max(end - start, 1), 0.0), 1.0)
        ramp = min(1.0, (epoch - start + 1) / (warmup + 1))
        return float(ramp * lr * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * t))))
    return schedule


def warmup_epochs(n):
    """--lr-warmup checked before a run starts: n (epochs of `cosine`'s warm-up) if it is a whole
    number >= 0; UserError otherwise."""
    if not isinstance(n, int) or n < 0:
        raise UserError(f"--lr-warmup must be a whole number of epochs, 0 or more, not {n!r}")
    return n


def checkpoint_interval(seconds):
    """--checkpoint-every checked before a run starts: seconds (RunCheckpoint's `every`) if it is a
    number >= 0; UserError otherwise."""
    if not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise UserError(f"--checkpoint-every must be 0 or more seconds, not {seconds!r}")
    return seconds


def resume_model(out, state):
    """The model of an interrupted run as last written (RunCheckpoint), optimizer included; log.csv
    cut back to that epoch, since the epochs trained after it run again."""
    epochs = state.get("epoch", 0)
    print(f"resuming after epoch {epochs} (best so far {state.get('best')})", flush=True)
    log = os.path.join(out, "log.csv")
    if os.path.isfile(log):
        with open(log, newline="") as f:
            lines = f.readlines()
        kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) < epochs]
        atomic_write(log, lambda f: f.writelines(kept), newline="")
    return keras.models.load_model(os.path.join(out, "last.keras"), safe_mode=True)


def keras_verbosity(verbose=None):
    """Keras' verbose= for fit: None picks 1 (a progress bar) on a terminal and 2 (one line per
    epoch) when output goes to a file or a notebook log; any other value is returned as it is."""
    return (1 if sys.stdout.isatty() else 2) if verbose is None else verbose


def planned_cosine(timer, lr, start, end, final, warmup=0):
    """A LearningRateScheduler for the stage of epochs [start, end) of `final`: cosine from lr down
    to where the TimeLimit `timer` plans the stage to end (TimeLimit.plan; `end` without a limit),
    its first `warmup` epochs ramped up (`cosine`). Put it before `timer` in the callbacks."""
    return keras.callbacks.LearningRateScheduler(
        lambda epoch, _: cosine(lr, start, timer.plan(epoch, start, end, final), warmup=warmup)(epoch))


def build_optimizer(model, variables=None):
    """Create the compiled optimizer's variables (Adam's moments) for `variables` (default: the
    model's trainable ones) now, inside the caller's strategy scope. Keras otherwise defers this,
    without a tf.distribute strategy of its own, to the first trace of the training step, and a
    tf.function that creates variables is traced twice: a tiny U-Net's first fit took 16.6 s with
    the second trace and 8.4 s without (bench/README, "Seventh round"). Training is unchanged: the
    same zero-initialised variables, made earlier."""
    model.optimizer.build(model.trainable_variables if variables is None else variables)


def stage_callbacks(out, checkpoint, timer, lr, start, end, final, patience=10, monitor="val_dice", warmup=0):
    """The callbacks of one training stage (epochs start+1..end of final), in this order: a cosine
    learning-rate schedule sized by the time limit with `warmup` epochs of warm-up
    (`planned_cosine`), the CSV log (appended across stages and resumes), the run's checkpoint
    (after the log, so state.json never counts an epoch whose row is missing), early stopping on
    `monitor` after `patience` epochs without improvement, and the time limit."""
    return [planned_cosine(timer, lr, start, end, final, warmup),
            keras.callbacks.CSVLogger(os.path.join(out, "log.csv"), append=True), checkpoint,
            keras.callbacks.EarlyStopping(monitor, mode="max", patience=patience), timer]


def end_training(out, checkpoint, timer):
    """The run's progress after its last stage (state.json's fields, with `epoch` the last finished
    epoch with a finite loss, plus nan_epoch, time_limited and epochs_planned), saying why training
    stopped early; UserError when no epoch gave a model."""
    state = dict(checkpoint.state, epoch=checkpoint.epoch, nan_epoch=checkpoint.nan_epoch, time_limited=timer.hit,
                 epochs_planned=timer.planned)
    if checkpoint.nan_epoch:
        print(f"stopped: the loss became NaN in epoch {checkpoint.nan_epoch}; keeping the best model "
              f"(epoch {state['best_epoch']}) in {out}/model.keras", flush=True)
    if timer.hit:
        print(f"stopped at the {timer.limit / 60:g}-minute time limit after epoch {state['epoch']}", flush=True)
    if state["best"] is None:
        raise UserError("training produced no usable model (no finished epoch with a finite loss)")
    return state


def finish_run(out, state):
    """Mark a run finished and drop its resume checkpoint."""
    write_json(os.path.join(out, "state.json"), dict(state, finished=True))
    if os.path.exists(os.path.join(out, "last.keras")):
        os.remove(os.path.join(out, "last.keras"))


# ----------------------------------------------------------------------------------------------
# Demo data: synthetic, deterministic, competition layout

DEMO_VERSION = 1  # bump when the demo generator changes, so stale caches are not reused

# (shape, RGB colour, texture) per class: every class is told apart by its combination.
DEMO_STYLE = [
    ("cross", (170, 190, 230), "solid"), ("ring", (150, 20, 30), "solid"),
    ("triangle", (240, 220, 40), "dots"), ("halfdisc", (130, 80, 30), "hstripes"),
    ("bar_v", (30, 150, 50), "gradient"), ("bar_h", (250, 140, 20), "vstripes"),
    ("ellipse_h", (220, 30, 30), "solid"), ("diamond", (120, 120, 120), "checker"),
    ("ell", (130, 40, 170), "solid"), ("ellipse_h", (240, 240, 240), "checker"),
    ("tee", (210, 180, 120), "hstripes"), ("hexagon", (200, 110, 40), "dots"),
    ("star", (150, 60, 20), "solid"), ("dumbbell", (20, 40, 110), "solid"),
    ("capsule", (240, 170, 150), "solid"), ("triangle_down", (10, 90, 40), "checker"),
    ("disc", (245, 235, 200), "dots"), ("cup", (20, 150, 150), "solid"),
    ("parallelogram", (30, 30, 120), "vstripes"), ("frame", (40, 210, 230), "diagonal"),
]
DEMO_SIZES = [(375, 500), (500, 375), (333, 500), (281, 500), (500, 333), (375, 375), (240, 320)]
DEMO_SIZE_P = [0.35, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05]  # mostly 500x375, like VOC


def _demo_shape(kind, u, v):
    """Boolean mask of a unit-size shape in centred coordinates u (right), v (down)."""
    au, av = np.abs(u), np.abs(v)
    r = np.hypot(u, v)
    if kind == "disc":
        return r <= 1
    if kind == "ring":
        return (r <= 1) & (r >= 0.6)
    if kind == "cross":
        return ((au <= 1) & (av <= 0.28)) | ((au <= 0.28) & (av <= 1))
    if kind == "triangle":
        return (v <= 0.8) & (v >= -1 + 1.8 * au)
    if kind == "triangle_down":
        return (v >= -0.8) & (v <= 1 - 1.8 * au)
    if kind == "halfdisc":
        return (r <= 1) & (v >= -0.1)
    if kind == "bar_v":
        return (au <= 0.35) & (av <= 1)
    if kind == "bar_h":
        return (au <= 1) & (av <= 0.5)
    if kind == "ellipse_h":
        return (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1
    if kind == "diamond":
        return au + av <= 1
    if kind == "ell":
        return ((u >= -0.8) & (u <= -0.3) & (av <= 1)) | ((u >= -0.8) & (u <= 0.8) & (v >= 0.5) & (v <= 1))
    if kind == "tee":
        return ((au <= 1) & (v >= -1) & (v <= -0.55)) | ((au <= 0.25) & (av <= 1))
    if kind == "hexagon":
        return (av <= 0.87) & (0.5 * au + 0.58 * av <= 0.87 * 0.58 + 0.5 * 0.5)
    if kind == "star":
        theta = np.arctan2(v, u)
        return r <= 0.45 + 0.55 * np.abs(np.cos(2.5 * theta + np.pi / 2)) ** 3
    if kind == "dumbbell":
        return (np.hypot(u + 0.55, v) <= 0.45) | (np.hypot(u - 0.55, v) <= 0.45) | ((au <= 0.6) & (av <= 0.12))
    if kind == "capsule":
        return (np.hypot(u, v + 0.6) <= 0.38) | ((au <= 0.42) & (v >= -0.3) & (v <= 1))
    if kind == "cup":
        return (au <= 1) & (av <= 0.7) & ~((au <= 0.6) & (v <= 0.25))
    if kind == "parallelogram":
        return (av <= 0.4) & (np.abs(u + 0.6 * v) <= 1)
    if kind == "frame":
        return (au <= 1) & (av <= 0.8) & ~((au <= 0.72) & (av <= 0.52))
    raise ValueError(kind)


def _demo_texture(kind, u, v):
    """Per-pixel brightness factor in [0.55, 1.1] that gives each class its surface pattern."""
    if kind == "dots":
        return np.where(np.hypot((u * 4) % 1 - 0.5, (v * 4) % 1 - 0.5) < 0.25, 0.55, 1.0)
    if kind == "hstripes":
        return np.where((v * 5) % 1 < 0.5, 0.6, 1.05)
    if kind == "vstripes":
        return np.where((u * 5) % 1 < 0.5, 0.6, 1.05)
    if kind == "diagonal":
        return np.where(((u + v) * 4) % 1 < 0.5, 0.6, 1.05)
    if kind == "checker":
        return np.where(((np.floor(u * 3) + np.floor(v * 3)) % 2) == 0, 0.55, 1.05)
    if kind == "gradient":
        return 0.6 + 0.25 * (v + 1)
    return np.ones_like(u)


def _demo_background(rng, h, w):
    """Cluttered, muted background: a colour gradient, noise, and gray-ish bars and boxes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(60, 190, 3), rng.uniform(60, 190, 3)
    t = (xx / w * rng.uniform(-1, 1) + yy / h * rng.uniform(-1, 1))[:, :, None]
    img = c0 + (c1 - c0) * (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    for _ in range(rng.integers(3, 9)):
        g = rng.uniform(50, 200)
        col = g + rng.uniform(-25, 25, 3)  # low saturation: never confused with a class colour
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        if rng.random() < 0.5:
            y1, x1 = y0 + rng.integers(h // 10, h // 3), x0 + rng.integers(w // 10, w // 3)
        else:  # thin line
            y1, x1 = (y0 + rng.integers(2, 6), w) if rng.random() < 0.5 else (h, x0 + rng.integers(2, 6))
        img[y0:y1, x0:x1] = col
    img += rng.normal(0, 8, img.shape)
    return img


def _void_border(mask, width=2):
    """VOC-style void band: pixels within `width` of a boundary between two labels where one side
    is an object are set to 255."""
    edge = np.zeros(mask.shape, bool)
    for a, b in ((mask[1:], mask[:-1]), (mask[:, 1:], mask[:, :-1])):
        e = (a != b) & ((a > 0) | (b > 0))
        if a.shape[0] != mask.shape[0]:
            edge[1:] |= e
            edge[:-1] |= e
        else:
            edge[:, 1:] |= e
            edge[:, :-1] |= e
    band = edge.copy()
    for _ in range(width - 1):
        grown = band.copy()
        grown[1:] |= band[:-1]
        grown[:-1] |= band[1:]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    out = mask.copy()
    out[band] = VOID
    return out


def demo_example(seed, index, scale=1.0):
    """One synthetic (image uint8 HxWx3, mask uint8 HxW) pair, fixed by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    h, w = DEMO_SIZES[rng.choice(len(DEMO_SIZES), p=DEMO_SIZE_P)]
    h, w = max(32, int(round(h * scale))), max(32, int(round(w * scale)))
    image = _demo_background(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    weights = np.ones(NUM_CLASSES)
    weights[CLASSES.index("person")] = 3.0  # VOC-like imbalance: person is the common class
    n_obj = rng.integers(1, 5)
    classes = rng.choice(NUM_CLASSES, size=n_obj, p=weights / weights.sum())
    for c in classes:
        shape, colour, texture = DEMO_STYLE[c]
        radius = rng.uniform(0.15, 0.38) * min(h, w) * (1.3 if n_obj == 1 else 1.0)
        stretch = rng.uniform(0.8, 1.25)
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        y0, y1 = int(max(cy - 1.3 * radius, 0)), int(min(cy + 1.3 * radius + 1, h))
        x0, x1 = int(max(cx - 1.3 * radius * stretch, 0)), int(min(cx + 1.3 * radius * stretch + 1, w))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u, v = (xx - cx) / (radius * stretch), (yy - cy) / radius
        inside = _demo_shape(shape, u, v)
        col = np.clip(np.array(colour) * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15, 3), 0, 255)
        patch = col * _demo_texture(texture, u, v)[:, :, None]
        image[y0:y1, x0:x1][inside] = patch[inside]
        mask[y0:y1, x0:x1][inside] = c + 1
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return image, _void_border(mask, width=max(1, round(2 * scale)))


def machine():
    """The machine in a few words, for the record of where times were measured: the CPU's model
    name (from /proc/cpuinfo where there is one; two x86_64 CPUs of this project differ 3x in
    TensorFlow's pace), CPU count and Python version, e.g. 'AMD EPYC, 2 CPUs, Python 3.11.7'."""
    model = platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def default_cache_dir():
    return os.environ.get("VOC_TOOLKIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "voc-toolkit"))


def make_demo(root=None, n_train=600, n_test=100, seed=0, scale=1.0):
    """Generate (once) the demo dataset in the competition layout and return its folder.

    n_train 600 (was 300): the quickstart's scratch classifier overfitted 237 training images
    (training Dice 0.96, validation 0.84); with 472 it reached 0.89 in fewer epochs
    (bench/README.md, "The demo quickstart"), and the validation split grows from 63 to 128 images.

    Also writes solution.csv (the test truth in submission format, with shapes) and
    test_labels.csv, so the local scorer can be shown working. Generation goes to a temporary
    folder that is renamed at the end: an interrupted run leaves no half-made dataset.
    """
    if root is None:
        root = os.path.join(default_cache_dir(),
                            f"demo-v{DEMO_VERSION}-seed{seed}-{n_train}-{n_test}-x{scale:g}")
    if os.path.isfile(os.path.join(root, "solution.csv")):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo-", dir=parent)
    print(f"generating demo data ({n_train} train + {n_test} test images) in {root}", flush=True)
    test = {"ids": [], "labels": [], "masks": []}
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 10 ** 6)):
        for sub in ("img", "seg") if split == "train" else ("img",):
            os.makedirs(os.path.join(tmp, split, sub))
        rows = []
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # NumPy's array work runs outside the GIL
            examples = pool.map(lambda k: demo_example(seed, k, scale), range(offset, offset + n))
            for i, (image, mask) in enumerate(examples):
                np.save(os.path.join(tmp, split, "img", f"{split}_{i}.npy"), image)
                labels = labels_from_mask(mask)
                if split == "train":
                    np.save(os.path.join(tmp, split, "seg", f"{split}_{i}.npy"), mask)
                    rows.append([i] + labels.tolist())
                else:
                    rows.append([i] + [-1] * NUM_CLASSES)
                    test["ids"].append(i)
                    test["labels"].append(labels)
                    test["masks"].append(mask)
        with open(os.path.join(tmp, split, f"{split}_set.csv"), "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([["Id", *CLASSES]] + rows)
    with open(os.path.join(tmp, "test_labels.csv"), "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [["Id", *CLASSES]] + [[i, *y.tolist()] for i, y in zip(test["ids"], test["labels"])])
    write_submission(os.path.join(tmp, "solution.csv"), test["ids"], test["labels"], test["masks"], shapes=True)
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(root, "solution.csv")):
            raise
    return root


# ----------------------------------------------------------------------------------------------
# Command line

def dataset_summary(data=None, out=None, samples=12, seed=0):
    """Read every image and mask of a dataset, print a summary, and write samples.png and
    summary.json (the printed counts: images per split and per class, labels per image, object
    and void pixel shares) into `out`. Returns the (train, test) Splits."""
    root, _ = resolve_data(data)  # generates the demo data first if needed
    t0 = time.time()
    train = load_split(root, "train")
    test = load_split(root, "test")
    print(f"data: {train.root} ({train.layout} layout)")
    print(f"train: {len(train)} images, masks: {'yes' if train.has_masks else 'no'}; test: {len(test)} images")
    facts = dict(root=train.root, layout=train.layout, train_images=len(train), test_images=len(test),
                 train_masks=train.has_masks)
    for split in (train, test):
        sizes, void, objects = [], 0, 0
        for i in range(len(split)):
            image, mask = read_example(split, i)
            sizes.append(image.shape[:2])
            if mask is not None:
                void += int((mask == VOID).sum())
                objects += int(((mask > 0) & (mask != VOID)).sum())
        if not sizes:
            continue
        hs, ws = np.array(sizes).T
        common = sorted({s: sizes.count(s) for s in set(sizes)}.items(), key=lambda kv: -kv[1])[:3]
        print(f"{split.name} image sizes (HxW): height {hs.min()}-{np.median(hs):.0f}-{hs.max()}, "
              f"width {ws.min()}-{np.median(ws):.0f}-{ws.max()} (min-median-max); most common "
              + ", ".join(f"{h}x{w} ({n})" for (h, w), n in common))
        if split.has_masks:
            pixels = int(sum(h * w for h, w in sizes))
            print(f"{split.name} pixels: {100 * objects / pixels:.1f}% object, {100 * void / pixels:.1f}% void")
            facts.update(object_pixel_share=objects / pixels, void_pixel_share=void / pixels)
    if train.has_labels:
        counts = (train.labels > 0).sum(0)
        per_image = (train.labels > 0).sum(1)
        print(f"labels per image: mean {per_image.mean():.2f}, max {per_image.max()}, "
              f"images with none {int((per_image == 0).sum())}")
        print("images per class: " + ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts)))
        facts.update(labels_per_image=float(per_image.mean()), max_labels_per_image=int(per_image.max()),
                     images_per_class={c: int(n) for c, n in zip(CLASSES, counts)})
    print(f"read every image and mask in {time.time() - t0:.1f} s")
    if out:
        os.makedirs(out, exist_ok=True)
        pick = np.random.default_rng(seed).choice(len(train), size=min(samples, len(train)), replace=False)
        tiles = []
        for i in pick:
            image, mask = read_example(train, i)
            names = [CLASSES[c] for c in np.flatnonzero(train.labels[i] > 0)]
            tiles.append(tile(image, 128, f"id {train.ids[i]}"))
            if mask is not None:
                chars = max(12, image.shape[1] * 128 // image.shape[0] // 6)
                tiles.append(tile(colorize(mask), 128, wrap_names(names, chars)))
        pic = grid(tiles, 6, title=f"{len(pick)} training samples from {train.root}: image | mask")
        save_png(os.path.join(out, "samples.png"), with_legend(pic, range(NUM_CLASSES)))
        write_json(os.path.join(out, "summary.json"), facts)
        print(f"wrote {os.path.join(out, 'samples.png')} and summary.json")
    return train, test


def in_notebook(namespace):
    """True when a script's text was pasted into a notebook cell (or an IPython prompt) and run
    there, where __name__ is also "__main__": `namespace` is the script's globals(). A file run
    (python x.py, python -m x, IPython's %run x.py) always sets __file__; a pasted cell never does."""
    return "__file__" not in namespace and "IPython" in sys.modules


def cell_module(name, namespace):
    """A module `name` holding the names a pasted cell defined (its globals), for sys.modules, so that
    the cells after it can `import name` as if the script were a file next to the notebook.

    Plain code, no exec: the functions still look up their globals in the notebook's one shared
    namespace, so the six scripts define no top-level name twice, except the entry points train,
    run and main, which other scripts reach only through these modules (tests/test_notebook.py)."""
    module = types.ModuleType(name)
    module.__dict__.update(namespace)
    module.__name__ = name  # the cell's globals say "__main__"
    return module


def run_cli(main, argv=None):
    """Call main(argv); a UserError becomes one 'error: ...' line and exit status 2 (the full
    traceback with --debug)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv) or 0
    except UserError as e:
        if "--debug" in argv:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="read every image and mask, print a summary, write samples.png")
    c.add_argument("--data", help="dataset folder (competition or VOC devkit layout) or 'demo'; "
                                  "default: the competition data under /kaggle/input")
    c.add_argument("--out", default="runs/data_check", help="folder for samples.png (default %(default)s)")
    c.add_argument("--debug", action="store_true", help="show full tracebacks")
    s = sub.add_parser("score", help="score a submission against a solution CSV")
    s.add_argument("--pred", required=True, help="submission.csv to score")
    s.add_argument("--truth", required=True, help="solution CSV (same format: Id,Predicted[,Shape])")
    s.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    if args.command == "check":
        dataset_summary(args.data, args.out)
    else:
        r = score_submission(args.pred, args.truth)
        print(f"images {r['images']}  classification {r['classification']:.4f}  "
              f"segmentation {r['segmentation']:.4f}  score {r['score']:.4f}")
    return 0


if __name__ == "__main__":
    if in_notebook(globals()):  # pasted into a notebook cell: the cells after it can `import common`
        sys.modules["common"] = cell_module("common", globals())
    else:
        sys.exit(run_cli(main))
