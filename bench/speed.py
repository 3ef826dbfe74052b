"""Benchmark: speed and memory on ../shared/proxy (real photos, VOC layout).

    KERAS_HOME=../shared/keras_home python bench/speed.py [--only pipeline throughput xla predict rle memory]

  pipeline    training steps/s of the real input pipeline (uint8 cache + augmentation, and decoding
              from disk) vs the same model fed batches already in memory; MobileNetV2 classifier at
              224 px, MobileNetV2 U-Net at 320 px, both in their fine-tuning stage.
  throughput  training images/s of every model at its default size and batch (real pipeline).
  xla         the scratch classifier with --jit on/off and --mixed-precision on/off (this CPU).
  predict     predict.py with its defaults on the proxy test split, end to end (load the models,
              decode images, predict with seg-flip TTA, resize back, fuse, RLE, CSV, gallery) vs
              the same model calls alone (same batch shapes, arrays in memory, traced).
  rle         encoding a 20x500x375 mask stack: common.rle_encode vs the template's function.
  memory      peak resident memory of one seg_train.py epoch at 320 px on the full proxy train split.

Prints a table per part and writes bench/results/speed.json (parts already there are kept).
"""

import argparse
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import common  # noqa: E402,I001
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import cls_train  # noqa: E402
import predict  # noqa: E402
import seg_train  # noqa: E402
from tests.conftest import template_rle_encode  # noqa: E402  (the template's function, verbatim)

PROXY = os.path.join(ROOT, "..", "shared", "proxy")


class StepTimes(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())

    def on_train_begin(self, logs=None):
        self.times = []


def images_per_second(net, ds, batch_size, steps=10, warmup=3):
    """Training images/s over `steps` steps after `warmup` (tracing, first batches) steps."""
    timer = StepTimes()
    net.fit(ds, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[timer])
    return steps * batch_size / (timer.times[-1] - timer.times[warmup - 1])


