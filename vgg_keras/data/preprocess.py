"""Train and eval image preprocessing (Inception-style random crop; resize + central crop).

Training randomness is *stateless*: each image's crop and flip are a function of a per-record
seed, so a resumed run sees exactly the augmentations an uninterrupted run would have seen, and
the flip is drawn per image (the reference drew one flip for the whole run at graph build time).
"""

from __future__ import annotations

import numpy as np

from vgg_keras.compat import tf

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EVAL_RESIZE_RATIO = 256 / 224  # shorter side before the central crop, relative to the crop
TEN_CROPS = 10  # ten_crop_images: four corners and the centre, and their mirrors
# The published keras.applications VGG weights came from Caffe: BGR input minus these means.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NORMALIZATIONS = ("imagenet", "caffe")
# Before the central crop: the shorter side to image_size * 256/224 (aspect kept), or the whole
# image squashed to that square (the reference's 256x256).
EVAL_RESIZES = ("aspect", "square")


def normalize(image, normalization: str = "imagenet"):
    """float32 RGB in 0..255 -> the network's input.

    ``imagenet``: zero mean, unit variance per channel (ImageNet statistics), what our training
    uses; ``caffe``: channels reversed to BGR minus ``CAFFE_MEAN_BGR``, no scaling, what the
    published keras.applications weights expect (``--preprocess caffe``).
    """
    image = tf.cast(image, tf.float32)
    if normalization == "caffe":
        return image[..., ::-1] - _per_pixel(CAFFE_MEAN_BGR, image)
    if normalization != "imagenet":
        raise ValueError(
            f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}"
        )
    return (image - _per_pixel(MEAN_RGB, image)) / _per_pixel(STDDEV_RGB, image)


def _per_pixel(values, image):
    """Per-channel ``values`` as a constant of the image's own (H, W, C) shape, when it is known.

    On CPU, TensorFlow broadcasts a 3-vector along the last axis about 3x slower than it runs
    the same arithmetic against a full-size operand: normalising a 224x224 image took 0.49 ms
    that way, a third of all training preprocessing (bench/input_pipeline.py).  Bit-identical.
    """
    pixels = image.shape[-3:]
    if pixels.rank == 3 and pixels.is_fully_defined():
        return tf.constant(np.broadcast_to(np.float32(values), pixels.as_list()))
    return tf.constant(values, tf.float32)


def train_image(
    jpeg,
    bboxes,
    seed,
    image_size: int,
    min_object_covered: float = 0.1,
    area_range=(0.08, 1.0),
    aspect_ratio_range=(0.75, 1.33),
    max_attempts: int = 10,
    normalization: str = "imagenet",
):
    """Random-crop (guided by the record's boxes when present), resize, flip, normalise.

    ``seed`` is an int32/int64 tensor of shape [2]; ``bboxes`` is (1, n, 4) with n >= 0.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.image.extract_jpeg_shape(jpeg)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=bboxes,
        seed=crop_seed,
        min_object_covered=min_object_covered,
        aspect_ratio_range=list(aspect_ratio_range),
        area_range=list(area_range),
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    target_h, target_w, _ = tf.unstack(size)
    window = tf.stack([offset_y, offset_x, target_h, target_w])
    image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    image = _bilinear_resize(image, [image_size, image_size])
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = normalize(image, normalization)
    image.set_shape([image_size, image_size, 3])
    return image


def eval_image(jpeg, image_size: int, normalization: str = "imagenet", resize: str = "aspect"):
    """``resize_for_eval``, central crop, normalise."""
    image = resize_for_eval(tf.image.decode_jpeg(jpeg, channels=3), image_size, resize)
    image = central_crop(image, image_size)
    image = normalize(image, normalization)
    image.set_shape([image_size, image_size, 3])
    return image


def ten_crop_images(jpeg, image_size: int, normalization: str = "imagenet", resize: str = "aspect"):
    """The ten crops of multi-crop evaluation, shape (10, size, size, 3), normalised.

    Resized as ``eval_image``; then the four corners and the centre (index 4, ``eval_image``'s
    crop), followed by the same five mirrored.  Averaging the network's outputs over them is
    the ten-crop evaluation of AlexNet and Caffe-era accuracy tables (the VGG paper's own
    multi-crop figures use 150 crops over three scales).
    """
    image = resize_for_eval(tf.image.decode_jpeg(jpeg, channels=3), image_size, resize)
    shape = tf.shape(image)
    bottom, right = shape[0] - image_size, shape[1] - image_size
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    crops = tf.stack(
        [tf.slice(image, [top, left, 0], [image_size, image_size, 3]) for top, left in corners]
    )
    crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
    crops = normalize(crops, normalization)
    crops.set_shape([TEN_CROPS, image_size, image_size, 3])
    return crops


def resize_for_eval(image, image_size: int, resize: str = "aspect"):
    """Before the central crop(s): ``aspect`` resizes the shorter side to ``image_size * 256/224``
    (the usual ImageNet protocol); ``square`` resizes the whole image to that square, ignoring
    its aspect ratio (the reference's 256x256 for 224)."""
    side = int(round(image_size * EVAL_RESIZE_RATIO))
    if resize == "square":
        return _bilinear_resize(image, [side, side])
    if resize != "aspect":
        raise ValueError(f"unknown eval resize {resize!r}; expected one of {EVAL_RESIZES}")
    return resize_shorter_side(image, side)


def resize_shorter_side(image, side: int):
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.minimum(height, width)
    new_h = tf.maximum(side, tf.cast(tf.round(height * scale), tf.int32))
    new_w = tf.maximum(side, tf.cast(tf.round(width * scale), tf.int32))
    return _bilinear_resize(image, [new_h, new_w])


def _bilinear_resize(image, size):
    """``tf.image.resize(image, size, "bilinear")`` as float32, with the float kernel.

    TensorFlow's float kernel is vectorised and its uint8 one is not: casting a decoded JPEG
    first gives the same values 5-30% faster (20-110 us per 224x224 image on one core,
    bench/input_pipeline.py).
    """
    return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")


def central_crop(image, size: int):
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return tf.slice(image, [top, left, 0], [size, size, 3])
