"""Train/eval preprocessing: shapes, dtypes, ranges, aspect-preserving eval crop, per-image flip,
box-guided crops (the last two through pipeline.train_dataset, as training uses them)."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_keras import config
from vgg_keras.compat import tf, v1
from vgg_keras.data import pipeline, preprocess
from vgg_keras.errors import UsageError

MEAN = np.array(preprocess.MEAN_RGB, np.float32)
STD = np.array(preprocess.STDDEV_RGB, np.float32)
LOW, HIGH = (0 - MEAN) / STD, (255 - MEAN) / STD  # per-channel range after normalisation


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _parts(image_size: int = 32, **settings):
    """(Network, Input) of the ImageNet recipe at ``image_size`` with ``settings`` over it."""
    c = config.resolve(settings={"image_size": image_size, **settings}, need_data=False)
    return c.network, c.input


NETWORK, INPUT = _parts()


def _in_range(images: np.ndarray) -> bool:
    return bool(((images >= LOW - 1e-5) & (images <= HIGH + 1e-5)).all())


def test_normalize_uses_imagenet_statistics():
    pixels = tf.constant([[[0, 0, 0], [255, 255, 255], [124, 116, 104]]], tf.uint8)
    out = preprocess.normalize(pixels, "imagenet").numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], LOW, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], HIGH, rtol=1e-6)
    np.testing.assert_allclose(out[0, 2], (np.array([124, 116, 104]) - MEAN) / STD, atol=1e-6)


@pytest.mark.parametrize("image_size", [32, 48])
def test_train_image_shape_dtype_range(jpeg_encoder, image_size):
    jpeg = tf.constant(jpeg_encoder(_noise(50, 70)))
    no_boxes = tf.zeros([1, 0, 4])
    network, inp = _parts(image_size)
    images = [
        preprocess.train_image(jpeg, no_boxes, tf.constant([s, 9], tf.int64), network, inp)
        for s in range(4)
    ]
    for image in images:
        assert image.shape == (image_size, image_size, 3) and image.dtype == tf.float32
        assert _in_range(image.numpy())
    # Stateless: the seed alone decides the crop and flip.
    again = preprocess.train_image(jpeg, no_boxes, tf.constant([0, 9], tf.int64), network, inp)
    np.testing.assert_array_equal(images[0].numpy(), again.numpy())
    assert not np.array_equal(images[0].numpy(), images[1].numpy())


def test_train_image_reads_grayscale_jpeg_as_rgb(jpeg_encoder):
    grey = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (30, 1))
    jpeg = tf.constant(jpeg_encoder(grey))
    seed = tf.constant([1, 1], tf.int64)
    image = preprocess.train_image(jpeg, tf.zeros([1, 0, 4]), seed, NETWORK, INPUT)
    assert image.shape == (32, 32, 3)
    # Grey in, grey out: the three channels hold the same pixel value before normalisation.
    pixels = image.numpy() * STD + MEAN
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 1], atol=1e-3)
    np.testing.assert_allclose(pixels[..., 1], pixels[..., 2], atol=1e-3)


@pytest.mark.parametrize("height,width", [(40, 48), (64, 40), (37, 37)])
def test_eval_image_shape_dtype_range(jpeg_encoder, height, width):
    image = preprocess.eval_image(tf.constant(jpeg_encoder(_noise(height, width))), NETWORK, INPUT)
    assert image.shape == (32, 32, 3) and image.dtype == tf.float32
    assert _in_range(image.numpy())


def test_eval_white_image_normalises_to_channel_maximum(jpeg_encoder):
    white = np.full((50, 90, 3), 255, np.uint8)
    image = preprocess.eval_image(tf.constant(jpeg_encoder(white)), NETWORK, INPUT).numpy()
    np.testing.assert_allclose(image, np.broadcast_to(HIGH, image.shape), atol=1e-5)


def test_resize_shorter_side_keeps_aspect():
    for mode in ("standard", "reference"):
        image = tf.zeros([40, 80, 3])
        assert tuple(preprocess.resize_shorter_side(image, 37, mode).shape) == (37, 74, 3)
        tall = tf.zeros([90, 30, 3])
        assert tuple(preprocess.resize_shorter_side(tall, 37, mode).shape) == (111, 37, 3)


def test_eval_central_crop_is_aspect_preserving(jpeg_encoder):
    # A wide image with a centred white square: after an aspect-preserving resize and a central
    # crop the square is still square; a squashing resize would make it half as wide as tall.
    image = np.zeros((64, 128, 3), np.uint8)
    image[16:48, 48:80] = 255
    out = preprocess.eval_image(tf.constant(jpeg_encoder(image)), NETWORK, INPUT).numpy()
    white = out.mean(axis=-1) > (LOW.mean() + HIGH.mean()) / 2
    rows, cols = np.nonzero(white.any(axis=1))[0], np.nonzero(white.any(axis=0))[0]
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    # The shorter side 64 becomes round(32 * 256/224) = 37: the 32-px square becomes ~18.5 px.
    assert abs(height - width) <= 1
    assert 17 <= height <= 20
    # Central: as much margin left as right, and above as below.
    assert abs(rows.min() - (31 - rows.max())) <= 1
    assert abs(cols.min() - (31 - cols.max())) <= 1


def _train_images(tmp_path, shard_writer, image, count, bboxes=None, **kwargs):
    """``count`` copies of ``image`` through pipeline.train_dataset, one epoch per batch."""
    shard_writer(str(tmp_path), [image] * 16, [1] * 16, bboxes=bboxes, num_classes=2)
    network, inp = _parts(
        data_dir=str(tmp_path), class_num=2, batch_size=16, shuffle_buffer=16, **kwargs
    )
    split = pipeline.load_split(inp, "train")
    ds = pipeline.train_dataset(split, network, inp, seed=0)
    return np.concatenate([x.numpy() for x, _ in ds.take(count // 16)])


def test_flip_is_drawn_per_image(tmp_path, shard_writer):
    # Left half white, right half black; the whole image is always the crop (area 1, square).
    image = np.zeros((48, 48, 3), np.uint8)
    image[:, :24] = 255
    images = _train_images(tmp_path, shard_writer, image, 16, area_range=(1.0, 1.0))
    left = images[:, :, :16].mean(axis=(1, 2, 3))
    right = images[:, :, 16:].mean(axis=(1, 2, 3))
    flipped = left < right
    assert 0 < flipped.sum() < len(flipped), "one batch must hold both orientations"
    # Each image is the original or its mirror image, nothing else.
    original = images[np.argmin(flipped)]
    for one, is_flipped in zip(images, flipped):
        expected = original[:, ::-1] if is_flipped else original
        np.testing.assert_allclose(one, expected, atol=1e-4)


def _white_fraction(images: np.ndarray) -> np.ndarray:
    return (images.mean(axis=-1) > 0).mean(axis=(1, 2))


def test_crop_keeps_the_records_bounding_box(tmp_path, shard_writer):
    # White strip on the left quarter; black elsewhere.  With the strip as the record's box and
    # min_object_covered 0.5 every crop holds at least half the strip (>= 1/8 of the image).
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :16] = 255
    strip = [(0.0, 0.0, 0.25, 1.0)]
    with_box = _train_images(
        tmp_path / "box", shard_writer, image, 64, bboxes=[strip] * 16, min_object_covered=0.5
    )
    assert _white_fraction(with_box).min() >= 0.1
    # Without the box, the whole image is the object and crops may miss the strip entirely.
    without = _train_images(tmp_path / "plain", shard_writer, image, 64, min_object_covered=0.5)
    assert _white_fraction(without).min() < 0.02


# ---------------------------------------------------------------------------------------------
# The crop sampler against TensorFlow's own (stateful) sample_distorted_bounding_box

SAMPLES = 3000


def _ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), values, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), values, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def _windows(sample, count: int) -> np.ndarray:
    """``count`` [y, x, h, w] windows of ``sample(index)``, computed in one tf.data pass."""
    return next(iter(tf.data.Dataset.range(count).map(sample).batch(count))).numpy()


CASES = {  # (height, width, boxes, min_object_covered)
    "no box": (37, 150, [], 0.1),
    "two small boxes": (120, 90, [(0.45, 0.45, 0.5, 0.52), (0.0, 0.0, 0.05, 0.9)], 0.1),
    "half a box": (64, 64, [(0.0, 0.0, 1.0, 0.25)], 0.5),
    "tiny image": (5, 7, [], 0.1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_crop_sampler_has_the_distribution_of_tensorflows(case):
    height, width, boxes, covered = CASES[case]
    shape = tf.constant([height, width, 3])
    bboxes = tf.reshape(tf.constant(boxes, tf.float32), [1, -1, 4])
    attempts = 10

    def ours(index):
        seed = tf.stack([tf.constant(5, tf.int64), index])
        uniforms = tf.random.stateless_uniform([attempts, 4], seed=seed)
        return preprocess.sample_crop(
            shape, bboxes, uniforms, covered, INPUT.area_range, INPUT.aspect_ratio_range
        )

    def theirs(_):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape,
            bboxes,
            seed=3,
            min_object_covered=covered,
            aspect_ratio_range=INPUT.aspect_ratio_range,
            area_range=INPUT.area_range,
            max_attempts=attempts,
            use_image_if_no_bounding_boxes=True,
        )
        return tf.stack([begin[0], begin[1], size[0], size[1]])

    a, b = _windows(ours, SAMPLES), _windows(theirs, SAMPLES)
    assert ((a >= 0) & (a[:, :2] + a[:, 2:] <= [height, width]).all(axis=1)[:, None]).all()
    assert (a[:, 2:] >= 1).all()
    # alpha = 0.001: a correct sampler fails one parametrisation in a thousand runs.
    critical = 1.95 * np.sqrt(2 / SAMPLES)
    features = {
        "area": lambda r: r[:, 2] * r[:, 3],
        "aspect": lambda r: r[:, 3] / r[:, 2],
        "height": lambda r: r[:, 2],
        "y": lambda r: r[:, 0],
        "x": lambda r: r[:, 1],
    }
    for name, feature in features.items():
        distance = _ks_distance(feature(a).astype(float), feature(b).astype(float))
        assert distance < critical, f"{name}: KS distance {distance:.4f} >= {critical:.4f}"
    # The fall-back to the whole image happens as often (a binomial tolerance of 4 sigma).
    whole_a = ((a[:, 2] == height) & (a[:, 3] == width)).mean()
    whole_b = ((b[:, 2] == height) & (b[:, 3] == width)).mean()
    sigma = np.sqrt(max(whole_b * (1 - whole_b), 1 / SAMPLES) * 2 / SAMPLES)
    assert abs(whole_a - whole_b) <= 4 * sigma + 1e-9


def test_crop_sampler_honours_min_object_covered_and_falls_back_to_the_whole_image():
    shape = tf.constant([100, 100, 3])
    box = tf.constant([[[0.0, 0.0, 0.1, 0.1]]])  # a 10x10 object in the corner
    uniforms = tf.random.stateless_uniform([10, 4], seed=[1, 2])
    area, aspect = INPUT.area_range, INPUT.aspect_ratio_range
    y, x, h, w = preprocess.sample_crop(shape, box, uniforms, 1.0, area, aspect).numpy()
    assert (y, x, h, w) == (0, 0, 100, 100) or (y == 0 and x == 0 and h >= 10 and w >= 10)
    # No attempt can reach an impossible area: always the whole image.
    window = preprocess.sample_crop(shape, box, uniforms, 0.1, (1.0, 1.0), aspect)
    assert window.numpy().tolist() == [0, 0, 100, 100]
    # An object nothing can cover enough of: the whole image.
    far = tf.constant([[[0.9, 0.9, 0.9, 0.9]]])  # zero area: never counts as covered
    window = preprocess.sample_crop(shape, far, uniforms, 0.1, area, aspect)
    assert window.numpy().tolist() == [0, 0, 100, 100]


def test_train_image_is_a_function_of_the_seed_alone(jpeg_encoder):
    # Exact resume rests on this: the same record seed gives the same crop and flip, in any
    # order, in any process (stateless: no op state carried between calls).
    jpeg = tf.constant(jpeg_encoder(_noise(60, 80, seed=3)))
    no_boxes = tf.zeros([1, 0, 4])
    seeds = [tf.constant([e, i], tf.int64) for e in (0, 7) for i in (0, 1, 2)]
    first = [preprocess.train_image(jpeg, no_boxes, s, NETWORK, INPUT).numpy() for s in seeds]
    second = [
        preprocess.train_image(jpeg, no_boxes, s, NETWORK, INPUT).numpy() for s in reversed(seeds)
    ]
    for a, b in zip(first, reversed(second)):
        np.testing.assert_array_equal(a, b)
    assert len({a.tobytes() for a in first}) == len(first)


def test_eval_resize_square_is_the_references_squash_then_central_crop():
    """--eval_resize square: the whole image to image_size*256/224 square (37 for 32), then the
    central crop; aspect keeps the ratio, so on a non-square image the two differ."""
    image = tf.constant(_noise(40, 80))
    square = preprocess.resize_for_eval(image, 32, "square", "standard")
    square = preprocess.central_crop(square, 32)
    expected = tf.image.resize(tf.cast(image, tf.float32), [37, 37])[2:34, 2:34]
    np.testing.assert_allclose(square.numpy(), expected.numpy(), atol=1e-4)
    aspect = preprocess.resize_for_eval(image, 32, "aspect", "standard")
    assert aspect.shape[:2] == (37, 74)
    assert not np.allclose(preprocess.central_crop(aspect, 32).numpy(), square.numpy())
    # Another name is refused where every setting is read (the functions trust their input).
    with pytest.raises(UsageError, match="--eval_resize: must be one of aspect, square"):
        _parts(eval_resize="squash")


def test_reference_input_resizes_as_tf1s_resize_images_and_squares_by_default():
    """--input_mode reference: TF 1's resize_images (no half-pixel centres), which
    tf.image.resize (half-pixel centres) is not; its evaluation resize is the square."""
    image = tf.constant(_noise(40, 80))
    ours = preprocess.resize_for_eval(image, 32, "square", "reference")
    tf1 = v1.image.resize_images(tf.cast(image, tf.float32), [37, 37])
    np.testing.assert_allclose(ours.numpy(), tf1.numpy(), atol=1e-4)
    standard = preprocess.resize_for_eval(image, 32, "square", "standard")
    assert np.abs(ours.numpy() - standard.numpy()).max() > 1
    assert _parts(input_mode="reference")[1].resize == "square"
    assert INPUT.resize == "aspect"
