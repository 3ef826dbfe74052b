"""Benchmark: do the validation numbers predict unseen photos? (issue 16, item 1)

Holds out a stratified fifth of ../shared/proxy's labelled training photos, trains the bench's
MobileNetV2 classifier (and U-Net) on the rest exactly as bench/train_proxy.py does (their own
internal validation split, threshold tuning and checkpoint choice, the same time limits), then
scores the held-out photos, which no training, tuning or checkpoint choice saw, with the
competition's rule, beside the estimates the runs report on their validation split.

    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py              # both tasks, one draw
    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py --only cls --seeds 1 2 3 4 5
    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py --only seg   # the segmenter for draw 1
    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py --variants   # predict.py options, draw 1
    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py --only cls --train asl --seeds 1 2 3
    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py --only seg --train seg_finetune_block_3_lr_0.1 \
        --with-cls img_288 --seeds 1 2   # the draws' segmenters with the 288-px classifiers
    KERAS_HOME=../shared/keras_home python bench/holdout_proxy.py --only seg --train seg_finetune_block_3_lr_0.1 \
        --with-cls img_288 --option "TTA seg-flip,scales" --seeds 1 2   # and multi-scale TTA

`--train NAME` trains with one change of TRAIN_VARIANTS instead (run folder and results key
seed<N>_<NAME>; a segmenter change reuses the draw's classifier) and the report pairs it with
its baseline's draws (BASELINES) on the same seeds, scored with the same void band (and, for a
segmenter, the per-photo paired differences' standard error where both run folders are here).
`--with-cls NAME` scores finished segmenter draws with the same draw's classifier of a classifier
change, trained before: the joint score of two changes measured apart; with `--option NAME`, with
one of predict.py's options (VARIANTS) instead of its defaults, paired photo by photo with the
defaults in the report. Each draw trains
under the bench's time limits (classifier 30 min, finished in about 4 here; segmenter 58 min).
The held-out photos are given to predict.py as the test split of a derived VOC-layout folder
(runs/bench_holdout_seed<N>/data: links to the proxy's files, masks only for the training part,
and a solution.csv built from the held-out masks). Writes runs/bench_holdout_seed<N>[_<NAME>]/
and bench/results/holdout_proxy.json (one entry per draw), and prints a table.
"""

import argparse
import inspect
import os
import re
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import common  # noqa: E402,I001
import cls_train  # noqa: E402
import predict  # noqa: E402
import train_proxy  # noqa: E402

HOLDOUT_FRACTION = 0.2
# train_proxy.RUNS entry of each task. A plain draw's classifier is trained at 224 px (CLS_224), the bench's
# classifier until 2026-12-03 and the baseline of every classifier change; the img_288 draws are the bench's
# classifier since then
BENCH_RUNS = {"cls": "cls_mobilenetv2", "seg": "seg_mobilenetv2_unet"}


