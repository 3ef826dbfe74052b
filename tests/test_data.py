"""Data sources: both layouts, the demo generator, file checks, the train/validation split."""

import filecmp
import os
import time

import numpy as np
import pytest
from conftest import PROXY
from PIL import Image

import common


def test_competition_loader_on_demo(demo_dir):
    train = common.load_split(demo_dir, "train")
    test = common.load_split(demo_dir, "test")
    assert train.layout == "competition" and len(train) == 24 and len(test) == 8
    assert train.has_masks and train.has_labels
    assert not test.has_labels and all(m is None for m in test.mask_paths)
    assert train.labels.shape == (24, 20) and train.labels.dtype == np.int8
    for i in range(len(train)):
        image, mask = common.read_example(train, i)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.shape == image.shape[:2]
        np.testing.assert_array_equal(common.labels_from_mask(mask), train.labels[i])
    assert (train.labels.sum(1) >= 1).all()


def test_voc_loader(voc_dir):
    train = common.load_split(voc_dir, "train")
    test = common.load_split(voc_dir, "test")
    assert train.layout == "voc" and len(train) == 10 and len(test) == 3
    assert test.ids == ["test_0000", "test_0001", "test_0002"]
    for i in range(len(train)):
        image, mask = common.read_example(train, i)
        want, _ = common.demo_example(7, i, scale=0.25)
        assert image.shape == want.shape
        np.testing.assert_array_equal(common.labels_from_mask(mask), train.labels[i])
    assert (test.labels == -1).all()


def test_both_layouts_describe_the_same_data(tmp_path, demo_dir):
    """The VOC copy of the demo train split gives the same labels as the competition layout."""
    comp = common.load_split(demo_dir, "train")
    pairs = [common.read_example(comp, i) for i in range(len(comp))]
    from conftest import write_voc
    voc = common.load_split(write_voc(str(tmp_path / "voc"), pairs), "train")
    np.testing.assert_array_equal(voc.labels, comp.labels)


def test_demo_is_deterministic(tmp_path):
    a = common.make_demo(str(tmp_path / "a"), n_train=5, n_test=2, seed=3, scale=0.2)
    b = common.make_demo(str(tmp_path / "b"), n_train=5, n_test=2, seed=3, scale=0.2)
    c = common.make_demo(str(tmp_path / "c"), n_train=5, n_test=2, seed=4, scale=0.2)
    files = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
    assert len(files) == 5 * 2 + 2 + 4  # train img+seg, test img, two split CSVs, test_labels, solution
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    _, mismatch, _ = filecmp.cmpfiles(a, c, files, shallow=False)
    assert mismatch


def test_demo_is_varied_enough():
    """Every class appears, images come in several sizes, 1-4 objects, void borders like VOC."""
    pairs = [common.demo_example(0, i, scale=0.3) for i in range(120)]
    labels = np.array([common.labels_from_mask(m) for _, m in pairs])
    assert (labels.sum(0) >= 2).all()
    assert 1 <= labels.sum(1).min() and labels.sum(1).max() <= 4
    assert labels[:, common.CLASSES.index("person")].sum() > 2 * np.median(labels.sum(0))
    assert len({im.shape[:2] for im, _ in pairs}) >= 5
    void = np.mean([(m == 255).mean() for _, m in pairs])
    assert 0.005 < void < 0.1
    for _, mask in pairs[:20]:  # void is a thin band along object outlines, nowhere else
        obj = np.pad((mask > 0) & (mask < 255), 6)
        near = np.zeros_like(obj)
        for dy in range(-6, 7):
            for dx in range(-6, 7):
                near |= np.roll(obj, (dy, dx), axis=(0, 1))
        assert (mask == 255).any() and near[6:-6, 6:-6][mask == 255].all()


def test_demo_classes_differ_in_appearance():
    """Mean colour inside each class's pixels differs between classes (learnable signal)."""
    sums, counts = np.zeros((20, 3)), np.zeros(20)
    for i in range(80):
        image, mask = common.demo_example(1, i, scale=0.3)
        for c in range(20):
            sel = mask == c + 1
            sums[c] += image[sel].sum(0)
            counts[c] += sel.sum()
    means = sums / np.maximum(counts, 1)[:, None]
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(20) * 1e9
    assert dist.min() > 10


