"""Probe: the step of a refinement that starts from a trained generator's perturbation. For one
attack.py run folder, on its held-out images and by the product's rule: k signed gradient steps
(k = 1, 2) of eps/8, eps/4, eps/2 or eps, taken by every image, or only by the images whose goal
is not reached yet (the form `attack.gradient_attack` uses with a start, at eps/4).

    KERAS_HOME=../shared/keras_home python bench/refine_steps.py runs/bench_attack_cls_targeted_eps16_b8_57min

Writes bench/results/refine_steps.json (one entry per run folder) and prints a table.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import attack  # noqa: E402,I001
import attack_refine  # noqa: E402
import tensorflow as tf  # noqa: E402


def refine(goal, images, start, eps, l2, steps, step_size, every_image):
    """`steps` signed gradient steps of `step_size` from `start`, taken by every image or only by
    those not fooled yet; projected as attack.gradient_attack does. Returns delta."""
    reference = goal.reference(goal.logits(images))
    delta = start
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            z = goal.logits(attack.perturb(images, delta))
            loss = tf.reduce_sum(goal.loss(z, reference))
        step = step_size * tf.sign(tape.gradient(loss, delta))
        if not every_image:
            step *= tf.cast(goal.margin(z, reference) > 0, step.dtype)[:, None, None, None]
        delta = attack.perturb(images, attack.project(delta - step, eps, l2)) - images
    return delta


def main(run):
    """Evaluate every (images, k, step) variant for one run folder; returns {variant: evaluate's summary}."""
    goal, val, eps, l2, delta_of = attack_refine.load_run(run)

    def start(x):
        return attack.perturb(x, delta_of(x)) - x

    out = {}
    for every_image in (True, False):
        for k in (1, 2):
            for fraction in (1 / 8, 1 / 4, 1 / 2, 1):
                which = "every image" if every_image else "not fooled yet"
                name = f"{k} step{'s' if k > 1 else ''} of eps*{fraction:g}, {which}"
                out[name], _ = attack.evaluate(goal, val, lambda x, k=k, f=fraction, e=every_image: x + refine(
                    goal, x, start(x), eps, l2, k, f * eps, e))
                print(attack.summary_line(name, out[name]), flush=True)
    return out


if __name__ == "__main__":
    attack_refine.record("refine_steps.json", main, sys.argv[1:])