# training changes, one at a time from the bench's arguments (issue 16, item 2): name -> (task, arguments).
# The segmenter changes spell out every argument the bench's segmenter has changed since, so that each
# stays what was measured: TOP_STAGE is its fine-tuning until 2026-12-02, BLOCK_3 its arguments since then; the
# classifier changes were measured at 224 px, the bench's classifier until 2026-12-03 (CLS_224)
CLS_224 = dict(img_size=224)
TOP_STAGE = dict(finetune_from=None, finetune_lr_factor=0.25)
BLOCK_3 = dict(img_size=384, crop_size=256, finetune_from="block_3_expand", finetune_lr_factor=0.1)
TRAIN_VARIANTS = {"asl": ("cls", dict(CLS_224, loss="asl")), "focal": ("cls", dict(CLS_224, loss="focal")),
                  "no_pos_weight": ("cls", dict(CLS_224, pos_weight=False)),
                  "finetune_lr_0.3": ("cls", dict(CLS_224, finetune_lr_factor=0.3)),
                  "img_288": ("cls", dict(img_size=288)),  # the bench's classifier since 2026-12-03
                  "epochs_30": ("cls", dict(CLS_224, epochs=30)), "frozen_10": ("cls", dict(CLS_224, frozen_epochs=10)),
                  "finetune_block_3": ("cls", dict(CLS_224, finetune_from="block_3_expand")),
                  "seg_epochs_50": ("seg", dict(img_size=256, crop_size=256, epochs=50, **TOP_STAGE)),
                  # the bench's segmenter from 2026-12-01, with full-size training crops (its crops until 2026-12-02)
                  "seg_img_384": ("seg", dict(img_size=384, crop_size=384, **TOP_STAGE)),
                  "seg_crop_256": ("seg", dict(img_size=384, crop_size=256, **TOP_STAGE)),  # the bench's, 2026-12-02
                  "seg_img_448_crop_256": ("seg", dict(img_size=448, crop_size=256, **TOP_STAGE)),
                  # fine-tuning from the stride-8 blocks up instead of the top stage (same step time here): at
                  # the top stage's rate (0.25 x lr, 5e-4) it lost 0.1-0.2 validation Dice at once (stopped
                  # after 11 epochs); at 0.1 x lr (2e-4) the bench's segmenter since 2026-12-02
                  "seg_finetune_block_3": ("seg", dict(TOP_STAGE, img_size=384, crop_size=256,
                                                       finetune_from="block_3_expand")),
                  "seg_finetune_block_3_lr_0.1": ("seg", BLOCK_3),
                  # its control: the top stage only, at 0.1 x lr
                  "seg_top_stage_lr_0.1": ("seg", dict(img_size=384, crop_size=256, finetune_from=None,
                                                        finetune_lr_factor=0.1)),
                  # a validation split of 5% (about 30 of the draw's 604 photos) instead of 20% (121): a fifth
                  # more training photos, checkpoint choice on fewer
                  "val_0.05": ("cls", dict(CLS_224, val_fraction=0.05)),
                  "seg_val_0.05": ("seg", dict(BLOCK_3, val_fraction=0.05)),
                  # no change: the bench's segmenter retrained, a control for changes measured on another CPU than
                  # their baseline (on the AVX-512 EPYC it reproduced the AVX2 run to every stored digit)
                  "seg_control": ("seg", BLOCK_3),
                  # image pooling (DeepLabv3) added to the decoder's deepest features: the whole image's content
                  "seg_global_context": ("seg", dict(BLOCK_3, global_context=True)),
                  # the whole backbone fine-tuned (from its first convolution, the stride-2 and -4 blocks too)
                  "seg_finetune_conv1": ("seg", dict(BLOCK_3, finetune_from="Conv1")),
                  # copy-paste augmentation: half the training crops receive another crop's objects
                  "seg_copy_paste_0.5": ("seg", dict(BLOCK_3, copy_paste=0.5))}


# what each training change is compared with: the variant whose arguments it changes ('' the plain draws;
# unlisted: '')
BASELINES = {"seg_crop_256": "seg_img_384", "seg_img_448_crop_256": "seg_crop_256",
             "seg_finetune_block_3": "seg_crop_256", "seg_finetune_block_3_lr_0.1": "seg_crop_256",
             "seg_top_stage_lr_0.1": "seg_crop_256", "seg_val_0.05": "seg_finetune_block_3_lr_0.1",
             "seg_global_context": "seg_finetune_block_3_lr_0.1", "seg_control": "seg_finetune_block_3_lr_0.1",
             "seg_finetune_conv1": "seg_finetune_block_3_lr_0.1", "seg_copy_paste_0.5": "seg_finetune_block_3_lr_0.1"}
# predict.py's void band when a result was scored (absent: 0, the results from before it existed)
VOID_BAND = inspect.signature(predict.run).parameters["void_band_width"].default


def draw_key(seed, variant=None):
    """The draw's name in the results and its run folder: seed<N>[_<training variant>]."""
    return f"seed{seed}" + (f"_{variant}" if variant else "")


def draw_root(seed, variant=None):
    """The run folder of one draw: data/, cls/, seg/ and predict.py's outputs."""
    return f"runs/bench_holdout_{draw_key(seed, variant)}"


def make_holdout_data(proxy, root, seed):
    """A VOC-layout folder at `root` whose training split is the proxy's labelled photos minus a
    stratified HOLDOUT_FRACTION (`common.train_val_split`) and whose test split is that held-out
    part (no masks there, so every tool treats it as unlabelled), plus root/solution.csv with the
    held-out truth; `seed` picks the draw. Files are symbolic links to the proxy's; `root` is rebuilt from scratch.
    Returns the held-out photos' labels (N, 20) int8."""
    split = common.load_split(proxy, "train")
    keep, held = common.train_val_split(split.labels, HOLDOUT_FRACTION, seed)
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


