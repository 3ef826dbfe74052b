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
import base64
import concurrent.futures
import io
import json
import multiprocessing
import os
import sys
import time

import common  # noqa: I001  (first: it quiets TensorFlow's start-up logging before Keras loads it)
import attack
import cls_train
import predict
import seg_train

QUICK = {  # scratch models sized to finish the demo in minutes on a laptop CPU (bench/demo_plan.py)
    # classifier: the demo's classes differ by colour, so no colour jitter; 3 pooling stages (an 8 x 8
    # final map at 64 px), no dropout, no positive weights, lr 1e-3: val Dice 0.891 after 40 epochs
    # on the demo's 472 training images (0.841 after 60 on 237, overfitted; issue 16 item 4); a 2-epoch
    # learning-rate warm-up lifts the low seed: 0.895 / 0.870 / 0.896 at seeds 0-2 (0.891 / 0.849 / 0.897 without);
    # seed 3 0.8496; 4 pooling stages (a 4 x 4 final map): 0.879 / 0.870 at seeds 0-1 in 8-10% less time
    "cls": dict(arch="scratch", img_size=64, epochs=40, width=16, batch_size=16, lr=1e-3, lr_warmup=2, pools=3,
                dropout=0.0, jitter=False, pos_weight=False),
    # segmenter: it underfits rather than overfits, so steps matter more than width or pixels: width
    # 8 at 96 px for 26 epochs gave val Dice 0.890 (width 16 for 20 epochs: 0.840, and slower per
    # epoch); with a 2-epoch warm-up (Adam starts at 5e-3 from random weights otherwise) 0.894 / 0.864
    # / 0.910 / 0.815 at seeds 0-3, seed 3 a slow start that ran out of epochs; 64 px (crops, and the
    # longer side in prediction) for 40 epochs, in about the same time: 0.911 / 0.886 / 0.890 / 0.856
    "seg": dict(arch="unet", img_size=64, epochs=40, width=8, batch_size=8, lr_warmup=2),
    # attack: at 8/255 the generator stays at the noise level against the demo classifier (12%, random
    # signs 9%, PGD-10 88% on the old 300-image demo); at 16/255 it learns: held-out 59% after 14
    # epochs on 472 images against the classifier before its warm-up, 63% after 20 (random signs 3%, PGD-10
    # 97%); width 8: 48% after 14. Against the warm-up classifier 48%; with a confidence margin 51% (1), 55%
    # (2, 3 and 4), and 20 epochs without one 51%, all on the same 115 held-out images; checked on the
    # seed-2 classifier's 106, where it was not picked: 54% without the margin, 62% with 2
    "attack": dict(goal="cls_targeted", eps=16.0, epochs=14, lr=3e-3, confidence=2.0),
}
TRANSFER = {
    "cls": dict(arch="mobilenetv2"),
    "seg": dict(arch="mobilenetv2_unet"),
    "attack": dict(goal="cls_targeted", eps=8.0, epochs=10, lr=1e-3),
}


