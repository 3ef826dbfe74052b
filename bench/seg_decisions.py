"""Probe (issue 16): pixel decision rules for the segmentation half of the competition score,
without retraining. For one held-out draw of bench/holdout_proxy.py (its classifier, segmenter and
held-out photos), on the validation split both runs held out and on the held-out photos:

- argmax: predict.py's rule (most probable class among those the `drop` fusion rule allows);
- foreground threshold t: the most probable object class where its probability is at least t,
  background elsewhere (Dice rewards a pixel whose class is right with probability above about
  half the image's Dice, Lipton et al. 2014, "Optimal thresholding of classifiers to maximize F1");
- plug-in: per image, the k most probable object pixels with k maximising the expected Dice
  2 sum(p of the top k) / (k + the expected object pixels, the sum of the allowed object classes'
  probabilities);
- void band r: argmax, then every pixel within r pixels (square window) of a different label set
  to background, since the competition's Dice counts a class predicted on the truth's void band
  (VOC style, about 5 pixels wide at every object boundary) against the prediction;
- classifier weight a: argmax after each object class's probability is multiplied by the
  classifier's probability of that class to the power a (background unchanged): a soft form of
  predict.py's fusion, where `drop` removes a class below 0.05 and `agree` one the classifier's
  labels leave out; a = 0 is argmax.

    KERAS_HOME=../shared/keras_home python bench/seg_decisions.py --seed 1
    KERAS_HOME=../shared/keras_home python bench/seg_decisions.py --seed 1 --train seg_finetune_block_3_lr_0.1

Writes bench/results/seg_decisions.json (one entry per draw) and prints a table.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import cls_train  # noqa: E402,I001
import common  # noqa: E402
import holdout_proxy  # noqa: E402
import predict  # noqa: E402
import seg_train  # noqa: E402
import tensorflow as tf  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
BANDS = (1, 2, 3)
CLASSIFIER_WEIGHTS = (0.25, 0.5, 1.0, 2.0)


def truth_masks(data_split, split, solution):
    """Label maps (H, W) uint8 of a split: masks for the validation split; for the held-out photos
    (no masks in the draw's folder) decoded from the draw's solution.csv (void reads as background,
    which the competition's Dice treats the same way)."""
    if split == "val":
        return [common.read_example(data_split, i)[1] for i in range(len(data_split))]
    rows = {r["Id"]: r for r in common.read_submission(solution)}
    masks = []
    for i in data_split.ids:
        row = rows[f"{i}_segmentation"]
        stack = common.rle_decode(row["Predicted"], tuple(int(v) for v in row["Shape"].split("x")))
        masks.append((stack * np.arange(1, common.NUM_CLASSES + 1)[:, None, None]).max(0).astype(np.uint8))
    return masks


def decisions(probs, cls_probs):
    """{rule name: label map} for one image's probabilities (H, W, 21) at its original size and its
    classifier probabilities (20,)."""
    objects = probs[..., 1:]
    best, p_best = objects.argmax(-1) + 1, objects.max(-1)
    argmax = probs.argmax(-1).astype(np.uint8)
    out = {"argmax": argmax}
    for t in THRESHOLDS:
        out[f"threshold {t:g}"] = np.where(p_best >= t, best, 0).astype(np.uint8)
    ranked = np.sort(p_best.ravel())[::-1]
    expected = 2 * np.cumsum(ranked) / (np.arange(1, ranked.size + 1) + objects.sum())
    out["plug-in"] = np.where(p_best >= ranked[expected.argmax()], best, 0).astype(np.uint8)
    for r in BANDS:
        out[f"void band {r}"] = predict.void_band(argmax, r)
    for a in CLASSIFIER_WEIGHTS:
        out[f"classifier weight {a:g}"] = (probs * np.concatenate([[1.0], cls_probs ** a])).argmax(-1).astype(np.uint8)
    return out


def score_split(root, split):
    """Mean segmentation Dice of every rule on one split of a draw."""
    cls_model, cls_config, _ = cls_train.load_classifier(os.path.join(root, "cls"))
    seg_model, seg_config = common.load_run(os.path.join(root, "seg"), "segmentation")
    data_split = predict.pick_split(os.path.join(root, "data"), split, cls_config, seg_config)
    examples = common.load_examples(data_split, masks=False)
    images = [im for im, _ in examples]
    cls_probs = cls_train.predict_probs(cls_model, data_split, examples, cls_config)
    truth = truth_masks(data_split, split, os.path.join(root, "data", "solution.csv"))
    dice = {}
    seg_probs = seg_train.segment(seg_model, images, seg_config["img_size"], (1.0,), True)  # predict.py's TTA
    for i, p in enumerate(seg_probs):
        allowed = np.concatenate([[True], cls_probs[i] >= 0.05])  # predict.py's default fusion, `drop`
        up = tf.image.resize(np.where(allowed, p, 0).astype(np.float32), truth[i].shape).numpy()
        for name, mask in decisions(up, cls_probs[i]).items():
            dice.setdefault(name, []).append(common.segmentation_dice(mask, truth[i]))
    return {name: float(np.mean(v)) for name, v in dice.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1, help="the held-out draw (default %(default)s)")
    p.add_argument("--train", choices=[k for k, (task, _) in holdout_proxy.TRAIN_VARIANTS.items() if task == "seg"],
                   help="the draw of this segmenter change of holdout_proxy.py instead of the plain draw")
    args = p.parse_args()
    root = holdout_proxy.draw_root(args.seed, args.train)
    path = os.path.join(HERE, "results", "seg_decisions.json")
    results = common.read_json(path) if os.path.isfile(path) else {}
    results[holdout_proxy.draw_key(args.seed, args.train)] = {split: score_split(root, split)
                                                              for split in ("val", "test")}
    common.write_json(path, results)
    print("\n| draw | rule | validation | held-out photos |\n|---|---|---|---|")
    for draw, r in results.items():
        for name in r["val"]:
            print(f"| {draw} | {name} | {r['val'][name]:.4f} | {r['test'][name]:.4f} |")


if __name__ == "__main__":
    main()