def classifier_probs(run, data):
    """(validation split, validation probs (N, 20), held-out probs (M, 20), tuned thresholds (20,))
    of one classification run on a draw's folder `data` (its test split is the held-out photos)."""
    model, config, thresholds = cls_train.load_classifier(run)
    val = predict.pick_split(data, "val", config, config)
    val_probs, held_probs = (cls_train.predict_probs(model, split, common.load_examples(split, masks=False), config)
                             for split in (val, common.load_split(data, "test")))
    return val, val_probs, held_probs, thresholds


def classifier_alone(run, data, truth_labels):
    """Competition Dice of the classifier's own labels (no fusion with the segmenter) on the
    held-out photos (the derived folder's test split), by its tuned thresholds and by the
    expected-Dice rule (predict.py's default), and of that rule on the run's validation split
    (computed here: runs from before the rule have no such metric). Returns (held-out thresholds
    Dice, held-out expected-Dice Dice, validation expected-Dice Dice)."""
    val, val_probs, held_probs, thresholds = classifier_probs(run, data)
    return (common.classification_dice(cls_train.decide(held_probs, thresholds), truth_labels),
            common.classification_dice(cls_train.expected_dice_labels(held_probs), truth_labels),
            common.classification_dice(cls_train.expected_dice_labels(val_probs), val.labels > 0))


def predict_scores(root, name, cls="cls", **options):
    """predict.py on the validation split and on the held-out photos (the derived folder's test
    split) of a draw with both runs (the classifier in root/`cls`), with `options` (predict.run's
    keyword arguments) over its defaults; output folders root/predict_<name>_<split>. Returns
    {"val": scores, "held_out": scores}."""
    out = {}
    for split, key in (("val", "val"), ("test", "held_out")):
        out[key], _ = predict.run(data=os.path.join(root, "data"), cls=os.path.join(root, cls),
                                  seg=os.path.join(root, "seg"), out=os.path.join(root, f"predict_{name}_{split}"),
                                  split=split, score=True, overwrite=True, **options)
    return out


def held_out_draw(proxy, seed, only, earlier, variant=None):
    """Train on one draw (held-out fifth chosen by `seed`) and score it; `earlier`: this draw's
    saved result (with only='seg', the classifier run it reuses); `variant`: a TRAIN_VARIANTS
    change of one task's arguments (a segmenter variant reuses the classifier of the draw's
    plain run, copied). Returns the result dict."""
    machine = common.machine()
    root = draw_root(seed, variant)
    base_cls = os.path.join(draw_root(seed), "cls")
    if only == "seg" and not (os.path.isfile(os.path.join(base_cls, "metrics.json")) and "cls_arguments" in earlier):
        sys.exit(f"error: --only seg needs the classifier of an earlier --only cls run on draw {seed} ({base_cls})")
    if variant and only == "seg":  # the draw's current classifier, copied afresh
        shutil.rmtree(os.path.join(root, "cls"), ignore_errors=True)
        shutil.copytree(base_cls, os.path.join(root, "cls"))
    data = os.path.join(root, "data")
    held_labels = make_holdout_data(proxy, data, seed)
    t = time.time()
    result = dict(machine=machine, holdout_fraction=HOLDOUT_FRACTION, holdout_seed=seed,
                  held_out_images=len(held_labels), train_variant=variant)
    if only == "seg":  # the classifier of the earlier --only cls run on this draw stays
        result.update({k: earlier[k] for k in ("cls_arguments", "cls_time_limit_minutes")})
    for task in {"cls": ["cls"], "seg": ["seg"], "both": ["cls", "seg"]}[only]:
        script, kwargs, minutes = train_proxy.RUNS[BENCH_RUNS[task]]
        # a plain draw's classifier stays at 224 px, the baseline of the classifier changes (CLS_224)
        kwargs = dict(kwargs, **(TRAIN_VARIANTS[variant][1] if variant else CLS_224 if task == "cls" else {}))
        script.train(data=data, out=os.path.join(root, task), overwrite=True, time_limit=minutes, **kwargs)
        result[f"{task}_arguments"], result[f"{task}_time_limit_minutes"] = kwargs, minutes
    for task in ["cls"] + (["seg"] if only != "cls" else []):  # did each schedule fit its time limit?
        metrics = common.read_json(os.path.join(root, task, "metrics.json"))
        keys = ("epochs_trained", "epochs_planned", "stopped_by_time_limit", "best_epoch")
        keys += ("val_dice", "val_miou") if task == "seg" else ()  # the training script's validation numbers
        result[f"{task}_epochs"] = {k: metrics.get(k) for k in keys}
    cls_metrics = common.read_json(os.path.join(root, "cls", "metrics.json"))
    alone, alone_expected, val_expected = classifier_alone(os.path.join(root, "cls"), data, held_labels)
    result["classification"] = dict(
        val_dice_tuned=cls_metrics["val_dice_tuned"], val_dice_out_of_fold=cls_metrics["val_dice_out_of_fold"],
        val_dice_out_of_fold_95ci=cls_metrics["val_dice_out_of_fold_95ci"],
        val_dice_expected_dice=val_expected, held_out_dice_alone=alone,
        held_out_dice_alone_expected_dice=alone_expected)
    if only != "cls":  # the product's numbers: predict.py with its defaults, on val and on the held-out photos
        result.update(predict_scores(root, "defaults"), void_band=VOID_BAND)
    result["wall_minutes"] = round((time.time() - t) / 60, 1)
    return result


