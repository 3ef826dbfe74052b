"""Benchmark: per-image cost of a saved generator against PGD-10 at the same budget (issue 13:
at test time the generator must be at least 10x faster than PGD-10 per image). For each run
folder of attack.py, on its held-out images: the generator as attack.run evaluates it (the
compiled GeneratorAttack.predict_on_batch, one target encoder forward per image) and PGD-10
(`attack.gradient_attack`, 11 target forwards and 10 backwards per image) compiled, as attack.run
evaluates it since 2026-12-01, and run eagerly (`pgd10_eager`; the rows recorded before timed only
that, as `pgd10`), all timed by
`attack.evaluate` in batches of 16 after an untimed warm-up call per batch shape.

    KERAS_HOME=../shared/keras_home python bench/attack_speed.py runs/bench_attack_cls_untargeted_eps8_gated

Writes bench/results/attack_speed.json (one entry per run folder) and prints a table; run it
alone (the numbers are wall-clock times).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import attack  # noqa: E402,I001
import keras  # noqa: E402
from attack_refine import load_run, record  # noqa: E402


def time_run(run):
    """Time the generator, PGD-10 compiled and PGD-10 run eagerly on one run folder's held-out
    images; returns {method: evaluate's summary}."""
    goal, val, eps, l2, _ = load_run(run)
    generator = keras.models.load_model(os.path.join(run, "generator.keras"), safe_mode=True)
    pgd10 = lambda x: x + attack.gradient_attack(goal, x, eps, l2, steps=10)  # noqa: E731
    methods = {"generator": attack.GeneratorAttack(generator, goal).predict_on_batch,
               "pgd10": attack.compiled(pgd10, goal.config["img_size"]), "pgd10_eager": pgd10}
    return {name: attack.evaluate(goal, val, craft)[0] for name, craft in methods.items()}


def main(runs):
    results = record("attack_speed.json", time_run, runs)
    print("\n| run | PGD-10 compiled / generator | PGD-10 eager / generator |\n|---|---|---|")
    for run, r in results.items():
        gen = r["generator"]["ms_per_image"]
        if "pgd10_eager" in r:
            compiled = f"{r['pgd10']['ms_per_image'] / gen:.1f}x"
            eager = f"{r['pgd10_eager']['ms_per_image'] / gen:.1f}x"
        else:  # recorded before 2026-12-01 evening, when PGD-10 ran eagerly
            compiled, eager = "", f"{r['pgd10']['ms_per_image'] / gen:.1f}x"
        print(f"| {run} | {compiled} | {eager} |")


if __name__ == "__main__":
    main(sys.argv[1:])
