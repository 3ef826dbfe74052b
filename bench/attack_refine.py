"""Probe: what a trained generator's perturbation lacks, without retraining. For each run folder
of attack.py, on the same held-out images and by the same rule as attack.py:

- as trained: the generator alone (one target encoder pass per image);
- eps * sign(delta): projected onto the corner of the L-inf ball (the generator's L-inf bound,
  eps * tanh(2 raw / rms), uses about 80% of the budget at a typical pixel), then onto the L2
  ball if the run has one;
- generator + k refinement steps (k = 1, 2): the generator's perturbation refined by k signed
  gradient steps of eps / 4 on the images not fooled yet (`attack.gradient_attack` with a
  start), a hybrid (k + 2 target forwards and k backwards per image), beside PGD-k from zero
  (k + 1 forwards, k backwards), so the gain of the generator's start is visible at equal
  backward passes (one forward more).

    KERAS_HOME=../shared/keras_home python bench/attack_refine.py runs/bench_attack_cls_targeted_eps16_b8_57min

Writes bench/results/attack_refine.json (one entry per run folder) and prints a table.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import attack  # noqa: E402,I001
import common  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def load_run(run):
    """One attack.py run folder: (goal, held-out images, eps, l2, delta_of), delta_of(x) the saved
    generator's perturbation of a batch, pixel units."""
    metrics = common.read_json(os.path.join(run, "metrics.json"))
    goal_name, cls = metrics["goal"], metrics["target_class"]
    generator = keras.models.load_model(os.path.join(run, "generator.keras"), safe_mode=True)
    goal = attack.load_target(metrics["target_run"], goal_name, cls)
    _, val = attack.attack_images(goal.config, None, True, cls if goal_name == "cls_targeted" else None,
                                  metrics["held_out_images"])

    def delta_of(x):
        return generator([x, goal.condition(len(x))], training=False)

    return goal, val, metrics["eps_255"], metrics["l2_radius"], delta_of


def record(file_name, evaluate_run, runs):
    """Evaluate each run folder with evaluate_run(run) -> {variant: evaluate's summary}, keep the
    results in bench/results/<file_name> (one entry per run folder), print them as a table and
    return them all."""
    path = os.path.join(HERE, "results", file_name)
    results = common.read_json(path) if os.path.isfile(path) else {}
    for run in runs:
        results[os.path.basename(run.rstrip("/"))] = evaluate_run(run)
        common.write_json(path, results)
    print("\n| run | variant | held-out success [95% CI] | PSNR mean dB | ms/image |\n|---|---|---|---|---|")
    for run, rows in results.items():
        for name, r in rows.items():
            lo, hi = r["success_95ci"]
            print(f"| {run} | {name} | {r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] | {r['psnr_mean']:.1f} "
                  f"| {r['ms_per_image']:.0f} |")
    return results


def main(run, steps=(1, 2)):
    """Evaluate the variants above for one run folder; returns {variant: evaluate's summary}."""
    goal, val, eps, l2, delta_of = load_run(run)
    variants = {"as trained": lambda x: attack.perturb(x, delta_of(x)),
                "eps * sign(delta)": lambda x: attack.perturb(x, attack.project(eps * tf.sign(delta_of(x)), eps, l2))}
    for k in steps:
        variants[f"pgd{k} from zero"] = lambda x, k=k: x + attack.gradient_attack(goal, x, eps, l2, steps=k)
        variants[f"generator + {k} refinement steps (hybrid)"] = lambda x, k=k: x + attack.gradient_attack(
            goal, x, eps, l2, steps=k, start=attack.perturb(x, delta_of(x)) - x)
    out = {}
    for name, craft in variants.items():
        out[name], _ = attack.evaluate(goal, val, craft)
        print(attack.summary_line(name, out[name]), flush=True)
    return out


if __name__ == "__main__":
    record("attack_refine.json", main, sys.argv[1:])