def run(data="demo", out="runs/all", transfer=False, overwrite=False, verbose=2, plan=None, side_by_side=None):
    """Run every stage into `out`: data check, classifier, segmenter, attack generator against the
    classifier, prediction of the test split (scored when it has labels) and of the validation
    split (always scored), then summary.md. Each stage writes a subfolder: data_check, cls, seg,
    attack, predict, predict_val.

    data: dataset folder, 'demo' (default; the built-in synthetic set) or None (the competition
        data under /kaggle/input).
    transfer: use TRANSFER (MobileNetV2 models at their default sizes and epochs) instead of
        QUICK (small scratch models; about 10 minutes on the demo with a 2-core CPU). Default False.
    overwrite: replace an existing `out` (put back if the run fails before cls/metrics.json exists).
    verbose: Keras verbosity of the training stages (0 silent, 1 progress bar, 2 one line per
        epoch; default 2; 1 becomes 2 side by side, where two progress bars would mix).
    plan: replaces QUICK / TRANSFER (then `transfer` is ignored): a dict whose 'cls', 'seg' and
        'attack' entries are keyword arguments of cls_train.train, seg_train.train and attack.run.
    side_by_side: train the classifier and the segmenter at once in two worker processes, then the
        attack beside the rest of the segmenter (`train_side_by_side`; the same results as one
        after the other). Default None: side by side when `side_by_side_possible()` (no GPU, the
        scripts are files) and not with TRANSFER, whose large models were not measured that way;
        True: side by side, a UserError where that is not possible; False: one stage after the
        other in this process.

    Returns the summary dict: 'cls', 'seg', 'attack' (each stage's metrics.json), 'test' (the
    test split's scores dict, None when it has no images or no solution.csv), 'val' (the
    validation split's scores dict), 'times' (seconds per stage and 'total'; side by side, the
    training stages' seconds overlap) and 'side_by_side' (bool).
    Raises common.UserError for an existing `out` without overwrite, or whatever a stage raises
    (bad data, a bad plan entry, ...), naming the problem in one line (side by side: the first
    stage to fail, the other one stopped at once).
    """
    with common.run_folder(out, overwrite=overwrite, progress=os.path.join("cls", "metrics.json")):
        if side_by_side is None:
            side_by_side = side_by_side_possible() and not (plan is None and transfer)
        elif side_by_side and not side_by_side_possible():
            raise common.UserError("side_by_side needs a machine without a GPU and the scripts as files, "
                                   "not pasted into notebook cells")
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
        verbose = 2 if side_by_side and verbose == 1 else verbose
        trainings = {
            "classifier": (cls_train.train, dict(data=root, out=path("cls"), verbose=verbose, **plan["cls"])),
            "segmenter": (seg_train.train, dict(data=root, out=path("seg"), verbose=verbose, **plan["seg"])),
            "attack": (attack.run, dict(target=path("cls"), out=path("attack"), verbose=verbose, **plan["attack"])),
        }
        if side_by_side:
            times.update(train_side_by_side(trainings))
        else:
            for name, (fn, kwargs) in trainings.items():
                stage(name, fn, **kwargs)
        test = common.load_split(root, "test")
        has_truth = os.path.isfile(os.path.join(root, "solution.csv"))
        scores, submission = stage("predict test", predict.run, root, path("cls"), path("seg"), path("predict"),
                                   score=has_truth) if len(test) else (None, None)
        val_scores, _ = stage("predict validation", predict.run, root, path("cls"), path("seg"), path("predict_val"),
                              split="val", score=True)
        times["total"] = time.time() - t0
        summary = write_summary(out, root, scores, val_scores, submission, times, side_by_side)
        write_report(out)
        print(f"\nall done in {times['total'] / 60:.1f} min: {os.path.join(out, 'summary.md')}", flush=True)
        return summary


# ----------------------------------------------------------------------------------------------
# Training stages side by side: two worker processes

def side_by_side_possible():
    """Whether the training stages can run side by side (train_side_by_side): on a machine without
    a GPU (two processes would share its memory) when this script, cls_train, seg_train and attack
    are files that a new process can import (not scripts pasted into notebook cells)."""
    files = all(getattr(module, "__file__", None) for module in (cls_train, seg_train, attack))
    return files and not common.in_notebook(globals()) and not common.tf.config.list_physical_devices("GPU")


class LinePrefix(io.TextIOBase):
    """A stream for sys.stdout that writes each finished line to `stream` with `prefix` in front,
    flushed at once: two stages printing at the same time stay readable line by line."""

    def __init__(self, stream, prefix):
        super().__init__()
        self.stream, self.prefix, self.partial = stream, prefix, ""

    def write(self, text):
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.stream.write(f"{self.prefix}{line}\n")
        self.stream.flush()
        return len(text)

    def flush(self):
        self.stream.flush()


def stage_in_process(name, fn, kwargs):
    """One training stage in a worker process of train_side_by_side: fn(**kwargs) with its printed
    lines prefixed '[name] '. Returns its wall seconds (the stage's results are in its run folder)."""
    stdout, sys.stdout = sys.stdout, LinePrefix(sys.stdout, f"[{name}] ")
    try:
        print(f"=== {name} ===", flush=True)
        t = time.time()
        fn(**kwargs)
        return time.time() - t
    finally:
        sys.stdout.write("\n" if sys.stdout.partial else "")  # a last line without its newline
        sys.stdout = stdout


