"""The competition contract: RLE, Dice, submission.csv, validator, scorer, metrics, JSON files."""

import glob
import json
import os

import numpy as np
import pytest
from conftest import template_rle_encode

import common


def random_binary_arrays(rng):
    yield np.zeros((20,), np.uint8)
    yield np.ones((20,), np.uint8)
    yield np.zeros((20, 7, 5), np.uint8)
    yield np.ones((20, 7, 5), np.uint8)
    yield np.array([1, 0, 0, 1], np.uint8)  # runs touching both ends
    yield np.array([1], np.uint8)
    yield np.array([0], np.uint8)
    for _ in range(300):
        shape = tuple(rng.integers(1, 12, size=rng.integers(1, 4)))
        density = rng.choice([0.02, 0.3, 0.5, 0.9, 0.99])
        a = (rng.random(shape) < density).astype(np.uint8)
        if rng.random() < 0.3:  # force runs at both ends
            a.flat[0] = a.flat[-1] = 1
        yield a


def test_rle_matches_template_bit_for_bit():
    rng = np.random.default_rng(0)
    n = 0
    for a in random_binary_arrays(rng):
        assert common.rle_encode(a) == template_rle_encode(a)
        assert common.rle_encode(a.astype(bool)) == template_rle_encode(a)
        n += 1
    assert n > 300


def test_rle_known_strings():
    assert common.rle_encode(np.zeros(5)) == ""
    assert common.rle_encode(np.ones(5)) == "1 5"
    assert common.rle_encode(np.array([1, 0, 0, 1, 1])) == "1 1 4 2"
    # C order: rows first
    assert common.rle_encode(np.array([[0, 1], [1, 0]])) == "2 2"


def test_rle_round_trip():
    rng = np.random.default_rng(1)
    for a in random_binary_arrays(rng):
        back = common.rle_decode(common.rle_encode(a), a.shape)
        assert back.dtype == np.uint8 and back.shape == a.shape
        np.testing.assert_array_equal(back, a)


def test_rle_rejects_non_binary_and_malformed():
    with pytest.raises(ValueError):
        common.rle_encode(np.array([0, 2, 1]))
    for bad in ["1", "1 x", "0 3", "2 0", "5 2 3 1", "1 3 2 2", "9 3"]:
        with pytest.raises(ValueError):
            common.rle_decode(bad, (10,))


