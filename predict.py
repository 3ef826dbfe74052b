"""Predict the test split with a trained classifier and segmenter and write submission.csv.

    python predict.py --data DIR --cls runs/CLS_RUN --seg runs/SEG_RUN --out runs/predict
    python predict.py --data DIR --cls ... --seg ... --split val --score   # score the validation split

The classifier's labels (--cls-decision) are by default the label set of (approximately) largest
expected Dice under its probabilities (no thresholds tuned; it beat the run's tuned per-class
thresholds on held-out proxy photos, README, Results), or the tuned thresholds for a classifier
trained with the focal or asymmetric loss, whose probabilities are not calibrated; `thresholds`
or `expected-dice` force one.
Test-time augmentation (--tta, comma list) averages in probability space: seg-flip (the
segmenter also sees the mirrored image), cls-flip (the classifier too), flip (both), scales
(segmentation at several scales). Default seg-flip: on the proxy validation split it raised the
segmentation half, while cls-flip lowered the classification half (also on held-out photos, with
either decision rule) and scales gained 0.001 for 3x the time; with the 384-pixel U-Net, scales
gained 0.004 segmentation on held-out photos (a gain on each of five draws, 0.001-0.010) and
0.007 on their validation splits: the best setting measured, not yet the default (README, Results).
Fusion rules (--fuse) let each task correct the other (default drop: it raised the joint score
on the proxy validation split and cost nothing on the demo; agree raised it a little more on the
proxy but cost 0.18 of the segmentation half on the demo, where the classifier is weak; add and
small lowered it):
  drop   remove a segmented class whose classifier probability is below --drop-below
  add    add to the labels a class that covers at least --add-area of the image in the mask
  small  remove a class whose mask covers less than --min-area of the image (set to background)
  agree  keep in the mask only the classes of the final label set
The final mask's pixels within --void-band pixels (default 1) of another label become background:
VOC's truth marks object boundaries void, which the competition's Dice reads as background (on
held-out proxy photos +0.005-0.006 segmentation Dice with three trained segmenters). The areas in
predictions.json are those of the final mask.
The run folder gets submission.csv (validated, written atomically), predictions.json (the
decision rule used, labels and class areas per image), gallery.png, and scores.json with --score.
"""

import argparse
import contextlib
import os
import sys
import time

import common  # noqa: I001  (first: it quiets TensorFlow's start-up logging before Keras loads it)
import numpy as np
from common import CLASSES, NUM_CLASSES
from PIL import Image, ImageFilter

import cls_train
import seg_train

RULES = ("drop", "add", "small", "agree")
CLS_DECISIONS = ("auto", "expected-dice", "thresholds")
TTA = ("seg-flip", "cls-flip", "flip", "scales")


def void_band(mask, width):
    """The label map `mask` (H, W) uint8 with every pixel within `width` pixels (an int; square
    window) of a different label set to background (0); width <= 0 returns it unchanged. VOC's
    truth marks a band of about 5 pixels at every object boundary void, and the competition's
    Dice reads void as background, so an object label predicted there only costs."""
    if width <= 0:
        return mask
    im = Image.fromarray(mask)
    highest = np.array(im.filter(ImageFilter.MaxFilter(2 * width + 1)))
    lowest = np.array(im.filter(ImageFilter.MinFilter(2 * width + 1)))
    return np.where(highest != lowest, 0, mask).astype(np.uint8)


def fuse(cls_probs, cls_labels, seg_probs, rules=(), drop_below=0.05, add_area=0.05, min_area=0.002, size=None,
         band=0):
    """One image's final (labels (20,) int8, label map (H, W) uint8) from classifier
    probabilities (20,), the classifier's decided labels (20,) 0/1 and segmenter probabilities
    (h, w, 21) (resized to size=(H, W), default their own size), applying the chosen rules, then
    void_band(mask, band) (default 0: none) to the final mask (the rules and labels see the mask
    before it).
    Raises common.UserError when cls_labels are not 20 values of 0 or 1."""
    allowed = np.ones(NUM_CLASSES + 1, bool)
    if "drop" in rules:
        allowed[1:] &= cls_probs >= drop_below
    mask = seg_train.label_map(seg_probs, seg_probs.shape[:2] if size is None else size, allowed)
    area = np.bincount(mask.ravel(), minlength=NUM_CLASSES + 1)[1:] / mask.size
    if "small" in rules:
        tiny = np.flatnonzero((area > 0) & (area < min_area)) + 1
        mask[np.isin(mask, tiny)] = 0
        area[tiny - 1] = 0
    cls_labels = np.asarray(cls_labels)
    if cls_labels.shape != (NUM_CLASSES,) or not np.isin(cls_labels, (0, 1)).all():
        raise common.UserError("fuse takes the classifier's decided labels (20 values, 0 or 1), e.g. "
                               "cls_train.expected_dice_labels(probs[None])[0], not thresholds or probabilities")
    labels = cls_labels.astype(bool)
    if "add" in rules:
        labels |= area >= add_area
    if "agree" in rules:
        mask[~np.concatenate([[True], labels])[mask]] = 0
    return labels.astype(np.int8), void_band(mask, band)