def test_demo_solution_scores_one(demo_dir, tmp_path):
    """A submission built from the demo test labels scores exactly 1.0 with the local scorer."""
    test = common.load_split(demo_dir, "test")
    masks = [common.demo_example(0, 10 ** 6 + int(i), scale=0.25)[1] for i in test.ids]
    for i, m in zip(test.ids, masks):  # the test images are the generator's test examples
        assert common.read_image(test.image_paths[test.ids.index(i)]).shape[:2] == m.shape
    labels = [common.labels_from_mask(m) for m in masks]
    ids, table = common._read_class_csv(os.path.join(demo_dir, "test_labels.csv"))
    assert ids == test.ids and (table == np.array(labels)).all()
    pred = common.write_submission(str(tmp_path / "submission.csv"), test.ids, labels, masks)
    r = common.score_submission(pred, os.path.join(demo_dir, "solution.csv"))
    assert r["score"] == 1.0 and r["classification"] == 1.0 and r["segmentation"] == 1.0


def test_resolve_data_errors(tmp_path, monkeypatch):
    with pytest.raises(common.UserError, match="does not exist"):
        common.load_split(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.UserError, match="neither layout"):
        common.load_split(str(tmp_path / "empty"))
    monkeypatch.setattr(common.glob, "glob", lambda pattern: [])
    with pytest.raises(common.UserError, match="--data demo"):
        common.resolve_data(None)


def test_kaggle_autodetect(monkeypatch, demo_dir):
    monkeypatch.setattr(common.glob, "glob", lambda pattern: [demo_dir + "/"] if pattern == "/kaggle/input/*/" else [])
    assert common.resolve_data(None) == (demo_dir, "competition")


