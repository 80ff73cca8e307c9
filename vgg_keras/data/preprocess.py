"""Train and eval image preprocessing (Inception-style random crop; resize + central crop).

Training randomness is *stateless*: each image's crop and flip are a function of a per-record
seed, so a resumed run sees exactly the augmentations an uninterrupted run would have seen, and
the flip is drawn per image (the reference drew one flip for the whole run at graph build time).
"""

from __future__ import annotations

from vgg_keras.compat import tf

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EVAL_RESIZE_RATIO = 256 / 224  # shorter side before the central crop, relative to the crop


def normalize(image):
    """float32 RGB in 0..255 -> zero mean, unit variance per channel (ImageNet statistics)."""
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def train_image(
    jpeg,
    bboxes,
    seed,
    image_size: int,
    min_object_covered: float = 0.1,
    area_range=(0.08, 1.0),
    aspect_ratio_range=(0.75, 1.33),
    max_attempts: int = 10,
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
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = normalize(image)
    image.set_shape([image_size, image_size, 3])
    return image


def eval_image(jpeg, image_size: int):
    """Resize the shorter side to ``image_size * 256/224`` (aspect kept), central crop, normalise."""
    image = tf.image.decode_jpeg(jpeg, channels=3)
    image = resize_shorter_side(image, int(round(image_size * EVAL_RESIZE_RATIO)))
    image = central_crop(image, image_size)
    image = normalize(image)
    image.set_shape([image_size, image_size, 3])
    return image


def resize_shorter_side(image, side: int):
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.minimum(height, width)
    new_h = tf.maximum(side, tf.cast(tf.round(height * scale), tf.int32))
    new_w = tf.maximum(side, tf.cast(tf.round(width * scale), tf.int32))
    return tf.image.resize(image, [new_h, new_w], method="bilinear")


def central_crop(image, size: int):
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return tf.slice(image, [top, left, 0], [size, size, 3])