def run(data=None, cls="runs/cls", seg="runs/seg", out="runs/predict", split="test", tta=("seg-flip",),
        scales=(0.75, 1.0, 1.25), fuse_rules=("drop",), drop_below=0.05, add_area=0.05, min_area=0.002,
        score=False, truth=None, batch_size=8, overwrite=False, cls_decision="auto", void_band_width=1):
    """Predict every image of a split with a classification and a segmentation run, fuse the two,
    and write submission.csv, predictions.json and gallery.png into `out` (scores.json with score).

    data: dataset folder, 'demo' or None (the competition data under /kaggle/input).
    cls, seg: finished run folders of cls_train.py and seg_train.py (default runs/cls, runs/seg).
    split: 'test', or 'val': the training images both runs held out for validation (default 'test').
    tta: items of TTA: 'seg-flip' (the segmenter also sees the mirrored image), 'cls-flip' (the
        classifier too), 'flip' (both), 'scales' (the segmenter at each of `scales`); the results
        are averaged in probability space (default ('seg-flip',); () for none).
    scales: with 'scales' in tta, multiples of the segmenter's img_size (default 0.75, 1.0, 1.25).
    fuse_rules: items of RULES, applied per image by fuse() (default ('drop',)).
    drop_below: rule 'drop': a class whose classifier probability is below this leaves the mask (default 0.05).
    add_area: rule 'add': a class covering at least this fraction of the image in the mask is
        added to the labels (default 0.05).
    min_area: rule 'small': a class covering less than this fraction of the image is set to
        background (default 0.002).
    score: also score the submission (default False) against `truth`: by default solution.csv
        beside the test split, or, for split='val', out/solution_val.csv built from the masks.
    batch_size: images per segmenter call (default 8).
    overwrite: replace an existing `out`.
    cls_decision: how the classifier's probabilities become labels: 'expected-dice' (per image the
        label set of largest expected Dice, cls_train.expected_dice_labels: nothing tuned; on
        held-out proxy photos, 5 draws, it beat the tuned thresholds by 0.013 on average with the
        224-pixel classifier, higher on every draw, and by 0.004 with the 288-pixel one),
        'thresholds' (the run's per-class thresholds tuned on its validation split,
        cls_train.decide), or 'auto' (default): cls_train.default_decision, expected-dice for a
        classifier trained with the bce loss, thresholds for focal or asl, whose probabilities are
        not calibrated (asl on held-out proxy photos: expected-dice 0.774, thresholds 0.822; focal
        not measured); the rule used is printed and recorded in predictions.json.
    void_band_width: pixels of the final mask within this many pixels of another label become
        background (void_band; a whole number, default 1, 0: off): on held-out proxy photos it
        raised the segmentation half by 0.005-0.006 with three trained segmenters (two
        configurations), and on their validation splits by 0.004-0.008 (README, Results;
        bench/seg_decisions.py). predictions.json's mask_area is of the final mask.

    Returns (scores, path): scores is common.score_submission's dict ('classification',
    'segmentation' and 'score': mean Dice over each half's rows and over all rows; 'images'), or
    None without score; path is out/submission.csv.
    Raises common.UserError for an unknown fuse rule, TTA item or cls_decision, a void_band_width
    that is not a whole number >= 0, a run folder that is not a
    finished run of its task, a split other than test or val, a split without images, runs that
    share no validation images, an existing `out` without overwrite, or score on a test split
    without labels and no truth. A failure once submission.csv is complete (re-reading it,
    predictions.json, gallery.png, scoring) becomes a UserError that says so; the file is kept.
    """
    unknown = set(fuse_rules) - set(RULES)
    if unknown:
        raise common.UserError(f"unknown --fuse rule {sorted(unknown)[0]!r}; choose from {', '.join(RULES)}")
    if set(tta) - set(TTA):
        raise common.UserError(f"unknown --tta item {sorted(set(tta) - set(TTA))[0]!r}; use {', '.join(TTA)}")
    if cls_decision not in CLS_DECISIONS:
        raise common.UserError(f"unknown --cls-decision {cls_decision!r}; choose from {', '.join(CLS_DECISIONS)}")
    if isinstance(void_band_width, bool) or not isinstance(void_band_width, (int, np.integer)) or void_band_width < 0:
        raise common.UserError(f"--void-band must be a whole number of pixels, 0 or more, not {void_band_width!r}")
    cls_flip = "flip" in tta or "cls-flip" in tta
    seg_flip = "flip" in tta or "seg-flip" in tta
    cls_model, cls_config, thresholds = cls_train.load_classifier(cls)
    if cls_decision == "auto":
        cls_decision = cls_train.default_decision(cls_config)
    print(f"classifier labels: {cls_decision} (the classifier's loss: {cls_config.get('loss', 'bce')})", flush=True)
    seg_model, seg_config = common.load_run(seg, "segmentation")
    with common.run_folder(out, overwrite=overwrite, progress="submission.csv"):  # kept once written
        data_split = pick_split(data, split, cls_config, seg_config)
        if len(data_split) == 0:
            raise common.UserError(f"the {split} split of {data_split.root} has no images")
        print(f"predicting {len(data_split)} {split} images of {data_split.root}", flush=True)

        t0 = time.time()
        examples = common.load_examples(data_split, masks=False)
        images = [im for im, _ in examples]
        cls_probs = cls_train.predict_probs(cls_model, data_split, examples, cls_config, flip=cls_flip)
        cls_labels = cls_train.labels_for(cls_probs, thresholds, cls_decision)
        seg_scales = tuple(scales) if "scales" in tta else (1.0,)
        labels, masks = [], []
        for i, seg_probs in enumerate(seg_train.segment(seg_model, images, seg_config["img_size"], seg_scales,
                                                        seg_flip, batch_size)):
            y, m = fuse(cls_probs[i], cls_labels[i], seg_probs, fuse_rules, drop_below, add_area, min_area,
                        size=images[i].shape[:2], band=void_band_width)
            labels.append(y)
            masks.append(m)
            if (i + 1) % 100 == 0:
                print(f"  {i + 1}/{len(images)} images", flush=True)
        seconds = time.time() - t0

        path = common.write_submission(os.path.join(out, "submission.csv"), data_split.ids, labels, masks)
        with kept_after(path, "re-reading it"):
            sizes = [n for m in masks for n in (NUM_CLASSES, NUM_CLASSES * m.size)]
            common.validate_submission(path, data_split.ids, sizes)
        print(f"wrote {path} ({len(data_split)} images, {seconds:.1f} s, {len(data_split) / seconds:.1f} images/s)")
        with kept_after(path, "writing predictions.json and gallery.png"):
            common.write_json(os.path.join(out, "predictions.json"), {
                "split": split, "data": data_split.root, "cls_run": cls, "seg_run": seg,
                "cls_decision": cls_decision, "tta": list(tta), "scales": list(seg_scales),
                "fuse": list(fuse_rules), "void_band": void_band_width, "seconds": seconds,
                "images": {str(i): {"labels": [CLASSES[c] for c in np.flatnonzero(y)],
                                    "probabilities": {CLASSES[c]: round(float(p), 4)
                                                      for c, p in enumerate(cp) if p >= 0.05},
                                    "mask_area": {CLASSES[c - 1]: round(float((m == c).mean()), 4)
                                                  for c in np.unique(m) if c > 0}}
                           for i, y, cp, m in zip(data_split.ids, labels, cls_probs, masks)}})
            gallery(os.path.join(out, "gallery.png"), data_split, images, labels, masks)
        scores = None
        if score:
            with kept_after(path, "scoring it"):
                truth_csv = truth or solution_for(data_split, split, out)
                scores = common.score_submission(path, truth_csv)
                common.write_json(os.path.join(out, "scores.json"), dict(scores, truth=truth_csv))
            print(f"score on {split}: classification {scores['classification']:.4f}  "
                  f"segmentation {scores['segmentation']:.4f}  joint {scores['score']:.4f}")
        return scores, path