# predict.py's inference options, one change at a time from its defaults (expected-Dice labels,
# seg-flip TTA, drop fusion; before 2026-12-01 the tuned thresholds decided the labels)
VARIANTS = {"defaults": {}, "cls-decision thresholds": dict(cls_decision="thresholds"),
            "no fusion": dict(fuse_rules=()), "fusion drop,agree": dict(fuse_rules=("drop", "agree")),
            "fusion drop,add": dict(fuse_rules=("drop", "add")), "no TTA": dict(tta=()),
            "TTA seg-flip,scales": dict(tta=("seg-flip", "scales")),
            "TTA seg-flip,scales 1,1.25,1.5": dict(tta=("seg-flip", "scales"), scales=(1.0, 1.25, 1.5)),
            "TTA flip (both tasks)": dict(tta=("flip",)),
            "no void band": dict(void_band_width=0)}


def predict_variants(seed):
    """Score each of VARIANTS on the validation split and the held-out photos of a draw whose two
    runs exist: do the choices made on validation images hold on unseen ones?
    Returns {variant: {"val": scores, "held_out": scores}}."""
    out = {}
    for name, options in VARIANTS.items():
        out[name] = predict_scores(draw_root(seed), "variant", **options)
        print(f"{name}: " + "; ".join(f"{k} {v['classification']:.3f} / {v['segmentation']:.3f} / {v['score']:.3f}"
                                      for k, v in out[name].items()), flush=True)
    return out


def with_classifier(seed, variant, cls_variant, option=None):
    """predict.py on a finished draw whose segmenter is `variant`'s (None: the plain draw's), with
    the classifier of the same draw trained with the classifier change `cls_variant` instead of
    the plain one (copied to cls_<cls_variant>/): the joint score of a segmenter and a classifier
    change measured apart; `option`: a VARIANTS name, predict.py's defaults when None. Output
    folders predict_<option slug or defaults>_cls_<cls_variant>_<split>. Returns {"val": scores,
    "held_out": scores, "void_band": band}."""
    root, source = draw_root(seed, variant), os.path.join(draw_root(seed, cls_variant), "cls")
    if not os.path.isfile(os.path.join(source, "metrics.json")):
        sys.exit(f"error: no classifier of --train {cls_variant} on draw {seed} ({source})")
    name = f"cls_{cls_variant}"
    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    shutil.copytree(source, os.path.join(root, name))
    out = predict_scores(root, f"{option_slug(option)}_{name}", cls=name, **VARIANTS[option or "defaults"])
    print(f"draw {seed}, classifier {cls_variant}, {option or 'defaults'}: " + "; ".join(
        f"{k} {v['classification']:.3f} / {v['segmentation']:.3f} / {v['score']:.3f}" for k, v in out.items()),
        flush=True)
    return dict(out, void_band=VOID_BAND)