def train_side_by_side(trainings):
    """Run `trainings` ({name: (function, kwargs)} for 'classifier', 'segmenter', 'attack') in two
    worker processes: the classifier and the segmenter at once, then the attack, which needs the
    classifier, in the classifier's process beside the rest of the segmenter. Returns {name: wall
    seconds}. Each stage seeds itself and TensorFlow keeps its thread counts, so the results are
    those of the stages one after the other; the small quick models leave about half of a 2-core
    CPU idle, which the other process fills (bench/README.md, "Ninth round"). The first stage to
    fail stops the other one at once (its worker is terminated) and its error is raised; a worker
    that dies (killed, out of memory) raises a UserError naming its stage."""
    print("\n=== classifier and segmenter side by side in two processes, then the attack beside the segmenter "
          "(lines prefixed [stage]) ===", flush=True)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: never fork TensorFlow's threads
    children_before = set(multiprocessing.active_children())
    pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=context)
    jobs = {}

    def result(name):
        try:
            return jobs[name].result()
        except concurrent.futures.process.BrokenProcessPool:
            raise common.UserError(f"the {name} stage's worker process died (killed, or out of memory?); "
                                   "--no-side-by-side runs the stages one after the other in this process") from None

    try:
        for name in ("classifier", "segmenter"):
            jobs[name] = pool.submit(stage_in_process, name, *trainings[name])
        concurrent.futures.wait(list(jobs.values()), return_when=concurrent.futures.FIRST_COMPLETED)
        for name, job in jobs.items():
            if job.done():
                result(name)  # a stage that failed first stops the run here
        times = {"classifier": result("classifier")}
        jobs["attack"] = pool.submit(stage_in_process, "attack", *trainings["attack"])
        times.update(segmenter=result("segmenter"), attack=result("attack"))
    except BaseException:
        for worker in set(multiprocessing.active_children()) - children_before:
            worker.terminate()  # the other stage stops now, not when it would have finished
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return times


def num(x, spec=".3f"):
    """A number read from a metrics JSON, formatted; 'n/a' for null (undefined, e.g. no validation
    image of any class)."""
    return "n/a" if x is None else format(x, spec)


def oof_text(cls):
    """The classifier's out-of-fold Dice with its 95% interval (n/a for runs made before it existed)."""
    if cls.get("val_dice_out_of_fold") is None:
        return "n/a"
    lo, hi = cls["val_dice_out_of_fold_95ci"]
    return f"{num(cls['val_dice_out_of_fold'])} [{num(lo)}, {num(hi)}]"


