"""Probe: a trained generator's perturbation projected onto the corner of the L-inf ball,
eps * sign(delta), judged on the same held-out images as attack.py does. The generator's bound
(eps * tanh(2 raw / rms)) uses about 80% of the budget at a typical pixel; this measures what the
remaining 20% would buy without retraining.

    KERAS_HOME=../shared/keras_home python bench/attack_sign_check.py runs/bench_attack_cls_untargeted_eps8_40ep
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import attack  # noqa: E402,I001
import common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402


def main(run):
    metrics = common.read_json(os.path.join(run, "metrics.json"))
    goal_name, cls, eps = metrics["goal"], metrics["target_class"], metrics["eps_255"]
    generator = keras.models.load_model(os.path.join(run, "generator.keras"), safe_mode=True)
    goal = attack.load_target(metrics["target_run"], goal_name, cls)
    _, val = attack.attack_images(goal.config, None, True, cls if goal_name == "cls_targeted" else None, None)

    def craft(x, sign):
        delta = generator.predict([x, goal.condition(len(x))], verbose=0, batch_size=16)
        return attack.perturb(x, eps * np.sign(delta) if sign else delta)

    for sign in (False, True):
        r, _ = attack.evaluate(goal, val, lambda x, s=sign: craft(x, s))
        lo, hi = r["success_95ci"]
        print(f"{run}: {'eps * sign(delta)' if sign else 'as trained      '} held-out success "
              f"{r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}], PSNR {r['psnr_mean']:.1f} dB", flush=True)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        main(path)