def option_slug(option):
    """The folder-name form of a VARIANTS name ('TTA seg-flip,scales' -> 'tta_seg_flip_scales'; None: 'defaults')."""
    return re.sub(r"[^a-z0-9]+", "_", (option or "defaults").lower()).strip("_")


def segmentation_rows(folder, truth):
    """{photo id: segmentation Dice} of predict.py's submission.csv in `folder` against the
    solution.csv `truth`; None when either file is not on this machine."""
    sub = os.path.join(folder, "submission.csv")
    if not (os.path.isfile(sub) and os.path.isfile(truth)):
        return None
    pred = {r["Id"]: r["Predicted"] for r in common.read_submission(sub)}
    return {r["Id"]: common.rle_dice(pred[r["Id"]], r["Predicted"]) for r in common.read_submission(truth)
            if r["Id"].endswith("_segmentation")}


def checked_rows(folder, truth, stored):
    """segmentation_rows, or SystemExit when their mean is not the `stored` score (a stale or wrong folder)."""
    rows = segmentation_rows(folder, truth)
    if rows is not None and abs(np.mean(list(rows.values())) - stored) > 1e-9:
        sys.exit(f"error: {folder} does not score the stored {stored:.4f}")
    return rows


def paired_error(rows_a, rows_b):
    """(mean, standard error) of the per-photo differences rows_b - rows_a over the same photos."""
    d = np.array([rows_b[k] - rows_a[k] for k in rows_a])
    return d.mean(), d.std(ddof=1) / np.sqrt(len(d))


