"""The tf.data input pipeline: shapes, dtypes, void padding, aligned augmentation, determinism,
autotuning off."""

import numpy as np
import pytest
import tensorflow as tf

import common
import seg_train


@pytest.fixture(scope="module")
def demo_train(demo_dir):
    split = common.load_split(demo_dir, "train")
    return split, common.load_examples(split)


def batches(ds, n=None):
    out = []
    for k, (x, y) in enumerate(ds):
        if n is not None and k >= n:
            break
        out.append((x.numpy(), {key: v.numpy() for key, v in y.items()} if isinstance(y, dict) else y.numpy()))
    return out


def test_examples_are_uint8_at_original_size(demo_train):
    split, examples = demo_train
    assert len(examples) == len(split)
    for (image, mask), path in zip(examples, split.image_paths):
        assert image.dtype == np.uint8 and mask.dtype == np.uint8
        assert image.shape[:2] == common.image_size(path) == mask.shape


@pytest.mark.parametrize("training", [False, True])
def test_shapes_dtypes_and_values(demo_train, training):
    split, examples = demo_train
    ds = common.make_dataset(split, examples, size=64, batch_size=5, training=training, target="both")
    got = batches(ds)
    assert len(got) == (4 if training else 5)  # training drops the last partial batch
    for x, y in got:
        assert x.dtype == np.float32 and x.shape[1:] == (64, 64, 3)
        assert 0 <= x.min() and x.max() <= 255
        assert y["mask"].dtype == np.int32 and y["mask"].shape == (x.shape[0], 64, 64)
        assert set(np.unique(y["mask"])) <= set(range(21)) | {255}
        assert y["labels"].shape == (x.shape[0], 20) and y["labels"].dtype == np.float32
    if not training:  # evaluation keeps order: labels follow the split
        np.testing.assert_array_equal(np.concatenate([y["labels"] for _, y in got]), split.labels)


def test_letterbox_pads_with_void():
    image = np.full((20, 40, 3), 200, np.uint8)
    mask = np.full((20, 40), 3, np.uint8)
    x, m = common.fit_to_size(tf.constant(image, tf.float32), tf.constant(mask), 32)
    x, m = x.numpy(), m.numpy()
    # 20x40 -> 16x32 centred: rows 0-7 and 24-31 are padding
    assert (m[8:24] == 3).all() and (m[:8] == 255).all() and (m[24:] == 255).all()
    assert np.allclose(x[8:24], 200) and np.allclose(x[:8], common.PAD_VALUE)
    x, m = common.fit_to_size(tf.constant(image, tf.float32), tf.constant(mask), 32, fit="resize")
    assert (m.numpy() == 3).all()


def test_augmentation_keeps_image_and_mask_aligned():
    """The image's red channel encodes the mask (class * 10); after random scale, crop, pad and
    flip the two must still agree everywhere except a 1-pixel band at region edges."""
    mask = np.zeros((90, 120), np.uint8)
    mask[10:50, 20:70] = 4
    mask[40:85, 60:115] = 12
    mask[60:80, 5:40] = 19
    image = np.stack([mask * 10, np.full_like(mask, 50), np.arange(120, dtype=np.uint8)[None].repeat(90, 0)], -1)
    for s in range(25):
        x, m = common.augment(tf.constant(image, tf.float32), tf.constant(mask), 64,
                              tf.constant([s, 1], tf.int64), scale=(0.5, 1.6))
        x, m = x.numpy(), m.numpy()
        valid = m != 255
        interior = valid.copy()  # pixels whose 3x3 neighbourhood has one label
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior &= np.roll(m, (dy, dx), (0, 1)) == m
        interior[[0, -1]] = interior[:, [0, -1]] = False
        assert interior.sum() > 100
        np.testing.assert_array_equal(np.round(x[..., 0][interior] / 10), m[interior])
        assert np.allclose(x[~valid], common.PAD_VALUE)


