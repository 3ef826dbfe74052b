"""Benchmark: train the classifiers and segmenters on ../shared/proxy (real photos, VOC layout)
with an internal validation split, each under a training-time limit, and print validation numbers.

    KERAS_HOME=../shared/keras_home python bench/train_proxy.py --only seg_mobilenetv2_unet [--loss ce]

Writes runs/bench_<name>[_<loss>]/ and bench/results/<name>.json, and prints a table. These are
"proxy" numbers, not VOC numbers.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import common  # noqa: E402,I001
import cls_train  # noqa: E402
import seg_train  # noqa: E402

# name: (script, arguments, training-time limit in minutes)
RUNS = {
    # images at 288 px since 2026-12-03 (224 before): held-out expected-Dice classification 0.852 against 0.846 (5
    # draws), joint 0.793 against 0.787 with the bench's segmenters (5 draws; bench/holdout_proxy.py --train img_288)
    "cls_mobilenetv2": (cls_train, dict(arch="mobilenetv2", img_size=288, epochs=20, frozen_epochs=5, batch_size=16),
                        30),
    "cls_scratch": (cls_train, dict(arch="scratch", img_size=128, epochs=25, batch_size=32), 30),
    # images at 384 px since 2026-12-01 (256 before): +0.026 held-out segmentation Dice on 2 draws (first machine;
    # bench/holdout_proxy.py --train seg_img_384); on the AVX2-only CPU its full-size crops left time for 16 of the
    # 30 epochs. Training crops of 256 px since 2026-12-02 (--train seg_crop_256): all 30 epochs in about half the
    # time, held-out segmentation 0.733 and 0.699 on draws 1 and 2 (full-size crops: 0.726 and 0.720, first
    # machine; bench/README.md). Fine-tuned from block_3_expand (the stride-8 blocks up, not only the top stage) at
    # 0.1 x lr since 2026-12-02 (--train seg_finetune_block_3_lr_0.1): held-out segmentation 0.747 and 0.709
    "seg_mobilenetv2_unet": (seg_train, dict(arch="mobilenetv2_unet", img_size=384, crop_size=256, epochs=30,
                                             frozen_epochs=6, finetune_from="block_3_expand", finetune_lr_factor=0.1,
                                             repeat_factor=True), 58),
    "seg_unet": (seg_train, dict(arch="unet", img_size=128, epochs=50), 58),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "proxy"))
    p.add_argument("--only", nargs="+", choices=list(RUNS), help="default: all, one after another")
    p.add_argument("--loss", help="override the loss (cls: bce/focal/asl, seg: ce/dice/ce+dice)")
    p.add_argument("--minutes", type=float, help="override the training-time limit")
    p.add_argument("--epochs", type=int, help="override the epochs")
    p.add_argument("--report", action="store_true", help="only print the table of bench/results/*.json")
    p.add_argument("--collect", action="store_true",
                   help="write the results of finished runs/bench_<name> folders without training again "
                        "(wall time from the folder's file times)")
    args = p.parse_args()
    machine = common.machine()
    print(f"machine: {machine}; data {args.data}", flush=True)
    results = []
    for name in [] if args.report else args.only or list(RUNS):
        script, kwargs, minutes = RUNS[name]
        kwargs = dict(kwargs, **({"loss": args.loss} if args.loss else {}),
                      **({"epochs": args.epochs} if args.epochs else {}))
        minutes = args.minutes or minutes
        tag = name + (f"_{args.loss}" if args.loss else "")
        out = f"runs/bench_{tag}"
        if args.collect:
            started, ended = (os.path.getmtime(os.path.join(out, f)) for f in ("config.json", "state.json"))
            wall = ended - started
        else:
            t = time.time()
            script.train(data=args.data, out=out, overwrite=True, time_limit=minutes, **kwargs)
            wall = time.time() - t
        metrics = common.read_json(os.path.join(out, "metrics.json"))
        result = dict(name=tag, arguments=kwargs, time_limit_minutes=minutes,
                      wall_minutes=round(wall / 60, 1), machine=machine, metrics=metrics)
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        common.write_json(os.path.join(HERE, "results", f"{tag}.json"), result)
        results.append(result)
    if args.report:
        folder = os.path.join(HERE, "results")
        results = [common.read_json(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
                   if f.endswith(".json") and f.startswith(tuple(RUNS))]  # not the other benches' cls_/seg_ files
    print("\n| run | px | epochs | wall minutes | numbers (validation split) |\n|---|---|---|---|---|")
    for r in results:
        m = r["metrics"]
        if "val_map" in m:
            numbers = (f"mAP {m['val_map']:.3f}, Dice@0.5 {m['val_dice_at_0.5']:.3f}, Dice tuned "
                       f"{m['val_dice_tuned']:.3f}, out of fold {m.get('val_dice_out_of_fold', float('nan')):.3f} "
                       f"(constant baseline {m['baseline_dice']:.3f})")
        else:
            numbers = (f"mIoU {m['val_miou']:.3f}, seg Dice {m['val_dice']:.3f} "
                       f"(all-background {m['all_background_dice']:.3f})")
        px = r["arguments"]["img_size"]
        px = f"{px}, crops {r['arguments']['crop_size']}" if r["arguments"].get("crop_size") else px
        print(f"| {r['name']} | {px} | {m['epochs_trained']} | {r['wall_minutes']} "
              f"| {numbers} |")


if __name__ == "__main__":
    main()