def test_image_conversions_and_refusals(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.save(tmp_path / "g.npy", gray)
    out = common.read_image(str(tmp_path / "g.npy"))
    assert out.shape == (3, 4, 3) and (out[:, :, 2] == gray).all()
    np.save(tmp_path / "rgba.npy", np.zeros((3, 4, 4), np.uint8))
    assert common.read_image(str(tmp_path / "rgba.npy")).shape == (3, 4, 3)
    Image.fromarray(np.zeros((5, 6, 4), np.uint8)).save(tmp_path / "rgba.png")
    assert common.read_image(str(tmp_path / "rgba.png")).shape == (5, 6, 3)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(common.UserError, match="pickle"):
        common.read_image(str(tmp_path / "obj.npy"), "train id 3")
    (tmp_path / "trunc.npy").write_bytes(open(tmp_path / "g.npy", "rb").read()[:-5])
    with pytest.raises(common.UserError, match="train id 4"):
        common.read_image(str(tmp_path / "trunc.npy"), "train id 4")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(common.UserError, match="cannot decode"):
        common.read_image(str(tmp_path / "bad.jpg"))
    np.save(tmp_path / "m.npy", np.array([[0, 21]], np.uint8))
    with pytest.raises(common.UserError, match="outside 0..20"):
        common.read_mask(str(tmp_path / "m.npy"))


def test_npy_images_of_every_dtype_give_the_uint8_levels(tmp_path):
    """Issue 15 case 1: float [0, 1] (img / 255.) is scaled, never cast to black; every dtype
    that means an image gives the same uint8 RGB as the original (float16 within a level)."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
    ref[0, 0], ref[0, 1] = 0, 255
    variants = {"float01": ref.astype(np.float32) / 255.0, "float01_f16": (ref / 255.0).astype(np.float16),
                "float255": ref.astype(np.float32) + 0.4, "float64": ref.astype(np.float64),
                "int64": ref.astype(np.int64), "uint16": ref.astype(np.uint16) * 257,
                "uint16_in_8bit_range": ref.astype(np.uint16), "chw": ref.transpose(2, 0, 1)}
    for name, a in variants.items():
        np.save(tmp_path / f"{name}.npy", a)
        out = common.read_image(str(tmp_path / f"{name}.npy"))
        assert out.dtype == np.uint8 and out.shape == ref.shape, name
        assert np.abs(out.astype(int) - ref).max() <= (1 if name == "float01_f16" else 0), name
    np.save(tmp_path / "bool.npy", ref > 127)
    assert set(np.unique(common.read_image(str(tmp_path / "bool.npy"))).tolist()) == {0, 255}


@pytest.mark.parametrize("array, message", [
    (np.full((4, 4, 3), -0.5, np.float32), "negative"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    (np.full((4, 4, 3), 300.0, np.float32), "neither in"),
    (np.full((4, 4, 3), 1.2, np.float32), "neither in"),
    (np.full((4, 4, 3), 70000, np.int32), "values up to 70000"),
    (np.full((4, 4, 3), -1, np.int16), "negative"),
    (np.full((4, 4, 3), 1 + 1j), "dtype complex"),
])
def test_npy_images_out_of_range_are_refused_naming_the_file(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(common.UserError, match=f"train id 7: image .*x.npy .*{message}"):
        common.read_image(str(tmp_path / "x.npy"), "train id 7")


def test_image_files_of_every_mode_give_rgb_levels(tmp_path):
    """16-bit grayscale PNG scaled down (not clipped to white), palette, 1-bit, grey+alpha, JPEG."""
    levels = np.array([[0, 10, 128, 255]], np.uint8)
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(levels).convert("1").save(tmp_path / "bw.png")
    Image.fromarray(levels).convert("LA").save(tmp_path / "la.png")
    pal = Image.fromarray(np.array([[0, 1, 2, 1]], np.uint8)).convert("P")
    pal.putpalette([0, 0, 0, 200, 100, 50, 10, 20, 30])
    pal.save(tmp_path / "p.png")
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "g.jpg", quality=100)
    for name, want in [("g16.png", levels), ("la.png", levels), ("bw.png", np.where(levels > 127, 255, 0))]:
        out = common.read_image(str(tmp_path / name))
        assert out.dtype == np.uint8 and out.shape == (1, 4, 3), name
        np.testing.assert_array_equal(out, np.repeat(np.asarray(want)[..., None], 3, axis=2), name)
    np.testing.assert_array_equal(common.read_image(str(tmp_path / "p.png"))[0, 1], [200, 100, 50])
    assert np.abs(common.read_image(str(tmp_path / "g.jpg")).astype(int) - 77).max() <= 1


def palette_mask(path, index, palette):
    im = Image.fromarray(np.asarray(index, np.uint8)).convert("P")
    im.putpalette(np.asarray(palette, np.uint8).ravel().tolist())
    im.save(path)
    return str(path)


def test_masks_are_read_by_what_their_palette_means(tmp_path):
    """Issue 15 case 2: VOC palette (also with junk colours at unused indices), grayscale index
    PNGs of 8 and 16 bit and a grey-ramp palette read by index; a re-quantised colour mask, whose
    indices mean other classes or no class, refused naming the file."""
    m = np.array([[0, 1, 15, 255]], np.uint8)
    voc = common.voc_palette()
    junk = voc.copy()
    junk[[2, 3, 16, 200]] = (9, 9, 9)  # unused indices: any colour
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    Image.fromarray(m).save(tmp_path / "l.png")
    Image.fromarray(m.astype(np.uint16)).save(tmp_path / "i16.png")
    for path in (palette_mask(tmp_path / "voc.png", m, voc), palette_mask(tmp_path / "junk.png", m, junk),
                 palette_mask(tmp_path / "grey.png", m, grey), str(tmp_path / "l.png"), str(tmp_path / "i16.png")):
        np.testing.assert_array_equal(common.read_mask(path), m, path)
    # a boat mask (VOC colour of class 4) quantised to index 0..1: index 0 now carries boat's colour
    boat = palette_mask(tmp_path / "boat.png", [[0, 1]], [voc[4], voc[0]])
    with pytest.raises(common.UserError, match=r"train id 3: mask .*boat.png .*index 0 .*VOC's colour of boat"):
        common.read_mask(boat, "train id 3")
    odd = palette_mask(tmp_path / "odd.png", m, np.where(np.arange(256)[:, None] == 15, 77, voc))
    with pytest.raises(common.UserError, match=r"odd.png .*index 15 .*a colour VOC does not use"):
        common.read_mask(odd)
    Image.fromarray(voc[m]).save(tmp_path / "rgb.png")
    with pytest.raises(common.UserError, match="rgb.png is RGB"):
        common.read_mask(str(tmp_path / "rgb.png"))


def test_case_04_requantised_palette_mask_is_refused_in_one_line(tmp_path, capsys):
    """The case's own input: the VOC colour mask saved as RGB, quantised to 'P' (adaptive)."""
    from conftest import write_voc
    pairs = [common.demo_example(5, i, scale=0.2) for i in range(2)]
    root = write_voc(str(tmp_path / "voc"), pairs)
    path = os.path.join(root, "SegmentationClass", "train_0000.png")
    Image.fromarray(common.colorize(pairs[0][1])).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(path)
    assert common.run_cli(common.main, ["check", "--data", root, "--out", str(tmp_path / "chk")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "train_0000.png has a palette" in err, err


def test_mask_shape_mismatch_is_reported_by_id(tmp_path, demo_dir):
    import shutil
    root = str(tmp_path / "copy")
    shutil.copytree(demo_dir, root)
    np.save(os.path.join(root, "train", "seg", "train_2.npy"), np.zeros((3, 3), np.uint8))
    train = common.load_split(root, "train")
    with pytest.raises(common.UserError, match="train id 2: mask is 3x3"):
        common.read_example(train, 2)


def test_train_val_split_keeps_rare_classes_on_both_sides():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 20)) < np.linspace(0.01, 0.3, 20)).astype(np.int8)
    labels[:3, 0] = 1  # a class with very few examples
    tr, va = common.train_val_split(labels, 0.2, seed=1)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 200
    assert 0.15 < len(va) / 200 < 0.3
    for c in range(20):
        if labels[:, c].sum() >= 2:
            assert labels[tr, c].sum() >= 1 and labels[va, c].sum() >= 1, c
    tr2, va2 = common.train_val_split(labels, 0.2, seed=1)
    assert (tr == tr2).all() and (va == va2).all()


