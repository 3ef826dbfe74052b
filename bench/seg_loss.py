"""Benchmark: which segmentation loss wins on validation? The same U-Net trained with each of
--loss ce, dice and ce+dice (same data, split, seed, epochs), scored at original resolution.

    python bench/seg_loss.py                      # demo data, small U-Net, about 4 minutes a loss
    python bench/seg_loss.py --data ../shared/proxy --img-size 160 --epochs 20

Writes runs/bench_seg_loss_<loss>/ and bench/results/seg_loss.json, and prints a table.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import common  # noqa: E402,I001
import seg_train  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo")
    p.add_argument("--arch", default="unet", choices=list(seg_train.SEG_DEFAULTS))
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--width", type=int, default=16)
    args = p.parse_args()
    machine = common.machine()
    root, _ = common.resolve_data(args.data)
    print(f"machine: {machine}; data {root}", flush=True)
    rows = []
    for loss in ("ce", "dice", "ce+dice"):
        out = f"runs/bench_seg_loss_{loss.replace('+', '_')}"
        t = time.time()
        seg_train.train(data=root, arch=args.arch, out=out, img_size=args.img_size, epochs=args.epochs,
                        width=args.width, loss=loss, overwrite=True, verbose=2)
        m = common.read_json(os.path.join(out, "metrics.json"))
        rows.append(dict(loss=loss, val_dice=m["val_dice"], val_miou=m["val_miou"], minutes=(time.time() - t) / 60))
    result = dict(machine=machine, data=args.data, arch=args.arch, img_size=args.img_size, epochs=args.epochs,
                  width=args.width, rows=rows)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    common.write_json(os.path.join(HERE, "results", "seg_loss.json"), result)
    print(f"\n{args.arch} at {args.img_size} px, {args.epochs} epochs on {args.data}, validation split:\n")
    print("| loss | val seg Dice | val mIoU | minutes |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['loss']} | {r['val_dice']:.3f} | {r['val_miou']:.3f} | {r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
