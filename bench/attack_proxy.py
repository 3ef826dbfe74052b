"""Benchmark: train perturbation generators against the models trained on ../shared/proxy by
bench/train_proxy.py and compare them with a random-noise control, FGSM and PGD-10 at the same
budget, on held-out images (the validation split of the target run).

    KERAS_HOME=../shared/keras_home python bench/attack_proxy.py [--only cls_targeted seg_targeted]

Writes runs/bench_attack_<name>/ (generator, metrics, log.csv with the learning curve, panel) and
bench/results/attack_proxy.json, and prints a table.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import attack  # noqa: E402
import common  # noqa: E402

# the stored results were measured against the 224-pixel classifier, train_proxy.py's until 2026-12-03 (288 px since;
# not yet attacked)
CLS, SEG = "runs/bench_cls_mobilenetv2", "runs/bench_seg_mobilenetv2_unet"
# name: attack.run arguments; epochs sized for the 60 minutes of generator training per
# goal on a 2-core CPU
RUNS = {
    "cls_targeted_eps16": dict(target=CLS, goal="cls_targeted", target_class="aeroplane", eps=16.0, epochs=30,
                               budgets=[4.0, 8.0, 12.0]),
    "cls_untargeted_eps8": dict(target=CLS, goal="cls_untargeted", eps=8.0, epochs=10, budgets=[16.0]),
    # the 10-epoch curve was still rising when the cosine schedule ended: same run, 4x the schedule
    "cls_untargeted_eps8_40ep": dict(target=CLS, goal="cls_untargeted", eps=8.0, epochs=40, budgets=[4.0, 12.0, 16.0]),
    "seg_targeted_eps16": dict(target=SEG, goal="seg_targeted", target_class="chair", eps=16.0, epochs=10,
                               max_train=320, max_eval=100, budgets=[4.0, 8.0, 12.0]),
    # probe: is the plateau (training success = held-out) capacity? the 10-epoch run at twice the width
    "cls_untargeted_eps8_w32": dict(target=CLS, goal="cls_untargeted", eps=8.0, epochs=10, width=32),
    # trained at 8/255 (the generator trained at 16/255 and rescaled to 8/255 got 6%)
    "cls_targeted_eps8": dict(target=CLS, goal="cls_targeted", target_class="aeroplane", eps=8.0, epochs=10,
                              budgets=[16.0]),
    "cls_targeted_eps16_psnr35": dict(target=CLS, goal="cls_targeted", target_class="aeroplane", eps=16.0,
                                      psnr_min=35.0, epochs=10),
    # batch 8 instead of 16 (twice the steps for the same image-gradients: +0.04 held-out in a 10-epoch
    # probe), the epochs fitted to a time limit so the schedule decays fully. Outcome: untargeted 0.715
    # (below the 40-epoch batch-16 run's 0.742), aeroplane 0.781 (above the 30-epoch run's 0.753)
    "cls_untargeted_eps8_b8": dict(target=CLS, goal="cls_untargeted", eps=8.0, epochs=80, time_limit=42.0,
                                   batch_size=8, budgets=[4.0, 12.0, 16.0]),
    "cls_targeted_eps16_b8": dict(target=CLS, goal="cls_targeted", target_class="aeroplane", eps=16.0, epochs=80,
                                  time_limit=42.0, batch_size=8, budgets=[8.0]),
    # the log(1 + loss) loss (a 10-epoch untargeted probe: 0.583 vs 0.523 for the linear margin) and the issue's
    # whole 60 minutes of generator training (57 min: the last epoch is planned at the median pace)
    "cls_targeted_eps16_log": dict(target=CLS, goal="cls_targeted", target_class="aeroplane", eps=16.0, epochs=80,
                                   time_limit=57.0, batch_size=8, margin_loss="log", budgets=[8.0]),
    "cls_untargeted_eps8_log": dict(target=CLS, goal="cls_untargeted", eps=8.0, epochs=80, time_limit=52.0,
                                    batch_size=8, margin_loss="log", budgets=[4.0, 12.0, 16.0]),
    # the best settings of each goal again, with the whole 57 minutes (aeroplane: 47 epochs, 0.781, the same
    # as in 42 minutes; untargeted: not run yet)
    "cls_targeted_eps16_b8_57min": dict(target=CLS, goal="cls_targeted", target_class="aeroplane", eps=16.0,
                                        epochs=150, time_limit=57.0, batch_size=8, budgets=[4.0, 8.0, 12.0]),
    # the gated decoder (`--gate`: the decoder's state gated by where the target's units are active, as a
    # gradient is; a 10-epoch probe led by up to 0.09 at epochs 4-7 and ended level, 0.589 vs 0.583), over the
    # log run's schedule and over a 45-minute aeroplane one, with the one-step refinement (a labelled hybrid)
    # measured beside it. Outcome: untargeted 0.788 (0.748 without), aeroplane 0.753 (0.781 without)
    "cls_untargeted_eps8_gated": dict(target=CLS, goal="cls_untargeted", eps=8.0, epochs=80, time_limit=52.0,
                                      batch_size=8, margin_loss="log", gate=True, hybrid_steps=1,
                                      budgets=[4.0, 12.0, 16.0]),
    "cls_targeted_eps16_gated": dict(target=CLS, goal="cls_targeted", target_class="aeroplane", eps=16.0, epochs=150,
                                     time_limit=45.0, batch_size=8, gate=True, hybrid_steps=1, budgets=[8.0]),
    # the gated untargeted run was still creeping up (0.77 -> 0.79 over its last 4k image-gradients): the same
    # run with the whole 60 minutes (57 min: the last epoch is planned at the median pace). Outcome: 0.801
    "cls_untargeted_eps8_gated_57min": dict(target=CLS, goal="cls_untargeted", eps=8.0, epochs=150, time_limit=57.0,
                                            batch_size=8, margin_loss="log", gate=True, hybrid_steps=1,
                                            budgets=[4.0, 12.0, 16.0]),
    # the confidence kappa (`--confidence 1`, Carlini & Wagner): the 57-minute aeroplane generator's held-out
    # failures are near misses (median margin 1.1 logits, a quarter under 0.55), so train it to pass by one
    # logit; 42 minutes, as the batch-8 aeroplane run that reached 0.781. Outcome: 0.836
    "cls_targeted_eps16_conf1": dict(target=CLS, goal="cls_targeted", target_class="aeroplane", eps=16.0, epochs=150,
                                     time_limit=42.0, batch_size=8, confidence=1.0, hybrid_steps=1, budgets=[8.0]),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(RUNS), help="default: all, one after another")
    p.add_argument("--epochs", type=int, help="override the generator epochs")
    p.add_argument("--max-eval", type=int, help="evaluate on at most this many held-out images")
    p.add_argument("--report", action="store_true", help="only print the table of the saved results")
    args = p.parse_args()
    machine = common.machine()
    print(f"machine: {machine}", flush=True)
    path = os.path.join(HERE, "results", "attack_proxy.json")
    results = common.read_json(path) if os.path.isfile(path) else {}
    for name in [] if args.report else args.only or list(RUNS):
        kwargs = dict(RUNS[name], **{k: v for k, v in (("epochs", args.epochs), ("max_eval", args.max_eval)) if v})
        t = time.time()
        metrics = attack.run(out=f"runs/bench_attack_{name}", overwrite=True, verbose=2, **kwargs)
        curve = common.read_log(f"runs/bench_attack_{name}/log.csv")
        curve = {k: curve[k] for k in ("image_gradients", "val_attack_loss", "val_success")}
        results[name] = dict(arguments=kwargs, wall_minutes=round((time.time() - t) / 60, 1), machine=machine,
                             learning_curve=curve, metrics=metrics)
        common.write_json(path, results)
    print("\n| run | method | held-out success [95% CI] | score before -> after | L-inf max /255 | PSNR mean/min dB "
          "| ms/image | target fwd/bwd per image |\n|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for method, m in r["metrics"]["held_out"].items():
            lo, hi = m["success_95ci"]
            print(f"| {name} | {method} | {m['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] "
                  f"| {m['score_before']:.3f} -> {m['score_after']:.3f} | {m['linf_max_255']:.1f} "
                  f"| {m['psnr_mean']:.1f}/{m['psnr_min']:.1f} | {m['ms_per_image']:.0f} "
                  f"| {m['target_forward_per_image']}/{m['target_backward_per_image']} |")
    for name, r in results.items():
        if r["metrics"]["budget_table"]:
            columns = list(next(iter(r["metrics"]["budget_table"].values())))
            print(f"\n{name}: success (and mean score after) vs L-inf budget (held-out)\n| budget /255 | " +
                  " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
            for b, row in sorted(r["metrics"]["budget_table"].items(), key=lambda kv: float(kv[0])):
                print(f"| {b} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
        c = r["learning_curve"]
        print(f"\n{name}: held-out success by training image-gradients: " + ", ".join(
            f"{g:.0f}: {s:.3f}" for g, s in zip(c["image_gradients"], c["val_success"])))


if __name__ == "__main__":
    main()
