"""Benchmark: where a quick stage's slow epochs come from (issue 16 item 4, Linux only).

    python bench/pace.py [--model unet|scratch|mobilenetv2] [--epochs 16] [--autotune off|on] [--label NAME]
    python bench/pace.py --autotune on                               # tf.data's autotuning on, as before
    TF_NUM_INTRAOP_THREADS=1 python bench/pace.py                    # one thread inside each op
    KERAS_HOME=../shared/keras_home python bench/pace.py --model mobilenetv2 --epochs 3

On the 2-core machine the quickstart's epochs took either about 5 s or about 10 s, from hour to
hour and from epoch to epoch. This trains one quick model on batches already in memory (the demo's
training split, augmented once: no input pipeline in the timed loop) and prints per epoch its wall
seconds, the seconds of CPU the process used, and the idle core-seconds of the whole machine
(/proc/stat). A slow epoch that uses the same CPU seconds while a core sits idle is time spent
waiting, not computing. The batches are a tf.data dataset that Keras iterates anew each epoch,
with tf.data's autotuning off as in the project's pipelines (`common.without_autotune`), or on
(`--autotune on`, tf.data's default), which is where the waits were found (bench/README.md, eighth
round).

  unet         run_all.QUICK's U-Net (width 8, 64 px crops, batch 8), its training augmentation
  scratch      run_all.QUICK's classifier (width 16, 3 pools, 64 px, batch 16), its augmentation
  mobilenetv2  the transfer classifier at 224 px in its fine-tuning stage, batch 16 (random images;
               a model whose ops are large, for the thread-count comparison)

Prints one line per epoch and a summary, and adds them to bench/results/pace.json under --label.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import common  # noqa: E402,I001
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cls_train  # noqa: E402
import run_all  # noqa: E402
import seg_train  # noqa: E402

RESULTS = os.path.join(HERE, "results", "pace.json")


def idle_core_seconds():
    """Idle time of all cores together since boot, in seconds (/proc/stat's 'cpu' line, USER_HZ)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[4]) / os.sysconf("SC_CLK_TCK")


class EpochPace(keras.callbacks.Callback):
    """Per epoch: wall seconds, process CPU seconds, machine idle core-seconds."""

    def on_train_begin(self, logs=None):
        self.rows = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = (time.perf_counter(), time.process_time(), idle_core_seconds())

    def on_epoch_end(self, epoch, logs=None):
        wall, cpu, idle = (b - a for a, b in zip(self.start, (time.perf_counter(), time.process_time(),
                                                               idle_core_seconds())))
        self.rows.append(dict(epoch=epoch + 1, wall_s=wall, cpu_s=cpu, idle_core_s=idle))
        print(f"epoch {epoch + 1:3d}: {wall:5.1f} s wall, {cpu:5.1f} s CPU, {idle:5.1f} idle core-s", flush=True)


def model_and_data(name):
    """(compiled model, in-memory tf.data.Dataset of one epoch) for --model."""
    if name == "mobilenetv2":
        net = cls_train.build_transfer(224, "mobilenetv2", "imagenet")
        common.set_backbone_trainable(common.backbone_of(net), common.BACKBONES["mobilenetv2"][1])
        net.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=cls_train.MultiLabelLoss("bce", None))
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (16, 224, 224, 3)).astype("float32")
        y = (rng.random((16, 20)) < 0.1).astype("float32")
        return net, tf.data.Dataset.from_tensors((x, y)).repeat(20)
    seg = name == "unet"
    plan = run_all.QUICK["seg" if seg else "cls"]
    split, train_split, _ = common.split_for_training("demo", 0.2, 0, masks=seg)
    examples = common.load_examples(train_split, masks=seg, progress=False)
    size, batch = plan["img_size"], plan["batch_size"]
    ds = common.make_dataset(train_split, examples, size, batch, training=True, seed=0,
                             **(dict(target="mask", scale=(0.5, 1.5)) if seg else
                                dict(fit="resize", scale=(0.8, 1.25), jitter=False)))
    x, y = (np.concatenate(parts) for parts in zip(*[(a.numpy(), b.numpy()) for a, b in ds]))
    if seg:
        net = seg_train.build_unet(None, plan["width"])
        net.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4), loss=seg_train.SegLoss("ce+dice"))
    else:
        net = cls_train.build_scratch(size, plan["width"], plan["dropout"], plan["pools"])
        net.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4), loss=cls_train.MultiLabelLoss("bce"))
    return net, tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def autotuned(ds, setting):
    """`ds` with tf.data's autotuning as --autotune says ('on': tf.data's default)."""
    return ds if setting == "on" else common.without_autotune(ds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="unet", choices=["unet", "scratch", "mobilenetv2"])
    p.add_argument("--epochs", type=int, default=16, help="epochs, the first (tracing) one included (default 16)")
    p.add_argument("--autotune", default="off", choices=["off", "on"],
                   help="tf.data's autotuning of the in-memory batches: off as in the project's pipelines "
                        "(default), or on (tf.data's default)")
    p.add_argument("--label", default=None,
                   help="key in pace.json (default: the model, thread and autotune settings)")
    args = p.parse_args(argv)
    keras.utils.set_random_seed(0)
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "default")
    net, ds = model_and_data(args.model)
    ds = autotuned(ds, args.autotune)
    pace = EpochPace()
    net.fit(ds, epochs=args.epochs, verbose=0, callbacks=[pace])
    rows = pace.rows[1:]  # the first epoch traces the step
    walls = np.array([r["wall_s"] for r in rows])
    fastest = walls.min()
    slow = [r for r in rows if r["wall_s"] > 1.5 * fastest]
    summary = dict(model=args.model, intra_op_threads=threads, autotune=args.autotune, cpu_count=os.cpu_count(),
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   epochs_timed=len(rows), wall_s_total=float(walls.sum()),
                   slow_epochs=len(slow), cpu_s_mean=float(np.mean([r["cpu_s"] for r in rows])),
                   cpu_s_mean_slow=float(np.mean([r["cpu_s"] for r in slow])) if slow else None,
                   idle_core_s_mean_fast=float(np.mean([r["idle_core_s"] for r in rows if r not in slow])),
                   idle_core_s_mean_slow=float(np.mean([r["idle_core_s"] for r in slow])) if slow else None,
                   epochs=pace.rows)
    line = (f"{args.model}, intra-op threads {threads}, autotune {args.autotune}: epochs 2-{args.epochs} took "
            f"{walls.sum():.1f} s; {len(slow)} slow (over 1.5x the fastest, {fastest:.1f} s); "
            f"CPU {summary['cpu_s_mean']:.1f} s an epoch")
    if slow:
        line += (f" ({summary['cpu_s_mean_slow']:.1f} s in the slow ones); idle core-s an epoch "
                 f"{summary['idle_core_s_mean_fast']:.1f} fast, {summary['idle_core_s_mean_slow']:.1f} slow")
    print(line, flush=True)
    results = common.read_json(RESULTS) if os.path.isfile(RESULTS) else {}
    results[args.label or f"{args.model} intra-op threads {threads} autotune {args.autotune}"] = summary
    common.write_json(RESULTS, results)


if __name__ == "__main__":
    main()