@contextlib.contextmanager
def kept_after(path, step):
    """Around a step after the main output `path` is complete: any failure (UserError or not)
    becomes one UserError line saying what failed and that `path` is kept (--debug shows the
    cause). The run folder stays: run() passes progress='submission.csv' to common.run_folder."""
    try:
        yield
    except Exception as e:
        cause = str(e) if isinstance(e, common.UserError) else f"{type(e).__name__}: {e}"
        raise common.UserError(f"{step} failed after {path} was written; the submission is complete and kept "
                               f"({cause})") from e


def pick_split(data, split, cls_config, seg_config):
    """The images to predict: the test split, or the validation split both models held out."""
    if split == "test":
        return common.load_split(data, "test")
    if split != "val":
        raise common.UserError(f"--split must be test or val, not {split!r}")
    train = common.load_split(data, "train")
    held_out = set(cls_config["val_ids"]) & set(seg_config["val_ids"])
    if not held_out:
        raise common.UserError("the two runs share no validation images (trained on other data?)")
    if len(held_out) < len(cls_config["val_ids"]):
        print(f"note: using the {len(held_out)} validation images both runs held out", flush=True)
    return train.subset([k for k, i in enumerate(train.ids) if i in held_out])


def solution_for(data_split, split, out):
    """The truth to score against: solution.csv beside a test split (the demo writes one), or,
    for the validation split, one built from its masks into the run folder."""
    if split == "test":
        path = os.path.join(data_split.root, "solution.csv")
        if not os.path.isfile(path):
            raise common.UserError(f"--score: the test split has no labels ({path} missing); "
                                   "pass --truth SOLUTION.csv or use --split val")
        return path
    masks = [common.read_example(data_split, i)[1] for i in range(len(data_split))]
    labels = [common.labels_from_mask(m) for m in masks]
    return common.write_submission(os.path.join(out, "solution_val.csv"), data_split.ids, labels, masks, shapes=True)