def test_train_val_split_is_never_empty_from_two_images():
    """Issue 15 case 4: eight images, each person plus a class of its own (stratification alone
    put all eight in training): two go to validation; and any >= 2 images get both sides."""
    labels = np.zeros((8, 20), np.int8)
    labels[:, common.CLASSES.index("person")] = 1
    labels[np.arange(8), np.arange(8)] = 1
    tr, va = common.train_val_split(labels, 0.2)
    assert len(va) == 2 and len(tr) == 6 and not set(tr) & set(va)
    rng = np.random.default_rng(0)
    for n in range(2, 12):
        for labels in (np.zeros((n, 20)), np.eye(20)[:n], rng.random((n, 20)) < 0.1):
            tr, va = common.train_val_split(labels, 0.2, seed=n)
            assert len(tr) >= 1 and len(va) >= 1 and sorted(np.r_[tr, va].tolist()) == list(range(n))


def test_summary_writes_samples_png(demo_dir, tmp_path, capsys):
    assert common.run_cli(common.main, ["check", "--data", demo_dir, "--out", str(tmp_path / "chk")]) == 0
    out = capsys.readouterr().out
    assert "train: 24 images" in out and "images per class" in out
    im = Image.open(tmp_path / "chk" / "samples.png")
    assert im.width > 300 and im.height > 300


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    assert common.run_cli(common.main, ["check", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(not os.path.isdir(PROXY), reason="../shared/proxy not present")
@pytest.mark.slow
def test_proxy_reads_every_image_and_mask_within_a_minute():
    t = time.time()
    train, test = common.dataset_summary(PROXY)
    assert time.time() - t < 60
    assert len(train) == 755 and len(test) == 571 and train.has_masks
    assert (train.labels.sum(0) > 0).all()