def held_out_segmentation_rows(result, band):
    """{photo id: segmentation Dice} of a draw's saved held-out submission scored with void band
    `band`: its predict_defaults_test folder, or, for a draw scored with another band, the
    predict_void_band_<band>_test folder of its re-score (made with predict.run(void_band_width=
    band) into that folder, stored as held_out_void_band_<band>), for the standard error of a
    paired difference. None when the folder is not on this machine. Raises SystemExit when the
    rows' mean is not the stored score (a stale or wrong folder)."""
    root = draw_root(result["holdout_seed"], result.get("train_variant"))
    scored = result.get("void_band", 0) == band
    folder = "predict_defaults_test" if scored else f"predict_void_band_{band}_test"
    stored = (result["held_out"] if scored else result[f"held_out_void_band_{band}"])["segmentation"]
    return checked_rows(os.path.join(root, folder), os.path.join(root, "data", "solution.csv"), stored)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "proxy"))
    p.add_argument("--only", choices=["cls", "seg", "both"], default="both",
                   help="cls: train and score the classifier only; seg: train the segmenter and score both "
                        "tasks with the classifier of an earlier --only cls run (the same draw); default: both")
    p.add_argument("--seeds", type=int, nargs="+", default=[1],
                   help="one draw of the held-out fifth per seed (default 1; the runs' own validation split "
                        "uses seed 0 on what is left)")
    p.add_argument("--variants", action="store_true",
                   help="instead of training: score predict.py's inference options (VARIANTS) on the validation "
                        "split and the held-out photos of each draw, with its two finished runs")
    p.add_argument("--train", choices=list(TRAIN_VARIANTS),
                   help="with --only of its task: train with this change of the arguments (results and run "
                        "folder seed<N>_<change>; a segmenter change reuses the draw's classifier)")
    p.add_argument("--with-cls", metavar="NAME", choices=[k for k, v in TRAIN_VARIANTS.items() if v[0] == "cls"],
                   help="instead of training: score predict.py's defaults on each draw's finished segmenter (of "
                        "--train, else the plain draw's) with the draw's classifier of --train NAME, trained "
                        "before (results: with_cls_<NAME> of the segmenter's draw)")
    p.add_argument("--option", choices=[k for k in VARIANTS if k != "defaults"],
                   help="with --with-cls: predict.py with this option of VARIANTS instead of its defaults (results: "
                        "'with_cls_<NAME>, <OPTION>'; the report pairs it photo by photo with the defaults)")
    p.add_argument("--report", action="store_true", help="only print the table of the saved results")
    args = p.parse_args()
    if args.train and (args.only != TRAIN_VARIANTS[args.train][0] or args.variants):
        sys.exit(f"error: --train {args.train} goes with --only {TRAIN_VARIANTS[args.train][0]} "
                 "(and not with --variants)")
    if args.option and not args.with_cls:
        sys.exit("error: --option goes with --with-cls")
    if args.with_cls and (args.variants or (args.train and TRAIN_VARIANTS[args.train][0] != "seg")):
        sys.exit("error: --with-cls goes with a segmenter's draws: the plain ones or --train of a segmenter change")
    print(f"data {args.data}", flush=True)
    path = os.path.join(HERE, "results", "holdout_proxy.json")
    results = common.read_json(path) if os.path.isfile(path) else {}
    for seed in [] if args.report else args.seeds:
        earlier = results.get(draw_key(seed, args.train)) or results.get(draw_key(seed), {})
        if args.with_cls:  # the finished draw of exactly this segmenter, never the plain draw in its place
            earlier = results.get(draw_key(seed, args.train), {})
        if args.variants or args.with_cls:
            if "held_out" not in earlier:
                sys.exit(f"error: --variants and --with-cls need draw {seed} trained with both tasks first")
            if args.with_cls:
                key = f"with_cls_{args.with_cls}" + (f", {args.option}" if args.option else "")
                earlier[key] = with_classifier(seed, args.train, args.with_cls, args.option)
            else:
                earlier["predict_variants"] = predict_variants(seed)
        else:
            results[draw_key(seed, args.train)] = held_out_draw(args.data, seed, args.only, earlier, args.train)
        common.write_json(path, results)
    print("\n| draw | estimate | classification | segmentation | joint |\n|---|---|---|---|---|")
    for draw, r in results.items():
        c = r["classification"]
        lo, hi = c["val_dice_out_of_fold_95ci"]
        print(f"| {draw} | validation, tuned thresholds (classifier alone) | {c['val_dice_tuned']:.3f} | | |")
        print(f"| {draw} | validation, out of fold [95% CI] (classifier alone) | {c['val_dice_out_of_fold']:.3f} "
              f"[{lo:.3f}, {hi:.3f}] | | |")
        print(f"| {draw} | held-out photos, classifier alone | {c['held_out_dice_alone']:.3f} | | |")
        if "held_out_dice_alone_expected_dice" in c:  # draws since the expected-Dice rule (bench/cls_decisions.py)
            print(f"| {draw} | validation, expected-Dice rule (classifier alone) | "
                  f"{c['val_dice_expected_dice']:.3f} | | |")
            print(f"| {draw} | held-out photos, expected-Dice rule | "
                  f"{c['held_out_dice_alone_expected_dice']:.3f} | | |")
        for key, what in (("val", "validation, predict.py defaults"),
                          ("held_out", "held-out photos, predict.py defaults")):
            if key in r:
                s = r[key]
                print(f"| {draw} | {what} | {s['classification']:.3f} | {s['segmentation']:.3f} | {s['score']:.3f} |")
        for name in (k for k in r if k.startswith("with_cls_")):
            cls_variant, option = (name[9:].split(", ", 1) + ["defaults"])[:2]
            for key, what in (("val", "validation"), ("held_out", "held-out photos")):
                s = r[name][key]
                print(f"| {draw} | {what}, predict.py {option}, classifier {cls_variant} | {s['classification']:.3f} "
                      f"| {s['segmentation']:.3f} | {s['score']:.3f} |")
    for draw, r in results.items():
        if "predict_variants" in r:
            print(f"\n{draw}: predict.py options (classification / segmentation / joint)\n"
                  "| option | validation | held-out photos |\n|---|---|---|")
            for name, v in r["predict_variants"].items():
                print(f"| {name} | " + " | ".join(f"{v[k]['classification']:.3f} / {v[k]['segmentation']:.3f} / "
                                                  f"{v[k]['score']:.3f}" for k in ("val", "held_out")) + " |")
    by_variant = {}  # training variant ('' for the bench's arguments) -> {seed: result}
    for r in results.values():
        variant = r.get("train_variant") or ""
        if variant in {"", *TRAIN_VARIANTS}:
            by_variant.setdefault(variant, {})[r["holdout_seed"]] = r
    for variant, draws in by_variant.items():  # the mean over draws: what each estimate predicts
        task = TRAIN_VARIANTS[variant][0] if variant else "cls"
        if task == "cls":
            cls = [r["classification"] for r in draws.values()]
            mean = {k: sum(c[k] for c in cls) / len(cls) for k in ("val_dice_tuned", "val_dice_out_of_fold",
                                                                    "held_out_dice_alone")}
            print(f"\n{variant or 'bench arguments'}: mean over {len(cls)} draws, classifier alone: tuned "
                  f"{mean['val_dice_tuned']:.3f}, out of fold {mean['val_dice_out_of_fold']:.3f}, held-out photos "
                  f"{mean['held_out_dice_alone']:.3f}")
        else:  # a segmenter change: the classifier is the plain draw's
            print(f"\n{variant}: {len(draws)} draws")
            for name in sorted({k for r in draws.values() for k in r if k.startswith("with_cls_")}):
                held = [r[name]["held_out"] for r in draws.values() if name in r]
                print(f"  with the classifier of {name[9:]}, mean of {len(held)} draws, held-out photos: " + " / ".join(
                    f"{sum(h[k] for h in held) / len(held):.3f}" for k in ("classification", "segmentation", "score"))
                      + " (classification / segmentation / joint)")
                if ", " in name:  # a predict.py option: paired photo by photo with the same classifier's defaults
                    cls_variant, option = name[9:].split(", ", 1)
                    for s, r in draws.items():
                        root, base = draw_root(s, variant), r.get(f"with_cls_{cls_variant}")
                        truth = os.path.join(root, "data", "solution.csv")
                        rows = [checked_rows(os.path.join(root, f"predict_{slug}_cls_{cls_variant}_test"), truth,
                                             x["held_out"]["segmentation"])
                                for slug, x in (("defaults", base), (option_slug(option), r.get(name))) if x]
                        if len(rows) == 2 and None not in rows:
                            mean, error = paired_error(*rows)
                            print(f"    draw {s}: segmentation against the defaults {mean:+.4f}, per-photo standard "
                                  f"error {error:.4f} ({len(rows[0])} photos)")
        if variant:  # paired with its baseline's draws of the same seeds, scored with the same void band
            base = by_variant.get(BASELINES.get(variant, ""), {})
            if task == "cls":  # the plain draws predate the expected-Dice rule: their pairs use the tuned thresholds
                scores = {"classifier alone, tuned thresholds": lambda r: r["classification"].get(
                    "held_out_dice_alone"),
                    "classifier alone, expected-Dice rule": lambda r: r["classification"].get(
                        "held_out_dice_alone_expected_dice")}
            else:
                band = draws[next(iter(draws))].get("void_band", 0)
                scores = {f"segmentation (void band {band})": lambda r, band=band: (
                    r.get("held_out", {}) if r.get("void_band", 0) == band else r.get(f"held_out_void_band_{band}", {})
                ).get("segmentation")}
            paired = False
            for what, score in scores.items():
                pairs = {s: (score(base[s]), score(r)) for s, r in draws.items()
                         if s in base and None not in (score(base[s]), score(r))}
                if pairs:
                    paired = True
                    print(f"  held-out {what} against {BASELINES.get(variant) or 'the plain draws'} on the same "
                          f"{len(pairs)} draws: {sum(b - a for a, b in pairs.values()) / len(pairs):+.3f} "
                          f"({', '.join(f'{a:.3f} -> {b:.3f}' for a, b in pairs.values())})")
            if task == "seg" and paired:  # per-photo paired differences, where the run folders are here
                errors = []
                for s in pairs:  # the draws both have (a segmenter has one score: pairs is its)
                    rows = [held_out_segmentation_rows(x, band) for x in (base[s], draws[s])]
                    if all(x is not None for x in rows):
                        mean, error = paired_error(*rows)  # the same photos: one draw
                        errors.append(error)
                        print(f"    draw {s}: per-photo difference {mean:+.4f}, standard error {error:.4f} "
                              f"({len(rows[0])} photos)")
                if len(errors) > 1:  # of the photos sampled, not of the training's own randomness
                    print(f"    mean over {len(errors)} draws: standard error "
                          f"{np.sqrt(np.sum(np.square(errors))) / len(errors):.4f}")
            if not paired:
                print(f"  no draw of {BASELINES.get(variant) or 'the plain draws'} to pair {variant} with")


if __name__ == "__main__":
    main()
