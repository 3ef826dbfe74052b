"""Benchmark: do the validation numbers predict unseen photos? (issue 16, item 1)

Holds out a stratified fifth of ../shared/proxy's labelled training photos, trains the bench's
MobileNetV2 classifier (and U-Net) on the rest exactly as bench/train_proxy.py does (their own
internal validation split, threshold tuning and checkpoint choice, the same time limits), then
scores the held-out photos, which no training, tuning or checkpoint choice saw, with the
competition's rule, beside the estimates the runs report on their validation split.

    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py            # both tasks, ~90 min
    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py --only cls # classifier, ~30 min

The held-out photos are given to predict.py as the test split of a derived VOC-layout folder
(runs/bench_holdout/data: links to the proxy's files, masks only for the training part, and a
solution.csv built from the held-out masks). Writes runs/bench_holdout/ and
bench/results/holdout_proxy.json, and prints a table.
"""

import argparse
import os
import platform
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import common  # noqa: E402,I001
import cls_train  # noqa: E402
import predict  # noqa: E402
import train_proxy  # noqa: E402

HOLDOUT_FRACTION, HOLDOUT_SEED = 0.2, 1  # seed 1: a different draw from the runs' own validation split (seed 0)


def make_holdout_data(proxy, root):
    """A VOC-layout folder at `root` whose training split is the proxy's labelled photos minus a
    stratified HOLDOUT_FRACTION (`common.train_val_split`) and whose test split is that held-out
    part (no masks there, so every tool treats it as unlabelled), plus root/solution.csv with the
    held-out truth. Files are symbolic links to the proxy's; `root` is rebuilt from scratch.
    Returns the held-out photos' labels (N, 20) int8."""
    split = common.load_split(proxy, "train")
    keep, held = common.train_val_split(split.labels, HOLDOUT_FRACTION, HOLDOUT_SEED)
    shutil.rmtree(root, ignore_errors=True)  # no mask link left from another draw may leak a held-out photo
    sets = os.path.join(root, "ImageSets", "Segmentation")
    masks_dir = os.path.join(root, "SegmentationClass")
    os.makedirs(sets)
    os.makedirs(masks_dir)
    os.symlink(os.path.abspath(os.path.join(split.root, "JPEGImages")), os.path.join(root, "JPEGImages"))
    for i in keep:
        os.symlink(os.path.abspath(split.mask_paths[i]), os.path.join(masks_dir, f"{split.ids[i]}.png"))
    for name, idx in (("train", keep), ("test", held)):
        common.atomic_write(os.path.join(sets, f"{name}.txt"),
                            lambda f, idx=idx: f.write("".join(f"{split.ids[i]}\n" for i in idx)))
    held_split = split.subset(held)
    masks = [common.read_example(held_split, k)[1] for k in range(len(held_split))]
    common.write_submission(os.path.join(root, "solution.csv"), held_split.ids, held_split.labels, masks,
                            shapes=True)
    print(f"held out {len(held)} of {len(split)} labelled photos; training on {len(keep)}", flush=True)
    return held_split.labels


def classifier_alone(run, data, truth_labels):
    """Competition Dice of the classifier's own labels (its tuned thresholds, no fusion with the
    segmenter) on the held-out photos (the derived folder's test split)."""
    model, config, thresholds = cls_train.load_classifier(run)
    test = common.load_split(data, "test")
    probs = cls_train.predict_probs(model, test, common.load_examples(test, masks=False), config)
    return common.classification_dice(cls_train.decide(probs, thresholds), truth_labels)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "proxy"))
    p.add_argument("--only", choices=["cls", "both"], default="both",
                   help="cls: train and score the classifier only (default: both tasks)")
    args = p.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    print(f"machine: {machine}; data {args.data}", flush=True)
    root = "runs/bench_holdout"
    data = os.path.join(root, "data")
    held_labels = make_holdout_data(args.data, data)
    t = time.time()
    result = dict(machine=machine, holdout_fraction=HOLDOUT_FRACTION, holdout_seed=HOLDOUT_SEED,
                  held_out_images=len(held_labels))
    runs = {"cls": "cls_mobilenetv2"} if args.only == "cls" else {"cls": "cls_mobilenetv2",
                                                                   "seg": "seg_mobilenetv2_unet"}
    for task, name in runs.items():
        script, kwargs, minutes = train_proxy.RUNS[name]
        script.train(data=data, out=os.path.join(root, task), overwrite=True, time_limit=minutes, **kwargs)
        result[f"{task}_arguments"], result[f"{task}_time_limit_minutes"] = kwargs, minutes
    cls_metrics = common.read_json(os.path.join(root, "cls", "metrics.json"))
    result["classification"] = dict(
        val_dice_tuned=cls_metrics["val_dice_tuned"], val_dice_out_of_fold=cls_metrics["val_dice_out_of_fold"],
        val_dice_out_of_fold_95ci=cls_metrics["val_dice_out_of_fold_95ci"],
        held_out_dice_alone=classifier_alone(os.path.join(root, "cls"), data, held_labels))
    if "seg" in runs:  # the product's numbers: predict.py with its defaults, on val and on the held-out photos
        for split in ("val", "test"):
            scores, _ = predict.run(data=data, cls=os.path.join(root, "cls"), seg=os.path.join(root, "seg"),
                                    out=os.path.join(root, f"predict_{split}"), split=split, score=True,
                                    overwrite=True)
            result["val" if split == "val" else "held_out"] = scores
    result["wall_minutes"] = round((time.time() - t) / 60, 1)
    common.write_json(os.path.join(HERE, "results", "holdout_proxy.json"), result)
    c = result["classification"]
    lo, hi = c["val_dice_out_of_fold_95ci"]
    print("\n| estimate | classification | segmentation | joint |\n|---|---|---|---|")
    print(f"| validation, tuned thresholds (classifier alone) | {c['val_dice_tuned']:.3f} | | |")
    print(f"| validation, out of fold [95% CI] (classifier alone) | {c['val_dice_out_of_fold']:.3f} "
          f"[{lo:.3f}, {hi:.3f}] | | |")
    print(f"| held-out photos, classifier alone | {c['held_out_dice_alone']:.3f} | | |")
    for key, what in (("val", "validation, predict.py defaults"), ("held_out", "held-out photos, predict.py defaults")):
        if key in result:
            s = result[key]
            print(f"| {what} | {s['classification']:.3f} | {s['segmentation']:.3f} | {s['score']:.3f} |")


if __name__ == "__main__":
    main()
