"""run_all.py: the whole job in one call on tiny demo data (tiny sizes, one epoch each), and the
report notebook it writes."""

import base64
import io
import os
import time

import pytest

import common
import run_all

TINY = {  # the classifier and segmenter as conftest.tiny_runs trains them
    "cls": dict(arch="scratch", img_size=32, epochs=1, width=8, batch_size=8),
    "seg": dict(arch="unet", img_size=64, epochs=1, width=8, batch_size=4),
    "attack": dict(goal="cls_targeted", eps=8.0, epochs=1, width=8, batch_size=8),
}


@pytest.mark.slow
def test_whole_job_writes_a_valid_scored_submission_and_summary(demo_dir, tiny_runs, tmp_path, capfd):
    out = str(tmp_path / "all")
    summary = run_all.run(demo_dir, out, plan=TINY, verbose=0)
    # without a GPU the training stages ran side by side in two processes, their lines prefixed,
    # with exactly the results of the same stages trained one after the other in this process
    # (conftest.tiny_runs)
    assert summary["side_by_side"] == run_all.side_by_side_possible()
    printed = capfd.readouterr().out  # the worker processes write to file descriptor 1
    if summary["side_by_side"]:
        assert "[classifier] === classifier ===" in printed and "[segmenter] val mIoU" in printed
    for name, reference in zip(("cls", "seg"), tiny_runs):
        assert common.read_json(os.path.join(out, name, "metrics.json")) == \
            common.read_json(os.path.join(reference, "metrics.json")), name
    assert common.read_json(os.path.join(out, "cls", "thresholds.json")) == \
        common.read_json(os.path.join(tiny_runs[0], "thresholds.json"))
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
    # classification half is the Dice the classifier measured with the expected-Dice rule
    assert summary["val"]["images"] == summary["cls"]["val_images"]
    assert summary["val"]["classification"] == pytest.approx(summary["cls"]["val_dice_expected_dice"], abs=1e-9)
    text = open(os.path.join(out, "summary.md")).read()
    for figure in ("cls/curves.png", "seg/gallery.png", "attack/panel.png", "predict/gallery.png"):
        assert os.path.isfile(os.path.join(out, figure)) and f"({figure})" in text
    assert f"joint {summary['test']['score']:.3f}" in text
    assert f"(expected-Dice rule, predict.py's labels) | {summary['cls']['val_dice_expected_dice']:.3f} " in text
    check_report(out, demo_dir, tmp_path)


@pytest.mark.slow
def test_a_failing_stage_stops_the_other_side_by_side(demo_dir, tmp_path):
    """The classifier fails at once (an unknown architecture) while the segmenter would train: the
    run raises the classifier's one-line error without waiting for the segmenter, and leaves no
    folder; asking for side by side where it is impossible is refused."""
    if not run_all.side_by_side_possible():
        with pytest.raises(common.UserError, match="side_by_side needs"):
            run_all.run(demo_dir, str(tmp_path / "refused"), plan=TINY, side_by_side=True)
        return
    plan = dict(TINY, cls=dict(TINY["cls"], arch="nonsense"), seg=dict(TINY["seg"], epochs=300))  # 300+ s
    start = time.time()
    with pytest.raises(common.UserError, match="unknown --arch 'nonsense'"):
        run_all.run(demo_dir, str(tmp_path / "failed"), plan=plan, verbose=0)
    assert time.time() - start < 100  # the segmenter's worker was stopped, not waited for
    assert not os.path.exists(tmp_path / "failed")


def check_report(out, demo_dir, tmp_path):
    """report.ipynb is a valid notebook with every figure of the run embedded, the run's numbers in its
    text, and code cells that, run in a real kernel elsewhere, write a valid submission.csv."""
    nbformat = pytest.importorskip("nbformat")  # test-only dependencies (requirements.txt)
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(os.path.join(out, "report.ipynb"), as_version=4)
    nbformat.validate(nb)
    figures = sorted(os.path.relpath(os.path.join(d, f), out).replace(os.sep, "_").rsplit(".", 1)[0]
                     for d, _, files in os.walk(out) for f in files if f.endswith(".png"))
    embedded = sorted(name.rsplit(".", 1)[0] for c in nb.cells for name in c.get("attachments", {}))
    assert embedded == figures and len(figures) == 9
    for c in nb.cells:
        for name, data in c.get("attachments", {}).items():
            assert f"(attachment:{name})" in c.source
            (mime, b64), = data.items()
            picture = common.Image.open(io.BytesIO(base64.b64decode(b64)))
            assert picture.format == mime.split("/")[1].upper() and min(picture.size) > 100
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    cls = common.read_json(os.path.join(out, "cls", "metrics.json"))
    att = common.read_json(os.path.join(out, "attack", "metrics.json"))
    assert f"| Dice at tuned thresholds (tuned on these images: optimistic) | {cls['val_dice_tuned']:.3f} |" in text
    assert f"{att['held_out']['pgd10']['success_rate']:.1%}" in text
    # the report can be rebuilt from the run folder alone, identically
    before = open(os.path.join(out, "report.ipynb")).read()
    assert run_all.main(["--report-only", "--out", out]) is None
    assert open(os.path.join(out, "report.ipynb")).read() == before
    work = tmp_path / "kaggle_working"  # holds none of the project's files
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = nbformat.v4.new_notebook(cells=[c for c in nb.cells if c.cell_type == "code"])
    nbclient.NotebookClient(code, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute(env=env)
    test = common.load_split(demo_dir, "test")
    common.validate_submission(str(work / "submission.csv"), test.ids)
    scores = common.score_submission(str(work / "submission.csv"), os.path.join(demo_dir, "solution.csv"))
    assert scores == common.score_submission(os.path.join(out, "predict", "submission.csv"),
                                             os.path.join(demo_dir, "solution.csv"))


def test_report_only_names_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(common.UserError, match="not a finished run of run_all.py: no cls/metrics.json"):
        run_all.main(["--report-only", "--out", str(tmp_path)])


def test_training_table_names_the_crop_and_the_first_fine_tuned_layer():
    metrics = dict(epochs_trained=30, best_epoch=28, stopped_by_time_limit=False, val_images=121)
    transfer = dict(arch="mobilenetv2_unet", img_size=384, crop_size=256, fit="letterbox", loss="ce+dice",
                    finetune_from="block_3_expand", devices=dict(global_batch_size=8, lr=2e-3))
    table = run_all.training_table(transfer, metrics)
    assert "384 x 384 pixels (letterbox), trained on 256-pixel crops" in table
    assert "| backbone fine-tuned from layer | `block_3_expand` |" in table
    scratch = dict(transfer, arch="unet", crop_size=384, finetune_from=None)  # no crop, no backbone
    table = run_all.training_table(scratch, metrics)
    assert "crops" not in table and "fine-tuned" not in table
