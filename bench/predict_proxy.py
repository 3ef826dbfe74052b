"""Benchmark: the joint competition score of a classifier + segmenter pair on the validation split
both runs held out of ../shared/proxy, for each test-time augmentation and each fusion rule, then
a submission.csv for the proxy's test images with the chosen settings.

    KERAS_HOME=../shared/keras_home python bench/predict_proxy.py \
        --cls runs/bench_cls_mobilenetv2 --seg runs/bench_seg_mobilenetv2_unet

The probabilities are computed once per TTA setting and every fusion rule is applied to the same
probabilities, so the rows differ only by the rule. The rows have no void band (predict.fuse's
default; predict.py's --void-band came later); the test submission uses predict.py's defaults.
Writes runs/bench_predict/ (submissions, scores) and bench/results/predict_proxy.json, and prints
a table.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import common  # noqa: E402,I001
import cls_train  # noqa: E402
import predict  # noqa: E402
import seg_train  # noqa: E402

CLS_TTAS = [(), ("cls-flip",)]
SEG_TTAS = [(), ("seg-flip",), ("seg-flip", "scales")]
RULESETS = [(), ("drop",), ("add",), ("small",), ("agree",), ("drop", "agree"), ("drop", "small")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "proxy"))
    p.add_argument("--cls", default="runs/bench_cls_mobilenetv2")
    p.add_argument("--seg", default="runs/bench_seg_mobilenetv2_unet")
    p.add_argument("--out", default="runs/bench_predict")
    p.add_argument("--test-tta", default="seg-flip", help="TTA for the test submission (default %(default)s)")
    p.add_argument("--test-fuse", default="drop",
                   help="fusion rules for the test submission (default %(default)s)")
    args = p.parse_args()
    machine = common.machine()
    print(f"machine: {machine}; data {args.data}; cls {args.cls}; seg {args.seg}", flush=True)
    os.makedirs(args.out, exist_ok=True)

    cls_model, cls_config, thresholds = cls_train.load_classifier(args.cls)
    seg_model, seg_config = common.load_run(args.seg, "segmentation")
    val = predict.pick_split(args.data, "val", cls_config, seg_config)
    truth = predict.solution_for(val, "val", args.out)
    examples = common.load_examples(val, masks=False)
    images = [im for im, _ in examples]
    cls_probs = {tta: cls_train.predict_probs(cls_model, val, examples, cls_config, flip=bool(tta))
                 for tta in CLS_TTAS}
    rows = []
    for seg_tta in SEG_TTAS:
        scales = (0.75, 1.0, 1.25) if "scales" in seg_tta else (1.0,)
        results = {(cls_tta, rules): ([], []) for cls_tta in CLS_TTAS for rules in RULESETS}
        for i, seg_probs in enumerate(seg_train.segment(seg_model, images, seg_config["img_size"], scales,
                                                        "seg-flip" in seg_tta)):
            for (cls_tta, rules), (labels, masks) in results.items():
                # labels by the tuned thresholds, as when these results were recorded (before expected-dice)
                y, m = predict.fuse(cls_probs[cls_tta][i], cls_train.decide(cls_probs[cls_tta][i][None], thresholds)[0],
                                    seg_probs, rules, size=images[i].shape[:2])
                labels.append(y)
                masks.append(m)
        for (cls_tta, rules), (labels, masks) in results.items():
            tta = "+".join(cls_tta + seg_tta) or "none"
            fuse = "+".join(rules) or "none"
            path = common.write_submission(os.path.join(args.out, f"val_tta-{tta}_fuse-{fuse}.csv"),
                                           val.ids, labels, masks)
            s = common.score_submission(path, truth)
            rows.append(dict(tta=tta, fuse=fuse, **s))
            print(f"tta {tta:24s} fuse {fuse:10s} classification {s['classification']:.4f}  "
                  f"segmentation {s['segmentation']:.4f}  joint {s['score']:.4f}", flush=True)

    items = lambda s: tuple(x for x in s.split(",") if x and x != "none")  # noqa: E731
    t = time.time()
    _, submission = predict.run(args.data, args.cls, args.seg, os.path.join(args.out, "test"), "test",
                                items(args.test_tta), fuse_rules=items(args.test_fuse), overwrite=True)
    test = dict(submission=submission, seconds=round(time.time() - t, 1), tta=args.test_tta, fuse=args.test_fuse)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    common.write_json(os.path.join(HERE, "results", "predict_proxy.json"),
                      dict(machine=machine, cls=args.cls, seg=args.seg, val_images=len(val), rows=rows, test=test))
    print(f"\nvalidation split of {args.data}: {len(val)} images\n")
    print("| TTA | fusion | classification | segmentation | joint |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tta']} | {r['fuse']} | {r['classification']:.4f} | {r['segmentation']:.4f} | {r['score']:.4f} |")
    print(f"\ntest submission: {submission} ({test['seconds']} s)")


if __name__ == "__main__":
    main()