def test_dice_known_answers():
    assert common.dice([0, 0], [0, 0]) == 1.0
    assert common.dice([1, 0], [0, 0]) == 0.0
    assert common.dice([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert common.dice([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(0.8)
    # from runs, with no decoding, equals the array version
    rng = np.random.default_rng(2)
    for _ in range(200):
        a, b = (rng.random(50) < 0.4), (rng.random(50) < rng.random())
        assert common.rle_dice(common.rle_encode(a), common.rle_encode(b)) == pytest.approx(common.dice(a, b))


def test_classification_dice_is_the_mean_of_each_rows_dice():
    # known answer: rows [1, 0] vs [1, 0] (1.0), both empty (1.0), [1, 1] vs [1, 0] (2/3)
    assert common.classification_dice([[1, 0], [0, 0], [1, 1]], [[1, 0], [0, 0], [1, 0]]) == pytest.approx(8 / 9)
    rng = np.random.default_rng(4)
    for _ in range(200):  # exactly the float64 mean of `dice` per row (threshold tuning compares these)
        n = int(rng.integers(1, 40))
        p, t = rng.random((n, 20)) < rng.random() / 3, rng.random((n, 20)) < rng.random() / 3
        per_row = [common.dice(a, b) for a, b in zip(p, t)]
        assert common.classification_dice_per_image(p, t).tolist() == per_row
        assert common.classification_dice(p, t) == float(np.mean(per_row))


def test_segmentation_dice_is_dice_of_the_class_stack():
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = rng.choice([0, 0, 3, 15, 255], size=(9, 11)).astype(np.uint8)
        p = rng.choice([0, 3, 15, 7], size=(9, 11)).astype(np.uint8)
        want = common.dice(common.seg_stack(p), common.seg_stack(t))
        assert common.segmentation_dice(p, t) == pytest.approx(want)


def make_truth(tmp_path, n=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = list(range(10, 10 + n))
    masks = [rng.choice([0, 1, 5, 15, 255], size=(rng.integers(5, 9), rng.integers(5, 9))).astype(np.uint8)
             for _ in ids]
    labels = [common.labels_from_mask(m) for m in masks]
    path = common.write_submission(str(tmp_path / "solution.csv"), ids, labels, masks, shapes=True)
    return path, ids, labels, masks


def test_write_submission_format(tmp_path):
    mask = np.array([[0, 1], [15, 255]], np.uint8)
    labels = common.labels_from_mask(mask)
    path = common.write_submission(str(tmp_path / "submission.csv"), [7], [labels], [mask])
    text = open(path).read().splitlines()
    assert text[0] == "Id,Predicted"
    assert text[1] == "7_classification,1 1 15 1"
    # stack 20x2x2: class 1 at flat index 1, class 15 at 14*4 + 2 = 58 -> 1-indexed 59
    assert text[2] == "7_segmentation,2 1 59 1"
    assert len(text) == 3


def test_perfect_submission_scores_one_and_empty_scores_zero(tmp_path):
    truth, ids, labels, masks = make_truth(tmp_path)
    pred = common.write_submission(str(tmp_path / "perfect.csv"), ids, labels, masks)
    r = common.score_submission(pred, truth)
    assert r == {"classification": 1.0, "segmentation": 1.0, "score": 1.0, "images": len(ids)}
    empty = common.write_submission(str(tmp_path / "empty.csv"), ids, [np.zeros(20)] * len(ids),
                                    [np.zeros_like(m) for m in masks])
    r = common.score_submission(empty, truth)
    assert r["classification"] == 0.0 and r["segmentation"] == 0.0 and r["score"] == 0.0


def test_scorer_halves_are_means_over_rows(tmp_path):
    truth, ids, labels, masks = make_truth(tmp_path, seed=5)
    wrong = [l.copy() for l in labels]
    wrong[0] = 1 - wrong[0]  # first image's classification row scores 0
    pred = common.write_submission(str(tmp_path / "p.csv"), ids, wrong, masks)
    r = common.score_submission(pred, truth)
    assert r["classification"] == pytest.approx((len(ids) - 1) / len(ids))
    assert r["segmentation"] == 1.0
    assert r["score"] == pytest.approx((2 * len(ids) - 1) / (2 * len(ids)))


def test_scorer_cli(tmp_path, capsys):
    truth, ids, labels, masks = make_truth(tmp_path)
    pred = common.write_submission(str(tmp_path / "p.csv"), ids, labels, masks)
    assert common.run_cli(common.main, ["score", "--pred", pred, "--truth", truth]) == 0
    out = capsys.readouterr().out
    assert "classification 1.0000" in out and "segmentation 1.0000" in out and "score 1.0000" in out


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[:-1], "missing"),
    (lambda rows: rows + [rows[1]], "more than once"),
    (lambda rows: [rows[1], rows[0]] + rows[2:], "order"),
    (lambda rows: rows + [["99_classification", ""]], "unexpected"),
    (lambda rows: [rows[0], [rows[1][0], "3 x"]] + rows[2:], "non-integer"),
    (lambda rows: [rows[0], [rows[1][0], "1 2 2 1"]] + rows[2:], "overlap"),
    (lambda rows: [[rows[0][0], "20 5"]] + rows[1:], "beyond the array size"),
])
def test_validator_rejects_malformed_submissions(tmp_path, edit, message):
    truth, ids, labels, masks = make_truth(tmp_path)
    pred = common.write_submission(str(tmp_path / "p.csv"), ids, labels, masks)
    rows = [r.split(",", 1) for r in open(pred).read().splitlines()]
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(",".join(r) for r in [rows[0]] + edit(rows[1:])) + "\n")
    sizes = [20 if k % 2 == 0 else 20 * masks[k // 2].size for k in range(2 * len(ids))]
    assert common.validate_submission(pred, ids, sizes) == 2 * len(ids)
    with pytest.raises(common.UserError, match=message):
        common.validate_submission(str(bad), ids, sizes)
    if message != "order":  # the scorer, like Kaggle's, takes rows in any order
        with pytest.raises(common.UserError, match=message):
            common.score_submission(str(bad), truth)


def test_long_rle_row_round_trips_through_the_readers(tmp_path, capsys):
    """Issue 15 case 3: a speckled 375x500 mask (7% noise, an under-trained segmenter) has a
    segmentation row over csv's default 131072-character limit; it reads back, validates and
    scores 1.0 against itself, also from the command line."""
    rng = np.random.default_rng(0)
    mask = np.zeros((375, 500), np.uint8)
    mask[100:300, 100:400] = 15
    noise = rng.random(mask.shape) < 0.07
    mask[noise] = rng.integers(0, 21, noise.sum())
    labels = [common.labels_from_mask(mask)]
    pred = common.write_submission(str(tmp_path / "submission.csv"), ["0"], labels, [mask])
    truth = common.write_submission(str(tmp_path / "solution.csv"), ["0"], labels, [mask], shapes=True)
    rows = common.read_submission(pred)
    assert len(rows[1]["Predicted"]) > 140_000 and rows[1]["Predicted"] == common.rle_encode(common.seg_stack(mask))
    assert common.validate_submission(pred, ["0"], [20, 20 * mask.size]) == 2
    assert common.score_submission(pred, truth)["score"] == 1.0
    assert common.run_cli(common.main, ["score", "--pred", pred, "--truth", truth]) == 0
    assert "score 1.0000" in capsys.readouterr().out


def test_csv_readers_accept_a_bom_and_crlf(tmp_path):
    """A CSV re-saved by a spreadsheet ('CSV UTF-8': BOM, CRLF) reads as the original: the
    submission and solution (scored 1.0) and the class-label CSVs."""
    truth, ids, labels, masks = make_truth(tmp_path)
    pred = common.write_submission(str(tmp_path / "p.csv"), ids, labels, masks)
    for path in (truth, pred):
        text = open(path, encoding="utf-8").read()
        open(path, "w", encoding="utf-8-sig", newline="\r\n").write(text)
        assert open(path, "rb").read(5) == b"\xef\xbb\xbfId" and b"\r\n" in open(path, "rb").read()
    assert common.score_submission(pred, truth)["score"] == 1.0
    table = tmp_path / "train_set.csv"
    rows = [",".join(["Id", *common.CLASSES])] + [",".join([str(i)] + [str(v) for v in y]) for i, y in zip(ids, labels)]
    table.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8-sig")
    got_ids, got = common._read_class_csv(str(table))
    assert got_ids == [str(i) for i in ids] and (got == np.array(labels)).all()


def test_write_submission_is_atomic_and_validated(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("old contents\n")
    with pytest.raises(ValueError):  # 3-D mask: rejected before anything is written
        common.write_submission(str(path), [1], [np.zeros(20)], [np.zeros((2, 2, 2))])
    with pytest.raises(common.UserError):  # duplicate ids
        common.write_submission(str(path), [1, 1], [np.zeros(20)] * 2, [np.zeros((2, 2))] * 2)
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temp files left


def strict_json(text):
    """json.loads that refuses NaN/Infinity tokens, as JSON readers outside Python do."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def test_write_json_is_strict_with_null_for_undefined_values(tmp_path):
    path = str(tmp_path / "m.json")
    common.write_json(path, {"ap": [0.5, float("nan"), np.float32("nan")], "psnr": float("inf"),
                             "iou": np.array([1.0, np.nan]), "n": np.int64(3), "pair": (1, -np.inf)})
    want = {"ap": [0.5, None, None], "psnr": None, "iou": [1.0, None], "n": 3, "pair": [1, None]}
    assert strict_json(open(path).read()) == want and common.read_json(path) == want


def test_run_folders_hold_strict_json(tiny_runs):
    """Issue 15 case 10: classes with no validation image (most, in the tiny demo's validation
    split) are null in metrics.json, not NaN; every JSON file of both runs parses strictly."""
    files = [f for run in tiny_runs for f in glob.glob(os.path.join(run, "*.json"))]
    assert {os.path.basename(f) for f in files} >= {"metrics.json", "config.json", "state.json", "thresholds.json"}
    for f in files:
        strict_json(open(f).read())
    cls_metrics = strict_json(open(os.path.join(tiny_runs[0], "metrics.json")).read())
    seg_metrics = strict_json(open(os.path.join(tiny_runs[1], "metrics.json")).read())
    assert None in cls_metrics["val_ap"].values() and None in seg_metrics["val_iou"].values()
