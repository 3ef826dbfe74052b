"""run_all.py: the whole job in one call on tiny demo data (tiny sizes, one epoch each)."""

import os

import pytest

import common
import run_all

TINY = {
    "cls": dict(model="scratch", img_size=32, epochs=1, width=8, batch_size=8),
    "seg": dict(model="unet", img_size=32, epochs=1, width=8, batch_size=8),
    "attack": dict(goal="cls_targeted", eps=8.0, epochs=1, width=8, batch_size=8),
}


@pytest.mark.slow
def test_whole_job_writes_a_valid_scored_submission_and_summary(demo_dir, tmp_path):
    out = str(tmp_path / "all")
    summary = run_all.run(demo_dir, out, plan=TINY, verbose=0)
    submission = os.path.join(out, "predict", "submission.csv")
    test = common.load_split(demo_dir, "test")
    rows = common.read_submission(submission)
    assert len(rows) == 2 * len(test)
    common.validate_rows([(r["Id"], r["Predicted"]) for r in rows], test.ids)
    for name, scores in (("predict", summary["test"]), ("predict_val", summary["val"])):
        written = common.read_json(os.path.join(out, name, "scores.json"))
        assert {k: v for k, v in written.items() if k != "truth"} == scores
        assert scores["score"] == pytest.approx((scores["classification"] + scores["segmentation"]) / 2, abs=1e-12)
    # the stages fit together: on the validation images both runs held out, the submission's
    # classification half is the Dice the classifier measured with its tuned thresholds
    assert summary["val"]["images"] == summary["cls"]["val_images"]
    assert summary["val"]["classification"] == pytest.approx(summary["cls"]["val_dice_tuned"], abs=1e-9)
    text = open(os.path.join(out, "summary.md")).read()
    for figure in ("cls/curves.png", "seg/gallery.png", "attack/panel.png", "predict/gallery.png"):
        assert os.path.isfile(os.path.join(out, figure)) and f"({figure})" in text
    assert f"joint {summary['test']['score']:.3f}" in text
