"""Decision rules and averaged classifiers on unseen photos (issue 16, item 2). No training.

On each held-out draw of bench/holdout_proxy.py, the classifiers it already trained (the bench
arguments and its training variants, all with the same internal validation split, seed 0), alone
and averaged (mean class probabilities), turn probabilities into labels by three rules:
  per-class thresholds  tuned on the validation split (cls_train.tune_thresholds; a run alone
                        keeps its thresholds.json: this reproduces holdout_proxy's "classifier alone")
  shared threshold      one threshold for every class, tuned on the validation split
  expected-dice         cls_train.expected_dice_labels: nothing tuned (predict.py's default since 2026-12-01)
  expected-dice, weights undone   the same on probabilities with the positive-class weights of
                        the bce loss undone (odds / weight)
and the held-out photos are scored with the competition's rule.

    KERAS_HOME=../shared/keras_home python bench/cls_decisions.py --seeds 1 2 3 --members "" img_288 asl
    KERAS_HOME=../shared/keras_home python bench/cls_decisions.py --seeds 1 2 3 4 5 --members "" img_288

Writes bench/results/cls_decisions.json (one entry per seeds-and-members command) and prints a table.
"""

import argparse
import itertools
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import common  # noqa: E402,I001
import cls_train  # noqa: E402
import holdout_proxy  # noqa: E402


def decisions(val, held, val_truth, thresholds=None, weights=None):
    """{rule: (val labels, held-out labels)} for one set of probabilities: per-class thresholds
    tuned on val (or the member's own), one shared threshold tuned on val, the expected-Dice rule,
    and (with `weights`, the (20,) positive-class weights the runs trained with) the expected-Dice
    rule on probabilities with the weights undone (odds divided by the class's weight: the
    probabilities an unweighted bce loss would aim at)."""
    tuned = thresholds if thresholds is not None else cls_train.tune_thresholds(val, val_truth)[0]
    shared = cls_train.tune_thresholds(val, val_truth, passes=0)[0]
    out = {}
    for rule, decide in (("per-class thresholds", lambda p: cls_train.decide(p, tuned)),
                         ("shared threshold", lambda p: cls_train.decide(p, shared)),
                         ("expected-dice", cls_train.expected_dice_labels)):
        out[rule] = decide(val), decide(held)
    if weights is not None:
        unweighted = lambda p: p / (p + (1 - p) * weights[None])  # noqa: E731
        out["expected-dice, weights undone"] = tuple(cls_train.expected_dice_labels(unweighted(p)) for p in (val, held))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "proxy"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--members", nargs="+", default=["", "img_288", "asl"],
                   help="training variants of holdout_proxy ('' for the bench arguments)")
    args = p.parse_args()
    proxy = common.load_split(args.data, "train")
    results = {}
    for seed in args.seeds:
        data = os.path.join(holdout_proxy.draw_root(seed), "data")
        held = common.train_val_split(proxy.labels, holdout_proxy.HOLDOUT_FRACTION, seed)[1]
        assert [proxy.ids[i] for i in held] == common.load_split(data, "test").ids, "the draw's folder is another draw"
        held_truth = proxy.labels[held] > 0
        probs = {m: holdout_proxy.classifier_probs(os.path.join(holdout_proxy.draw_root(seed, m or None), "cls"), data)
                 for m in args.members}
        val_split = probs[args.members[0]][0]
        assert all(v[0].ids == val_split.ids for v in probs.values()), "members must share their validation split"
        val_truth = val_split.labels > 0
        train = common.load_split(data, "train")
        val_ids = set(val_split.ids)
        trained_on = train.labels[[k for k, i in enumerate(train.ids) if i not in val_ids]]
        weights = cls_train.positive_weights(trained_on)  # as cls_train computed them for these runs
        rows = {}
        for k in range(1, len(args.members) + 1):
            for combo in itertools.combinations(args.members, k):
                val = np.mean([probs[m][1] for m in combo], 0)
                held_probs = np.mean([probs[m][2] for m in combo], 0)
                own = probs[combo[0]][3] if k == 1 else None  # a single run keeps its thresholds.json
                for rule, (v, h) in decisions(val, held_probs, val_truth, own, weights).items():
                    name = "+".join(m or "bench" for m in combo) + f" | {rule}"
                    rows[name] = dict(val_dice=common.classification_dice(v, val_truth),
                                      held_out_dice=common.classification_dice(h, held_truth))
                    print(f"draw {seed} | {name} | val {rows[name]['val_dice']:.3f} | held-out "
                          f"{rows[name]['held_out_dice']:.3f}", flush=True)
        results[f"seed{seed}"] = rows
    path = os.path.join(HERE, "results", "cls_decisions.json")
    saved = common.read_json(path) if os.path.isfile(path) else {}
    saved[f"seeds {' '.join(map(str, args.seeds))}; members {' '.join(m or 'bench' for m in args.members)}"] = results
    common.write_json(path, saved)
    print("\n| members | decision | val (mean) | held-out, mean over draws | per draw |\n|---|---|---|---|---|")
    for name in results[f"seed{args.seeds[0]}"]:
        per = [results[f"seed{s}"][name]["held_out_dice"] for s in args.seeds]
        val = np.mean([results[f"seed{s}"][name]["val_dice"] for s in args.seeds])
        print(f"| {name} | {val:.3f} | {np.mean(per):.3f} | {', '.join(f'{x:.3f}' for x in per)} |")


if __name__ == "__main__":
    main()
