"""The whole job in one command: check the data, train a classifier and a segmenter, train an
attack generator against the classifier, predict the test split, write submission.csv, score it
when labels exist, and write summary.md linking every figure.

    python run_all.py --data demo                  # about 10 minutes on a 2-core CPU
    python run_all.py --data DIR --transfer --out runs/full   # MobileNetV2 models, full sizes

Sizes and epochs default to a quick run (scratch models at small sizes); --transfer switches to
the MobileNetV2 models at their default sizes and epochs (ImageNet weights: downloaded by Keras,
or offline from $KERAS_HOME/models).
"""

import argparse
import os
import sys
import time

import common  # noqa: I001  (first: it quiets TensorFlow's start-up logging before Keras loads it)
import attack
import cls_train
import predict
import seg_train

QUICK = {  # scratch models sized to finish the demo in minutes on a laptop CPU
    "cls": dict(model="scratch", img_size=64, epochs=20, width=16, batch_size=16, lr=3e-3),
    "seg": dict(model="unet", img_size=96, epochs=15, width=16, batch_size=8),
    "attack": dict(goal="cls_targeted", eps=8.0, epochs=6, lr=3e-3),
}
TRANSFER = {
    "cls": dict(model="mobilenetv2"),
    "seg": dict(model="mobilenetv2_unet"),
    "attack": dict(goal="cls_targeted", eps=8.0, epochs=10, lr=1e-3),
}


def run(data="demo", out="runs/all", transfer=False, overwrite=False, verbose=2, plan=None):
    """Run every stage into `out`: data check, classifier, segmenter, attack generator against the
    classifier, prediction of the test split (scored when it has labels) and of the validation
    split (always scored), then summary.md. Each stage writes a subfolder: data_check, cls, seg,
    attack, predict, predict_val.

    data: dataset folder, 'demo' (default; the built-in synthetic set) or None (the competition
        data under /kaggle/input).
    transfer: use TRANSFER (MobileNetV2 models at their default sizes and epochs) instead of
        QUICK (small scratch models; about 8 minutes on the demo with a 2-core CPU). Default False.
    overwrite: replace an existing `out` (put back if the run fails before cls/metrics.json exists).
    verbose: Keras verbosity of the training stages (0 silent, 1 progress bar, 2 one line per
        epoch; default 2).
    plan: replaces QUICK / TRANSFER (then `transfer` is ignored): a dict whose 'cls', 'seg' and
        'attack' entries are keyword arguments of cls_train.train, seg_train.train and attack.run.

    Returns the summary dict: 'cls', 'seg', 'attack' (each stage's metrics.json), 'test' (the
    test split's scores dict, None when it has no images or no solution.csv), 'val' (the
    validation split's scores dict) and 'times' (seconds per stage and 'total').
    Raises common.UserError for an existing `out` without overwrite, or whatever a stage raises
    (bad data, a bad plan entry, ...), naming the problem in one line.
    """
    with common.run_folder(out, overwrite=overwrite, progress=os.path.join("cls", "metrics.json")):
        plan = plan or (TRANSFER if transfer else QUICK)
        t0 = time.time()
        times = {}

        def stage(name, fn, *args, **kwargs):
            print(f"\n=== {name} ===", flush=True)
            t = time.time()
            result = fn(*args, **kwargs)
            times[name] = time.time() - t
            return result

        stage("data check", common.dataset_summary, data, os.path.join(out, "data_check"))
        root, _ = common.resolve_data(data)
        path = lambda name: os.path.join(out, name)  # noqa: E731
        stage("classifier", cls_train.train, data=root, out=path("cls"), verbose=verbose, **plan["cls"])
        stage("segmenter", seg_train.train, data=root, out=path("seg"), verbose=verbose, **plan["seg"])
        stage("attack", attack.run, target=path("cls"), out=path("attack"), verbose=verbose, **plan["attack"])
        test = common.load_split(root, "test")
        has_truth = os.path.isfile(os.path.join(root, "solution.csv"))
        scores, submission = stage("predict test", predict.run, root, path("cls"), path("seg"), path("predict"),
                                   score=has_truth) if len(test) else (None, None)
        val_scores, _ = stage("predict validation", predict.run, root, path("cls"), path("seg"), path("predict_val"),
                              split="val", score=True)
        times["total"] = time.time() - t0
        summary = write_summary(out, root, scores, val_scores, submission, times)
        print(f"\nall done in {times['total'] / 60:.1f} min: {os.path.join(out, 'summary.md')}", flush=True)
        return summary