def test_augmentation_crop_keeps_the_image_scale():
    """crop < size: the output is a crop x crop window of the image rescaled to longer side size
    (scale 1), the same pixels a full-size crop would hold there."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(50, 100, 3)).astype(np.float32)
    mask = rng.integers(0, 21, size=(50, 100)).astype(np.uint8)
    resized = tf.image.resize(image, (32, 64)).numpy()  # longer side 64
    resized_mask = tf.image.resize(mask[:, :, None], (32, 64), method="nearest").numpy()[..., 0]
    offsets = set()
    for s in range(8):
        x, m = common.augment(tf.constant(image), tf.constant(mask), 64, tf.constant([s, 2], tf.int64),
                              scale=(1.0, 1.0), flip=False, crop=32)
        x, m = x.numpy(), m.numpy()
        assert x.shape == (32, 32, 3) and m.shape == (32, 32)
        ox = [o for o in range(33) if np.allclose(resized[:, o:o + 32], x, atol=1e-3)]
        assert len(ox) == 1, ox
        np.testing.assert_array_equal(resized_mask[:, ox[0]:ox[0] + 32], m)
        offsets.add(ox[0])
    assert len(offsets) > 1  # the crop's place is random
    # scale 0.5: the image shrinks to 16 x 32 (longer side 32 = the crop), padded above and below with void
    small = tf.image.resize(image, (16, 32)).numpy()
    small_mask = tf.image.resize(mask[:, :, None], (16, 32), method="nearest").numpy()[..., 0]
    for s in range(4):
        x, m = common.augment(tf.constant(image), tf.constant(mask), 64, tf.constant([s, 3], tf.int64),
                              scale=(0.5, 0.5), flip=False, crop=32)
        x, m = x.numpy(), m.numpy()
        rows = np.flatnonzero((m != 255).any(axis=1))
        assert len(rows) == 16 and rows[-1] - rows[0] == 15
        np.testing.assert_allclose(x[rows], small, atol=1e-3)
        np.testing.assert_array_equal(m[rows], small_mask)
        assert np.allclose(np.delete(x, rows, axis=0), common.PAD_VALUE)


def test_augmentation_flips_both():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :8, 0] = 250
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :8] = 5
    flipped = 0
    for s in range(12):
        x, m = common.augment(tf.constant(image, tf.float32), tf.constant(mask), 32,
                              tf.constant([s, 0], tf.int64), scale=(1.0, 1.0))
        x, m = x.numpy(), m.numpy()
        left = m[:, 0].mean() == 5
        assert left == (x[:, 0, 0].mean() > 200)
        flipped += not left
    assert 0 < flipped < 12


def test_colour_jitter_changes_images_not_padding():
    image = np.full((40, 20, 3), 100, np.uint8)
    mask = np.full((40, 20), 7, np.uint8)
    x, m = common.augment(tf.constant(image, tf.float32), tf.constant(mask), 40,
                          tf.constant([3, 3], tf.int64), scale=(1.0, 1.0), flip=False)
    batch = tf.stack([x, x, x])
    jittered = common.colour_jitter(batch, tf.constant([3, 3], tf.int64)).numpy()
    m = m.numpy()
    assert set(np.unique(m)) == {7, 255}
    assert np.allclose(jittered[:, m == 255], common.PAD_VALUE)  # padding untouched
    assert not np.allclose(jittered[:, m == 7], 100)  # the image changed
    assert not np.allclose(jittered[0], jittered[1])  # each image of the batch its own way
    assert jittered.min() >= 0 and jittered.max() <= 255
    again = common.colour_jitter(batch, tf.constant([3, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(jittered, again)  # deterministic for a seed


def test_copy_paste_moves_objects_with_their_labels():
    """Known answer: image 0 receives image 2's objects (the batch rolled by one), image 1 image 0's
    and image 2 image 1's; only object pixels (1-20) move, never background or void."""
    masks = np.zeros((3, 4, 4), np.int32)
    masks[0, 0, :2] = 5
    masks[0, 3, 3] = common.VOID
    masks[2, 1:3, 1:3] = 20
    masks[2, 0, 0] = common.VOID
    images = np.stack([np.full((4, 4, 3), v, np.float32) for v in (10, 20, 30)])
    seed = tf.constant([1, 2], tf.int64)
    x, m = (t.numpy() for t in common.copy_paste_batch(tf.constant(images), tf.constant(masks), seed, 1.0))
    want = masks.copy()
    want[0, 1:3, 1:3] = 20  # from image 2; its void pixel stays behind
    want[1, 0, :2] = 5  # from image 0
    np.testing.assert_array_equal(m, want)  # image 2 receives nothing from image 1 (all background)
    np.testing.assert_array_equal(x[0, 1:3, 1:3], 30)
    np.testing.assert_array_equal(x[1, 0, :2], 10)
    changed = (x != images).any(axis=-1)
    assert changed.sum() == 4 + 2  # no other pixel moved
    x0, m0 = (t.numpy() for t in common.copy_paste_batch(tf.constant(images), tf.constant(masks), seed, 0.0))
    np.testing.assert_array_equal(x0, images)
    np.testing.assert_array_equal(m0, masks)


