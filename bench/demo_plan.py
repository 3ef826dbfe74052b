"""Benchmark: one change at a time to the quickstart's plan (run_all.QUICK) on the demo data.

    python bench/demo_plan.py cls '{}'                                # the quick plan's classifier as it is
    python bench/demo_plan.py cls '{"img_size": 80}'                  # one change to it
    python bench/demo_plan.py seg '{"epochs": 30}' --data-args '{"n_train": 300}'
    python bench/demo_plan.py --report

Each call trains one stage (cls: cls_train.train; seg: seg_train.train) with run_all.QUICK's
arguments updated by the JSON change, on the demo data (`common.make_demo`, with --data-args for
another size of it), and records its validation numbers (the best epoch's: the classifier's
expected-Dice rule and tuned thresholds, the segmenter's Dice and mIoU at original resolution),
the last epoch's training Dice, seconds, date, machine and the whole plan in
bench/results/demo_plan.json; a rerun of the same plan on the same data replaces its row. No
arguments print the recorded table. Seconds compare only between runs made alone on the same
machine, and even there they drifted by a third from hour to hour.
"""

import argparse
import inspect
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import common  # noqa: E402,I001
import cls_train  # noqa: E402
import run_all  # noqa: E402
import seg_train  # noqa: E402

RESULTS = os.path.join(HERE, "results", "demo_plan.json")


def report(results):
    """Print the recorded runs, by stage and data, each plan shown as its difference from
    run_all.QUICK now (keys either side lacks included)."""
    print("| stage | plan (difference from run_all.QUICK now) | demo data | val Dice | tuned / mIoU | val mAP | "
          "last epoch's train Dice | epochs | s | machine |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(results.values(), key=lambda r: (r["stage"], r["data"])):
        quick = run_all.QUICK[r["stage"]]
        diff = json.dumps({k: r["plan"].get(k, "(absent)") for k in {**quick, **r["plan"]}
                           if quick.get(k) != r["plan"].get(k)})
        val_map = "" if r.get("val_map") is None else f"{r['val_map']:.3f}"
        print(f"| {r['stage']} | `{diff}` | {r['data']} | {r['val_dice']:.3f} | {r['second']:.3f} | {val_map} | "
              f"{r['train_dice']:.3f} | {r['epochs']} | {r['seconds']:.0f} | {r['machine']} |")


def json_dict(parser, text, what):
    """The JSON object `text` as a dict; a parser error naming `what` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"{what} is not JSON ({e}): {text!r}")
    if not isinstance(value, dict):
        parser.error(f"{what} must be a JSON object such as '{{\"epochs\": 30}}', not {text!r}")
    return value


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", choices=["cls", "seg"], help="the stage to train (none: print the report)")
    p.add_argument("change", nargs="?", default="{}", help="JSON object of arguments replacing the quick plan's")
    p.add_argument("--data-args", default="{}", help="JSON object of common.make_demo arguments (default: its own)")
    p.add_argument("--report", action="store_true", help="print the recorded table and exit")
    args = p.parse_args()
    results = common.read_json(RESULTS) if os.path.isfile(RESULTS) else {}
    if args.report or not args.stage:
        report(results)
        return
    change, data_args = json_dict(p, args.change, "the change"), json_dict(p, args.data_args, "--data-args")
    train = cls_train.train if args.stage == "cls" else seg_train.train
    unknown = set(change) - set(inspect.signature(train).parameters)
    if unknown:
        p.error(f"{train.__module__}.train has no argument {', '.join(sorted(unknown))}")
    root = common.make_demo(**data_args)
    out = os.path.join("runs", f"bench_demo_plan_{args.stage}")
    plan = {**run_all.QUICK[args.stage], **change}
    t = time.time()
    train(data=root, out=out, overwrite=True, verbose=2, **plan)
    seconds = time.time() - t
    m = common.read_json(os.path.join(out, "metrics.json"))
    log = common.read_log(os.path.join(out, "log.csv"))
    row = dict(stage=args.stage, change=args.change, plan=plan, data=os.path.basename(root), seconds=seconds,
               epochs=len(log["dice"]), train_dice=float(log["dice"][-1]), machine=common.machine(),
               date=time.strftime("%Y-%m-%d %H:%M"))
    if args.stage == "cls":
        row.update(val_dice=m["val_dice_expected_dice"], second=m["val_dice_tuned"], val_map=m["val_map"])
    else:
        row.update(val_dice=m["val_dice"], second=m["val_miou"])
    key = f"{args.stage} {json.dumps(plan, sort_keys=True)} {row['data']}"
    results[key] = row  # a rerun replaces its row
    common.write_json(RESULTS, results)
    report({key: row})


if __name__ == "__main__":
    main()