def write_summary(out, root, scores, val_scores, submission, times, side_by_side=False):
    """summary.md: the numbers of every stage and links to every figure (side_by_side: the training
    stages ran in two processes at once, so their seconds overlap)."""
    cls = common.read_json(os.path.join(out, "cls", "metrics.json"))
    seg = common.read_json(os.path.join(out, "seg", "metrics.json"))
    att = common.read_json(os.path.join(out, "attack", "metrics.json"))
    lines = [f"# Run summary: {root}", "",
             f"Total time {times['total'] / 60:.1f} min (" + ", ".join(
                 f"{k} {v:.0f} s" for k, v in times.items() if k != "total") + ")"
             + ("; the classifier and the segmenter side by side, then the attack beside the segmenter." if side_by_side
                else "."), "",
             "## Numbers", "", "| what | value |", "|---|---|",
             f"| classifier val mAP | {num(cls['val_map'])} |",
             f"| classifier val Dice (expected-Dice rule, predict.py's labels) | "
             f"{num(cls.get('val_dice_expected_dice'))} (tuned thresholds {num(cls['val_dice_tuned'])}, out of "
             f"fold {oof_text(cls)}; constant baseline {num(cls['baseline_dice'])}) |",
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
    # the scores stay in predict*/scores.json; this keeps what no other file of the run holds
    common.write_json(os.path.join(out, "summary.json"), {"root": root, "times": times, "side_by_side": side_by_side,
                                                          "machine": common.machine()})
    return {"cls": cls, "seg": seg, "attack": att, "test": scores, "val": val_scores, "times": times,
            "side_by_side": side_by_side}


# ----------------------------------------------------------------------------------------------
# The report notebook: the assignment's report, built from a finished run folder

REFLECTION = [  # the attack's reflection questions, as headed cells for the author to answer
    "How visible is the perturbation, and which measure (L-inf, PSNR, SSIM) matches what you see?",
    "Why can a change this small move the network's decision?",
    "How do the generator, FGSM and PGD compare in success and cost, and what would make the generator stronger?",
    "Would these perturbations fool another model, and how could a model be defended against them?",
]
FIGURE_PNG_LIMIT = 250_000  # bytes; larger figures (photo grids) are embedded as JPEG to keep the notebook small


def read_if_present(out, rel):
    """A run folder's JSON file, or None when the run did not write it."""
    path = os.path.join(out, rel)
    return common.read_json(path) if os.path.isfile(path) else None


def embedded_figure(path, name):
    """(attachment name, {mime type: base64 text}) of a figure file for a markdown cell; a PNG over
    FIGURE_PNG_LIMIT bytes is re-encoded as JPEG (quality 85)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) <= FIGURE_PNG_LIMIT:
        return name + ".png", {"image/png": base64.b64encode(data).decode("ascii")}
    buf = io.BytesIO()
    common.Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=85)
    return name + ".jpg", {"image/jpeg": base64.b64encode(buf.getvalue()).decode("ascii")}


def markdown_cell(out, text, figures=()):
    """A notebook markdown cell; each (title, path relative to out) figure is embedded in the cell
    as an attachment, so the notebook renders without the run folder."""
    attachments = {}
    for title, rel in figures:
        if not os.path.isfile(os.path.join(out, rel)):
            text += f"\n\n_(no {rel} in this run)_"
            continue
        name, data = embedded_figure(os.path.join(out, rel), rel.replace("/", "_").rsplit(".", 1)[0])
        attachments[name] = data
        text += f"\n\n**{title}**\n\n![{title}](attachment:{name})"
    cell = {"cell_type": "markdown", "metadata": {}, "source": text}
    if attachments:
        cell["attachments"] = attachments
    return cell


def code_cell(text):
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": text}


def markdown_table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def best_and_worst(per_class, k=3):
    """'best: a 0.91, b 0.88, ...; worst: ...' of a {class: value} dict, undefined (null) values left out."""
    ranked = sorted(((v, c) for c, v in per_class.items() if v is not None), reverse=True)
    say = lambda part: ", ".join(f"{c} {v:.2f}" for v, c in part)  # noqa: E731
    return f"best: {say(ranked[:k])}; worst: {say(ranked[-k:][::-1])}"


MODEL_TEXT = {  # design of each model family, as the report states it
    "scratch": "a VGG-like CNN trained from scratch: five blocks of two 3x3 conv-BN-ReLU layers and max "
               "pooling, global average pooling, dropout and 20 sigmoid outputs",
    "mobilenetv2": "MobileNetV2 with ImageNet weights (never weights trained on VOC) and a new head (global "
                   "average pooling, dropout, 20 sigmoid outputs); the backbone is frozen first, then "
                   "fine-tuned",
    "unet": "a U-Net trained from scratch: an encoder of conv-BN-ReLU blocks and max pooling, a decoder "
            "that upsamples and joins the encoder's feature maps at each scale, 21 softmax outputs per pixel",
    "mobilenetv2_unet": "a U-Net whose encoder is MobileNetV2 with ImageNet weights (frozen first, then "
                        "fine-tuned); the decoder upsamples and joins the encoder's feature maps at four scales",
}


def training_table(config, metrics):
    """Markdown table of how a model was trained, from its run's config.json and metrics.json."""
    devices = config.get("devices", {})
    return markdown_table(["setting", "value"], [
        ("architecture", f"`{config['arch']}`"),
        ("input", f"{config['img_size']} x {config['img_size']} pixels ({config['fit']})"
                  + (f", trained on {config['crop_size']}-pixel crops"
                     if config.get("crop_size", config["img_size"]) != config["img_size"] else "")),
        ("loss", config.get("loss")),
        *([("backbone fine-tuned from layer", f"`{config['finetune_from']}`")] if config.get("finetune_from") else []),
        ("batch, peak learning rate", f"{devices.get('global_batch_size')}, {devices.get('lr')}"),
        ("epochs trained (best epoch)", f"{metrics['epochs_trained']} ({metrics['best_epoch']})"),
        ("stopped by time limit", metrics["stopped_by_time_limit"]),
        ("validation images", metrics["val_images"])])


def attack_task(att):
    """One sentence: what the attacker asks of the target, and the budget."""
    budget = f"at most {att['eps_255']:g}/255 per pixel (L-inf)"
    if att.get("psnr_min"):
        budget += f" and a PSNR of at least {att['psnr_min']:g} dB"
    goal = {"cls_targeted": f"make the classifier report `{att['target_class']}` (by its tuned thresholds)",
            "cls_untargeted": "make the classifier report none of the image's clean labels (by its tuned thresholds)",
            "seg_targeted": f"make the segmenter label at least 80% of the central box `{att['target_class']}`"}
    return f"{goal[att['goal']]}, changing the image by {budget}"


def report_cells(out):
    """The report notebook's cells, from the run folder `out` (see write_report)."""
    data = read_if_present(out, "data_check/summary.json")
    run = read_if_present(out, "summary.json") or {}
    cls, seg, att = (common.read_json(os.path.join(out, s, "metrics.json")) for s in ("cls", "seg", "attack"))
    cls_cfg, seg_cfg = (common.read_config(os.path.join(out, s, "config.json")) for s in ("cls", "seg"))
    times = run.get("times", {})
    md = lambda text, figures=(): markdown_cell(out, text, figures)  # noqa: E731
    cells = [md(f"# PASCAL VOC 2009: classification, segmentation and an adversarial attack\n\n"
                f"Run folder `{os.path.basename(os.path.abspath(out))}`, data `{cls_cfg['data']}`"
                + (f", {times['total'] / 60:.1f} minutes on {run.get('machine')}" if "total" in times else "")
                + ". Every number and figure below was read from the run folder when this notebook was "
                "written (`python run_all.py --report-only --out RUN` writes it again); the last section "
                "is the code that writes `submission.csv`.")]

    text = "## 1. Data\n\n"
    if data:
        text += (f"{data['train_images']} labelled training images ({cls['val_images']} of them held out for "
                 f"validation), {data['test_images']} test images. Labels per image: mean "
                 f"{data.get('labels_per_image', float('nan')):.2f}, at most {data.get('max_labels_per_image')}.")
        if "object_pixel_share" in data:
            text += (f" Pixels: {100 * data['object_pixel_share']:.1f}% object, "
                     f"{100 * data['void_pixel_share']:.1f}% void (255, not scored).")
        if data.get("images_per_class"):
            text += "\n\nTraining images per class: " + ", ".join(
                f"{c} {n}" for c, n in data["images_per_class"].items()) + "."
    cells.append(md(text, [("Training samples: image and mask", "data_check/samples.png")]))

    cells.append(md(
        f"## 2. Classification (20 classes, multi-label)\n\nThe classifier is {MODEL_TEXT[cls_cfg['arch']]}. "
        "Each image gets the label set of largest expected Dice under the classifier's probabilities (the "
        "most probable classes, as many as pay off; at least one), a rule with nothing tuned; the "
        "alternative, per-class thresholds tuned on the validation split, scored lower on held-out proxy photos "
        "(bench/README.md). "
        f"This run trained the {'transfer-learned' if cls_cfg.get('backbone') else 'from-scratch'} family; "
        f"`cls_train.py --arch {'scratch' if cls_cfg.get('backbone') else 'mobilenetv2'}` trains the other "
        "for comparison.\n\n" + training_table(cls_cfg, cls)))
    cells.append(md("### Learning curves\n\nLoss and Dice of the label sets (the competition's classification "
                    "metric) per epoch, training and validation.", [("Classifier learning curves", "cls/curves.png")]))
    cells.append(md("### Numbers (validation split)\n\n" + markdown_table(["measure", "value"], [
        ("mAP", num(cls["val_map"])), ("Dice at threshold 0.5", num(cls["val_dice_at_0.5"])),
        ("Dice of the expected-Dice rule (the submission's labels; nothing tuned)",
         num(cls.get("val_dice_expected_dice"))),
        ("Dice at tuned thresholds (tuned on these images: optimistic)", num(cls["val_dice_tuned"])),
        ("Dice out of fold: each fifth decided by thresholds tuned on the rest (95% interval)", oof_text(cls)),
        ("Dice of the best constant label set (baseline)", num(cls["baseline_dice"]))])
        + f"\n\nAverage precision per class, {best_and_worst(cls['val_ap'])}."))
    cells.append(md("### Good and bad cases", [("Best and worst validation images", "cls/gallery.png")]))

    cells.append(md(
        f"## 3. Segmentation (background + 20 classes; 255 = void)\n\nThe segmenter is {MODEL_TEXT[seg_cfg['arch']]}. "
        f"`seg_train.py --arch {'unet' if seg_cfg.get('backbone') else 'mobilenetv2_unet'}` trains the other "
        "family for comparison.\n\n" + training_table(seg_cfg, seg)))
    cells.append(md("### Learning curves", [("Segmenter learning curves", "seg/curves.png")]))
    cells.append(md("### Numbers (validation split)\n\n" + markdown_table(["measure", "value"], [
        ("mean IoU (21 classes)", num(seg["val_miou"])),
        ("Dice (the submission's segmentation half)", num(seg["val_dice"])),
        ("Dice of an all-background prediction (baseline)", num(seg["all_background_dice"]))])
        + f"\n\nIoU per class, {best_and_worst(seg['val_iou'])}."))
    cells.append(md("### Good and bad cases", [("Best and worst validation images", "seg/gallery.png")]))

    rows = []
    for method, r in att["held_out"].items():
        lo, hi = r["success_95ci"]
        rows.append((method, f"{num(r['success_rate'], '.1%')} [{num(lo, '.0%')}, {num(hi, '.0%')}]",
                     f"{num(r['score_before'])} -> {num(r['score_after'])}", num(r["linf_max_255"], ".1f"),
                     f"{num(r['psnr_mean'], '.1f')} / {num(r['psnr_min'], '.1f')}", num(r["ssim_mean"]),
                     num(r["ms_per_image"], ".0f"),
                     f"{r['target_forward_per_image']} / {r['target_backward_per_image']}"))
    text = (f"## 4. Adversarial attack\n\n### The task\n\nThe attacker's goal: {attack_task(att)}. A perturbation "
            "generator (an encoder-decoder on the frozen target's feature maps) is trained with a custom "
            f"`train_step` against the frozen `{att['target_run']}` model: {att['train_images']} training images, "
            f"{att['epochs']} epochs, {att['train_image_gradients']:.0f} image-gradients in "
            f"{att['train_seconds'] / 60:.1f} minutes; the target's weights stayed unchanged: "
            f"{att['target_weights_unchanged']}. It is compared at the same budget with random sign noise (a "
            "control that should stay near 0%), FGSM (one gradient step) and PGD-10 (ten), on "
            f"{att['held_out_images']} held-out images.\n\n### Results (held-out images)\n\n" + markdown_table(
                ["method", "success [95% CI]", "score before -> after", "L-inf max /255", "PSNR mean / min dB",
                 "SSIM", "ms / image", "target passes fwd / bwd"], rows))
    if att.get("budget_table"):
        methods = list(next(iter(att["budget_table"].values())))
        text += ("\n\nSuccess and mean score after (as in the table above) against the L-inf budget (the "
                 "generator rescaled to each budget):\n\n") + markdown_table(
            ["budget /255"] + methods, [[b] + [num(v) for v in r.values()]
                                        for b, r in sorted(att["budget_table"].items(), key=lambda kv: float(kv[0]))])
    cells.append(md(text))
    cells.append(md("### Examples\n\nOriginal image, perturbation (amplified), perturbed image, and the model's "
                    "output before and after.", [("Generator on held-out images", "attack/panel.png")]))
    cells.append(md("### Learning curve\n\nAttack loss and success per epoch on training and held-out images.",
                    [("Generator learning curve", "attack/curves.png")]))
    for question in REFLECTION:
        cells.append(md(f"### {question}\n\n_Answer here._"))

    scored = [(name, read_if_present(out, f"{folder}/scores.json"))
              for name, folder in (("validation split", "predict_val"), ("test split", "predict"))]
    rows = [(name, num(s["classification"]), num(s["segmentation"]), num(s["score"]), s["images"])
            for name, s in scored if s]
    cells.append(md("## 5. Submission scores\n\nMean Dice over the submission's rows, scored locally the way the "
                    "competition scores it.\n\n" + (markdown_table(
                        ["split", "classification", "segmentation", "joint", "images"], rows) if rows else
                                                   "_(no scored split in this run)_"),
                    [("Test predictions", "predict/gallery.png"),
                     ("Validation predictions", "predict_val/gallery.png")]))
    facts = [f"classifier val Dice {num(cls.get('val_dice_expected_dice'))} (expected-Dice rule; tuned thresholds "
             f"{num(cls['val_dice_tuned'])}, out of fold {num(cls.get('val_dice_out_of_fold'))}; constant baseline "
             f"{num(cls['baseline_dice'])})",
             f"segmenter val Dice {num(seg['val_dice'])}, mean IoU {num(seg['val_miou'])}"]
    gen, pgd = att["held_out"].get("generator"), att["held_out"].get("pgd10")
    if gen and pgd:
        facts.append(f"attack: generator {num(gen['success_rate'], '.0%')} at {num(gen['ms_per_image'], '.0f')} ms "
                     f"per image, PGD-10 {num(pgd['success_rate'], '.0%')} at {num(pgd['ms_per_image'], '.0f')} ms")
    cells.append(md("## 6. Discussion\n\nFrom this run: " + "; ".join(facts) + ".\n\n_Discussion here: what "
                    "worked, what did not, and what you would try next._"))

    cells.append(md("## 7. Write submission.csv\n\nThe cells below load the saved classifier and segmenter "
                    "(no training) and write `submission.csv` for the test split. On Kaggle: add a dataset "
                    "holding this run folder and one holding the project's scripts, and set the paths; "
                    "`DATA = None` reads the competition data under `/kaggle/input`."))
    code_dir = os.path.dirname(os.path.abspath(globals().get("__file__", "")))  # pasted in a notebook: no file
    cells.append(code_cell(f"RUN = {os.path.abspath(out)!r}  # the run folder (its cls/ and seg/ subfolders)\n"
                           f"CODE = {code_dir!r}  # the folder with common.py, predict.py, ...\n"
                           f"DATA = {cls_cfg['data']!r}  # None: the competition data under /kaggle/input\n"
                           "OUT = 'prediction'  # predict.py's run folder (submission.csv, gallery.png, ...)"))
    cells.append(code_cell("import os, shutil, sys\n"
                           "sys.path.insert(0, CODE)\n"
                           "import common, predict\n\n"
                           "cls, seg = os.path.join(RUN, 'cls'), os.path.join(RUN, 'seg')\n"
                           "_, written = predict.run(DATA, cls, seg, OUT, overwrite=True)\n"
                           "shutil.copy(written, 'submission.csv')"))
    cells.append(code_cell("test = common.load_split(DATA, 'test')\n"
                           "common.validate_submission('submission.csv', test.ids)\n"
                           "print(f'submission.csv: {len(test)} test images, valid')"))
    return cells


def write_report(out):
    """Write report.ipynb into the run folder `out` of run(): the assignment's report (data,
    classification, segmentation and attack sections with the run's numbers and every figure
    embedded, the reflection questions as headed cells to answer, a discussion) and, last, the
    code cells that load the saved models and write submission.csv for the test split.

    Returns the notebook's path. Raises common.UserError when `out` lacks a stage's metrics.json
    or config.json (not a finished run of run()).
    """
    need = ["cls/metrics.json", "cls/config.json", "seg/metrics.json", "seg/config.json", "attack/metrics.json"]
    missing = [rel for rel in need if not os.path.isfile(os.path.join(out, rel))]
    if missing:
        raise common.UserError(f"{out} is not a finished run of run_all.py: no {', '.join(missing)}")
    cells = report_cells(out)
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:02d}"
    notebook = {"nbformat": 4, "nbformat_minor": 5, "cells": cells, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}}}
    path = os.path.join(out, "report.ipynb")
    common.atomic_write(path, lambda f: json.dump(notebook, f, indent=1))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo", help="dataset folder or 'demo' (default %(default)s)")
    p.add_argument("--out", default="runs/all", help="run folder (default %(default)s)")
    p.add_argument("--transfer", action="store_true",
                   help="MobileNetV2 models at full size instead of quick scratch models")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--no-side-by-side", dest="side_by_side", action="store_false", default=None,
                   help="train one stage after the other in this process (default: the classifier and the "
                        "segmenter side by side in two processes on a machine without a GPU, except --transfer)")
    p.add_argument("--report-only", action="store_true",
                   help="only write report.ipynb again from the finished run folder --out")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = p.parse_args(argv)
    if args.report_only:
        print(f"wrote {write_report(args.out)}")
    else:
        run(args.data, args.out, args.transfer, args.overwrite, side_by_side=args.side_by_side)


if __name__ == "__main__":
    if common.in_notebook(globals()):  # pasted into a notebook cell: the cells after it can `import run_all`
        sys.modules["run_all"] = common.cell_module("run_all", globals())
    else:
        sys.exit(common.run_cli(main))
