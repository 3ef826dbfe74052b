"""Benchmark: train both classifiers on ../shared/proxy (real photos, VOC layout) with an internal
validation split, each under a training-time limit, and print validation numbers.

    KERAS_HOME=../shared/keras_home python bench/cls_proxy.py [--only scratch|mobilenetv2] [--minutes 30]

Writes runs/bench_cls_<model>/ and prints one table row per model. Numbers are "proxy" numbers,
not VOC numbers.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cls_train  # noqa: E402

RUNS = {
    "mobilenetv2": dict(model="mobilenetv2", img_size=224, epochs=20, warmup_epochs=5, batch_size=16),
    "scratch": dict(model="scratch", img_size=128, epochs=25, batch_size=32),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "proxy"))
    p.add_argument("--only", choices=list(RUNS))
    p.add_argument("--minutes", type=float, default=30, help="training-time limit per model")
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; data {args.data}")
    rows = []
    for name, kwargs in RUNS.items():
        if args.only and name != args.only:
            continue
        out = f"runs/bench_cls_{name}"
        t = time.time()
        cls_train.train(data=args.data, out=out, overwrite=True, time_limit=args.minutes, **kwargs)
        minutes = (time.time() - t) / 60
        m = json.load(open(os.path.join(out, "metrics.json")))
        rows.append((name, kwargs["img_size"], m["epochs_trained"], minutes, m["val_map"], m["val_dice_at_0.5"],
                     m["val_dice_tuned"], m["baseline_dice"]))
    print("\n| model | px | epochs | minutes (train+eval) | val mAP | val Dice@0.5 | val Dice tuned | constant baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.3f} |")


if __name__ == "__main__":
    main()