def num(x, spec=".3f"):
    """A number read from a metrics JSON, formatted; 'n/a' for null (undefined, e.g. no validation
    image of any class)."""
    return "n/a" if x is None else format(x, spec)


def write_summary(out, root, scores, val_scores, submission, times):
    """summary.md: the numbers of every stage and links to every figure."""
    cls = common.read_json(os.path.join(out, "cls", "metrics.json"))
    seg = common.read_json(os.path.join(out, "seg", "metrics.json"))
    att = common.read_json(os.path.join(out, "attack", "metrics.json"))
    lines = [f"# Run summary: {root}", "",
             f"Total time {times['total'] / 60:.1f} min (" + ", ".join(
                 f"{k} {v:.0f} s" for k, v in times.items() if k != "total") + ").", "",
             "## Numbers", "", "| what | value |", "|---|---|",
             f"| classifier val mAP | {num(cls['val_map'])} |",
             f"| classifier val Dice (tuned thresholds) | {num(cls['val_dice_tuned'])} "
             f"(constant baseline {num(cls['baseline_dice'])}) |",
             f"| segmenter val mIoU | {num(seg['val_miou'])} |",
             f"| segmenter val Dice (segmentation half) | {num(seg['val_dice'])} |"]
    for name, s in (("validation split", val_scores), ("test split", scores)):
        if s:
            lines.append(f"| submission score, {name} | classification {s['classification']:.3f}, "
                         f"segmentation {s['segmentation']:.3f}, joint {s['score']:.3f} |")
    for method, r in att["held_out"].items():
        lo, hi = r["success_95ci"]
        lines.append(f"| attack `{att['goal']}` -> {att['target_class'] or 'lose labels'}, {method} (held-out) | "
                     f"success {num(r['success_rate'], '.1%')} (95% CI {num(lo, '.0%')}-{num(hi, '.0%')}), "
                     f"L-inf max {num(r['linf_max_255'], '.1f')}/255, PSNR {num(r['psnr_mean'], '.1f')} dB, "
                     f"{num(r['ms_per_image'], '.0f')} ms/image, target passes fwd/bwd "
                     f"{r['target_forward_per_image']}/{r['target_backward_per_image']} |")
    if submission:
        lines += ["", f"Submission: [{os.path.relpath(submission, out)}]({os.path.relpath(submission, out)})"]
    lines += ["", "## Figures", ""]
    figures = [("data samples", "data_check/samples.png"), ("classifier learning curves", "cls/curves.png"),
               ("classifier good and bad validation cases", "cls/gallery.png"),
               ("segmenter learning curves", "seg/curves.png"),
               ("segmenter good and bad validation cases", "seg/gallery.png"),
               ("attack examples (held-out images)", "attack/panel.png"),
               ("test predictions", "predict/gallery.png"), ("validation predictions", "predict_val/gallery.png")]
    for title, rel in figures:
        if os.path.isfile(os.path.join(out, rel)):
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    common.atomic_write(os.path.join(out, "summary.md"), lambda f: f.write("\n".join(lines) + "\n"))
    return {"cls": cls, "seg": seg, "attack": att, "test": scores, "val": val_scores, "times": times}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo", help="dataset folder or 'demo' (default %(default)s)")
    p.add_argument("--out", default="runs/all", help="run folder (default %(default)s)")
    p.add_argument("--transfer", action="store_true",
                   help="MobileNetV2 models at full size instead of quick scratch models")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    run(args.data, args.out, args.transfer, args.overwrite)


if __name__ == "__main__":
    if common.in_notebook(globals()):  # pasted into a notebook cell: the cells after it can `import run_all`
        sys.modules["run_all"] = common.cell_module("run_all", globals())
    else:
        sys.exit(common.run_cli(main))
