"""Benchmark: train perturbation generators against the models trained on ../shared/proxy by
bench/train_proxy.py and compare them with FGSM and PGD-10 at the same budget, on held-out
images (the validation split of the target run).

    KERAS_HOME=../shared/keras_home python bench/attack_proxy.py [--only cls_targeted seg_targeted]

Writes runs/bench_attack_<goal>/ (generator, metrics, panel) and bench/results/attack_proxy.json,
and prints a table.
"""

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import attack  # noqa: E402

# goal: attack.run arguments (sized for about an hour in all on a 2-core CPU)
RUNS = {
    "cls_targeted": dict(target="runs/bench_cls_mobilenetv2", goal="cls_targeted", target_class="aeroplane",
                         transfer="runs/bench_cls_scratch", epochs=25),
    "seg_targeted": dict(target="runs/bench_seg_mobilenetv2_unet", goal="seg_targeted", target_class="chair",
                         epochs=10, max_train=320),
    "cls_untargeted": dict(target="runs/bench_cls_mobilenetv2", goal="cls_untargeted",
                           transfer="runs/bench_cls_scratch", epochs=10, max_train=320),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(RUNS), help="default: all, one after another")
    p.add_argument("--epochs", type=int, help="override the generator epochs")
    p.add_argument("--max-train", type=int, help="override the number of training images")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf budget in levels out of 255 (default %(default)s)")
    p.add_argument("--width", type=int, default=0,
                   help="generator width (default %(default)s: template only, half the time of width 8 on a CPU)")
    p.add_argument("--lr", type=float, default=3e-3, help="generator learning rate (default %(default)s)")
    p.add_argument("--tag", default="", help="suffix for the run folder and the result key, to keep variants apart")
    args = p.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    print(f"machine: {machine}", flush=True)
    path = os.path.join(HERE, "results", "attack_proxy.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    for name in args.only or list(RUNS):
        kwargs = dict(RUNS[name], eps=args.eps, width=args.width, lr=args.lr,
                      **{k: v for k, v in (("epochs", args.epochs), ("max_train", args.max_train)) if v})
        t = time.time()
        metrics = attack.run(out=f"runs/bench_attack_{name}{args.tag}", overwrite=True, verbose=2, **kwargs)
        results[name + args.tag] = dict(arguments=kwargs, wall_minutes=round((time.time() - t) / 60, 1),
                                        machine=machine, metrics=metrics)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        json.dump(results, open(path, "w"), indent=2)
    print("\n| goal | method | success | target score before -> after | L-inf mean/max (/255) | PSNR dB | SSIM "
          "| ms/image | transfer success |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for method, m in r["metrics"]["held_out"].items():
            transfer = m.get("transfer_success_rate")
            print(f"| {name} -> {r['metrics']['target_class'] or 'lose labels'} | {method} | {m['success_rate']:.3f} "
                  f"| {m['score_before']:.3f} -> {m['score_after']:.3f} "
                  f"| {m['linf_mean_255']:.2f}/{m['linf_max_255']:.2f} | {m['psnr_mean']:.1f} | {m['ssim_mean']:.3f} "
                  f"| {m['ms_per_image']:.0f} "
                  f"| {'-' if transfer is None else f'{transfer:.3f}'} |")


if __name__ == "__main__":
    main()