def test_copy_paste_draws_each_image_on_its_own():
    """At probability 0.5 each image of a batch receives its donor's objects or not, by its own
    draw; a seed repeats its draws."""
    labels = np.arange(1, 9)
    masks = np.zeros((8, 2, 2), np.int32)
    masks[:, 0, 0] = labels  # one object pixel an image, of a class of its own
    images = np.broadcast_to(labels[:, None, None, None], (8, 2, 2, 3)).astype(np.float32)
    for seed in range(3):
        s = tf.constant([seed, 0], tf.int64)
        x, m = (t.numpy() for t in common.copy_paste_batch(tf.constant(images), tf.constant(masks), s, 0.5))
        received = m[:, 0, 0] == np.roll(labels, 1)
        assert 0 < received.sum() < 8  # some images receive, some do not
        np.testing.assert_array_equal(m[~received], masks[~received])
        np.testing.assert_array_equal(x[:, 0, 0, 0], m[:, 0, 0])  # image pixels move with their labels
        again = common.copy_paste_batch(tf.constant(images), tf.constant(masks), s, 0.5)[1].numpy()
        np.testing.assert_array_equal(again, m)


def test_copy_paste_in_the_training_pipeline(demo_train):
    """With probability 1 every training crop holds its own objects plus those of the crop before
    it; the same seed without copy-paste gives the crops before pasting."""
    split, examples = demo_train
    args = dict(training=True, seed=3, target="mask", flip=False)
    plain = batches(common.make_dataset(split, examples, 48, 4, **args), 2)
    pasted = batches(common.make_dataset(split, examples, 48, 4, copy_paste=1.0, **args), 2)
    for (x, m), (xp, mp) in zip(plain, pasted):
        donor = np.roll(m, 1, axis=0)
        objects = (donor >= 1) & (donor <= common.NUM_CLASSES)
        np.testing.assert_array_equal(mp, np.where(objects, donor, m))
        np.testing.assert_array_equal(xp, np.where(objects[..., None], np.roll(x, 1, axis=0), x))
        assert objects.any()
    with pytest.raises(ValueError, match="needs target 'mask'"):
        common.make_dataset(split, examples, 48, 4, training=True, target="both", copy_paste=0.5)


def test_pipeline_is_deterministic_for_a_seed(demo_train):
    split, examples = demo_train

    def run(seed, epochs=1):
        ds = common.make_dataset(split, examples, 48, 8, training=True, seed=seed, target="mask")
        return [batches(ds) for _ in range(epochs)]

    a, b = run(1, 2), run(1, 2)
    for ea, eb in zip(a, b):
        for (xa, ya), (xb, yb) in zip(ea, eb):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0][0], a[1][0][0])  # a new epoch reshuffles and re-augments
    assert not np.array_equal(a[0][0][0], run(2)[0][0][0])


def test_uncached_pipeline_gives_the_same_batches(demo_train):
    split, examples = demo_train
    assert common.cache_fits(split)
    cached = batches(common.make_dataset(split, examples, 40, 6, training=True, seed=5, target="both"))
    lazy = batches(common.make_dataset(split, None, 40, 6, training=True, seed=5, target="both"))
    for (xa, ya), (xb, yb) in zip(cached, lazy):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya["mask"], yb["mask"])
    # classification batches (images only, no mask read): the same from the cache and from disk
    cached = batches(common.make_dataset(split, common.load_examples(split, masks=False), 40, 6, training=True,
                                         seed=5, target="labels"))
    lazy = batches(common.make_dataset(split, None, 40, 6, training=True, seed=5, target="labels"))
    assert len(cached) == len(lazy) > 0
    for (xa, ya), (xb, yb) in zip(cached, lazy):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_segmentation_target_needs_masks(demo_dir):
    test = common.load_split(demo_dir, "test")
    examples = common.load_examples(test)
    with pytest.raises(common.UserError, match="without masks"):
        common.make_dataset(test, examples, 32, 2, target="mask")
    x, _ = next(iter(common.make_dataset(test, examples, 32, 2, target="labels")))
    assert x.shape == (2, 32, 32, 3)


def test_repeat_factor_sampling(demo_train):
    labels = np.zeros((10, 20))
    labels[:, 0] = 1
    labels[3, 5] = 1  # class 5 in 1 of 10 images: sqrt(0.4 / 0.1) = 2 showings
    labels[4, 7] = -1  # unknown labels count as absent
    np.testing.assert_array_equal(seg_train.repeat_factors(labels, threshold=0.4), [1, 1, 1, 2, 1, 1, 1, 1, 1, 1])

    split, examples = demo_train
    repeats = np.ones(len(split), np.int64)
    repeats[2] = 3
    ds = common.make_dataset(split, examples, 32, 1, target="labels", repeats=repeats)
    seen = np.concatenate([y for _, y in batches(ds)])
    assert len(seen) == len(split) + 2
    assert sum(np.array_equal(row, split.labels[2]) for row in seen) >= 3


@pytest.mark.parametrize("training", [False, True])
def test_pipelines_run_without_autotune(demo_train, training):
    """With tf.data's autotuning on, Keras's deletion of each epoch's iterator could wait for the
    autotuning thread's next wake-up (common.without_autotune)."""
    split, examples = demo_train
    ds = common.make_dataset(split, examples, size=64, batch_size=5, training=training)
    assert ds.options().autotune.enabled is False