def gallery(path, data_split, images, labels, masks, n=12):
    """Test images with their predicted labels and masks (first n in split order)."""
    tiles, shown = [], set()
    for i in range(min(n, len(images))):
        names = [CLASSES[c] for c in np.flatnonzero(labels[i])]
        tiles.append(common.tile(images[i], 120, f"id {data_split.ids[i]}", width=160))
        tiles.append(common.tile(common.colorize(masks[i]), 120, common.wrap_names(names, 26), width=160))
        shown |= set(np.unique(masks[i]).tolist())
    pic = common.grid(tiles, 8, title=f"predictions: image | predicted mask and labels ({data_split.name} split)")
    common.save_png(path, common.with_legend(pic, [c - 1 for c in sorted(shown) if c > 0]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset folder or 'demo' (default: /kaggle/input)")
    p.add_argument("--cls", default="runs/cls", help="classification run folder (default %(default)s)")
    p.add_argument("--seg", default="runs/seg", help="segmentation run folder (default %(default)s)")
    p.add_argument("--out", default="runs/predict", help="output folder (default %(default)s)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="test split, or the validation split held out by both runs (default %(default)s)")
    p.add_argument("--tta", default="seg-flip",
                   help=f"comma list from {','.join(TTA)}; 'none' for none (default %(default)s)")
    p.add_argument("--scales", default="0.75,1,1.25", help="segmentation scales for --tta scales (default %(default)s)")
    p.add_argument("--fuse", default="drop",
                   help=f"comma list of fusion rules from {','.join(RULES)}; 'none' for none (default %(default)s)")
    p.add_argument("--drop-below", type=float, default=0.05,
                   help="rule drop: classifier probability (default %(default)s)")
    p.add_argument("--add-area", type=float, default=0.05, help="rule add: mask area fraction (default %(default)s)")
    p.add_argument("--min-area", type=float, default=0.002, help="rule small: mask area fraction (default %(default)s)")
    p.add_argument("--cls-decision", default="auto", choices=CLS_DECISIONS,
                   help="classifier labels: expected-dice (per image the label set of about the largest "
                        "expected Dice; no thresholds tuned), thresholds (the run's tuned per-class thresholds), "
                        "or auto: expected-dice for a bce-trained classifier, thresholds for focal or asl "
                        "(default %(default)s)")
    p.add_argument("--void-band", type=int, default=1, metavar="PIXELS",
                   help="set mask pixels within this many pixels of another label to background, as VOC's "
                        "truth marks object boundaries void (read as background by the competition's Dice); "
                        "0: off (default %(default)s)")
    p.add_argument("--score", action="store_true", help="score the predictions (val split, or test with labels)")
    p.add_argument("--truth", help="solution CSV to score against (default: found or built)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    a = p.parse_args(argv)
    items = lambda s: tuple(x for x in s.split(",") if x and x != "none")  # noqa: E731
    try:
        scales = tuple(float(s) for s in a.scales.split(","))
    except ValueError:
        raise common.UserError(f"--scales must be numbers separated by commas, not {a.scales!r}") from None
    run(a.data, a.cls, a.seg, a.out, a.split, items(a.tta), scales, items(a.fuse), a.drop_below, a.add_area,
        a.min_area, a.score, a.truth, a.batch_size, a.overwrite, a.cls_decision, a.void_band)


if __name__ == "__main__":
    if common.in_notebook(globals()):  # pasted into a notebook cell: the cells after it can `import predict`
        sys.modules["predict"] = common.cell_module("predict", globals())
    else:
        sys.exit(common.run_cli(main))