def in_memory(ds, batches=4):
    """The first few batches of a pipeline, served again and again from memory."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds.take(batches)])
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    return tf.data.Dataset.from_tensor_slices((xs, ys)).batch(len(xs) // batches).repeat().prefetch(tf.data.AUTOTUNE)


def build(task, model, img_size, stage=2, jit="auto"):
    """A compiled model of a task as its training script builds it (stage 1: frozen backbone)."""
    keras.utils.set_random_seed(0)
    if task == "cls":
        net = cls_train.build_scratch(img_size) if model == "scratch" else cls_train.build_transfer(img_size)
        loss = cls_train.MultiLabelLoss("bce")
    else:
        net = seg_train.build_unet(None) if model == "unet" else seg_train.build_transfer_unet(None)
        loss = seg_train.SegLoss("ce+dice")
    common.set_backbone_trainable(common.backbone_of(net), None if stage == 1 else common.BACKBONES["mobilenetv2"][1])
    net.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss, jit_compile=common.jit_flag(jit))
    return net


def pipeline(split, examples, task, img_size, batch_size, cached=True):
    kw = dict(target="mask", fit="letterbox", scale=(0.5, 1.5)) if task == "seg" else \
        dict(fit="resize", scale=(0.8, 1.25))
    return common.make_dataset(split, examples if cached else None, img_size, batch_size, training=True,
                               repeat=True, **kw)


def part_pipeline(split, examples, steps):
    rows = []
    for task, model, size, batch in [("cls", "mobilenetv2", 224, 16), ("seg", "mobilenetv2_unet", 320, 8)]:
        net = build(task, model, size)
        real = pipeline(split, examples, task, size, batch)
        memory = images_per_second(net, in_memory(real), batch, steps)
        cached = images_per_second(net, real, batch, steps)
        disk = images_per_second(net, pipeline(split, examples, task, size, batch, cached=False), batch, steps)
        rows.append(dict(task=task, model=model, img_size=size, batch_size=batch, in_memory_ips=memory,
                         pipeline_ips=cached, from_disk_ips=disk, overhead=1 - cached / memory,
                         overhead_from_disk=1 - disk / memory))
        print(f"| {task} {model} {size} px | {memory:.2f} | {cached:.2f} ({1 - cached / memory:+.1%}) "
              f"| {disk:.2f} ({1 - disk / memory:+.1%}) |", flush=True)
    return rows


def part_throughput(split, examples, steps):
    rows = []
    for task, model, stage in [("cls", "scratch", 1), ("cls", "mobilenetv2", 1), ("cls", "mobilenetv2", 2),
                               ("seg", "unet", 1), ("seg", "mobilenetv2_unet", 1), ("seg", "mobilenetv2_unet", 2)]:
        d = (cls_train.CLS_DEFAULTS if task == "cls" else seg_train.SEG_DEFAULTS)[model]
        net = build(task, model, d["img_size"], stage)
        ips = images_per_second(net, pipeline(split, examples, task, d["img_size"], d["batch_size"]),
                                d["batch_size"], steps)
        what = "" if model in ("scratch", "unet") else (" (frozen backbone)" if stage == 1 else " (fine-tuning)")
        rows.append(dict(task=task, model=model + what, img_size=d["img_size"], batch_size=d["batch_size"], ips=ips))
        print(f"| {task} | {model}{what} | {d['img_size']} | {d['batch_size']} | {ips:.1f} |", flush=True)
    return rows


def part_xla(split, examples, steps):
    rows = []
    ds = in_memory(pipeline(split, examples, "cls", 128, 32))
    for jit, precision in [("off", "off"), ("on", "off"), ("off", "on")]:
        policy = common.set_precision(precision)
        net = build("cls", "scratch", 128, jit=jit)
        ips = images_per_second(net, ds, 32, steps)
        rows.append(dict(model="scratch cls 128 px", jit=jit, precision=policy, ips=ips))
        print(f"| --jit {jit} | {policy} | {ips:.1f} |", flush=True)
    common.set_precision("off")
    return rows


def part_predict():
    """predict.py's run() with its defaults on the whole proxy test split, vs the model calls it
    makes (same batch shapes, models loaded and traced, arrays already in memory)."""
    cls_run, seg_run = "runs/bench_cls_mobilenetv2", "runs/bench_seg_mobilenetv2_unet"
    t = time.perf_counter()
    predict.run(PROXY, cls_run, seg_run, "runs/bench_speed_predict", "test", overwrite=True)
    end_to_end = time.perf_counter() - t
    n = len(common.load_split(PROXY, "test"))

    t = time.perf_counter()
    cls_model, cls_config, _ = cls_train.load_classifier(cls_run)
    seg_model, seg_config = common.load_run(seg_run, "segmentation")
    load = time.perf_counter() - t
    size, batch = seg_train.canvas_size(seg_config["img_size"], 1.0), 8
    canvas = np.full((2 * batch, size, size, 3), 114, np.float32)  # a batch and its mirror (seg-flip)
    small = np.full((32, cls_config["img_size"], cls_config["img_size"], 3), 114, np.float32)
    seg_model.predict_on_batch(canvas), cls_model.predict_on_batch(small)  # trace once
    t = time.perf_counter()
    for _ in range(0, n, batch):
        seg_model.predict_on_batch(canvas)
    for k in range(0, n, 32):
        cls_model.predict_on_batch(small[: min(32, n - k)])
    forward = time.perf_counter() - t
    row = dict(images=n, end_to_end_s=end_to_end, model_load_s=load, forward_s=forward,
               ratio=forward / end_to_end, ratio_without_model_load=forward / (end_to_end - load),
               end_to_end_ips=n / end_to_end)
    print(f"| {n} | {end_to_end:.1f} | {load:.1f} | {forward:.1f} | {row['ratio']:.3f} | "
          f"{row['ratio_without_model_load']:.3f} |", flush=True)
    return row


def part_rle(repeats=20):
    split = common.load_split(PROXY, "train")
    masks = (common.read_example(split, i)[1] for i in range(len(split)))
    mask = next(m for m in masks if len(np.unique(m)) > 3)  # a real mask with several classes,
    mask = np.asarray(Image.fromarray(mask).resize((500, 375), Image.NEAREST))  # at the VOC size
    stack = common.seg_stack(mask)
    assert stack.shape == (20, 375, 500)
    mine = common.rle_encode(stack)
    assert mine == template_rle_encode(stack)
    times = {}
    for name, fn in [("project", common.rle_encode), ("template", template_rle_encode)]:
        t = time.perf_counter()
        for _ in range(repeats):
            fn(stack)
        times[name] = (time.perf_counter() - t) / repeats * 1000
    row = dict(shape=list(stack.shape), project_ms=times["project"], template_ms=times["template"],
               speedup=times["template"] / times["project"], same_output=True)
    print(f"| 20x375x500 | {times['project']:.2f} | {times['template']:.2f} | {row['speedup']:.1f}x | yes |")
    return row


def part_memory():
    code = ("import seg_train; seg_train.train(data=%r, arch='mobilenetv2_unet', img_size=320, epochs=1, "
            "frozen_epochs=1, out='runs/bench_speed_memory', overwrite=True, verbose=2)" % PROXY)
    t = time.time()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    row = dict(what="seg_train.py mobilenetv2_unet, 320 px, 1 epoch, full proxy train split", peak_rss_gb=peak_gb,
               seconds=time.time() - t)
    print(f"| {row['what']} | {peak_gb:.2f} GB |", flush=True)
    return row


def main():
    parts = ["pipeline", "throughput", "xla", "predict", "rle", "memory"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=parts, help="default: all")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement (default %(default)s)")
    args = p.parse_args()
    machine = f"{common.machine()}, TF {tf.__version__}"
    print(f"machine: {machine}; data {PROXY}", flush=True)
    path = os.path.join(HERE, "results", "speed.json")
    results = common.read_json(path) if os.path.isfile(path) else {}
    results["machine"] = machine
    split = examples = None
    for part in args.only or parts:
        if part in ("pipeline", "throughput", "xla") and split is None:
            split = common.load_split(PROXY, "train")
            examples = common.load_examples(split)
        print(f"\n{part}", flush=True)
        print({"pipeline": "| model | in memory img/s | pipeline img/s (overhead) | from disk img/s (overhead) |\n"
                           "|---|---|---|---|",
               "throughput": "| task | model | px | batch | train img/s |\n|---|---|---|---|---|",
               "xla": "| jit | precision | train img/s |\n|---|---|---|",
               "predict": "| images | end to end s | of which model loading s | forward only s | forward / end to end "
                          "| same without model loading |\n|---|---|---|---|---|---|",
               "rle": "| stack | project ms | template ms | speed-up | same string |\n|---|---|---|---|---|",
               "memory": "| run | peak RSS |\n|---|---|"}[part], flush=True)
        if part == "pipeline":
            results[part] = part_pipeline(split, examples, args.steps)
        elif part == "throughput":
            results[part] = part_throughput(split, examples, args.steps)
        elif part == "xla":
            results[part] = part_xla(split, examples, args.steps)
        elif part == "predict":
            results[part] = part_predict()
        elif part == "rle":
            results[part] = part_rle()
        else:
            results[part] = part_memory()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        common.write_json(path, results)


if __name__ == "__main__":
    main()
