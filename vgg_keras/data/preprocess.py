"""Train and eval image preprocessing (Inception-style random crop; resize + central crop).

Training randomness is *stateless*: each image's crop and flip are a function of a per-record
seed, so a resumed run sees exactly the augmentations an uninterrupted run would have seen, and
the flip is drawn per image (the reference drew one flip for the whole run at graph build time).

TF 1.15 has no stateless crop or flip ops, so ``sample_crops`` re-implements
``tf.image.sample_distorted_bounding_box``'s sampler in plain graph ops over uniforms from
``tf.random.stateless_uniform`` (a counter-based Philox generator both stacks have): one code
path, the same distribution (tested against TensorFlow's op), the same crops on both stacks.
"""

from __future__ import annotations

import numpy as np

from vgg_keras.compat import tf, v1
from vgg_keras.config import Input, Network

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EVAL_RESIZE_RATIO = 256 / 224  # shorter side before the central crop, relative to the crop
TEN_CROPS = 10  # ten_crop_images: four corners and the centre, and their mirrors
# The published keras.applications VGG weights came from Caffe: BGR input minus these means.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MAX_ATTEMPTS = 10  # crop attempts, as the reference's sample_distorted_bounding_box
_FULL_SIZE_MAX = 2**22  # larger images broadcast: a full-size constant would bloat the graph
_BOX_ERROR = "All bounding box coordinates must be in [0.0, 1.0]:"  # as TensorFlow's own crop op


def normalize(image, normalization: str):
    """float32 RGB in 0..255 -> the network's input.

    ``imagenet``: zero mean, unit variance per channel (ImageNet statistics), what our training
    uses; ``caffe``: channels reversed to BGR minus ``CAFFE_MEAN_BGR``, no scaling, what the
    published keras.applications weights expect (``--preprocess caffe``).
    """
    image = tf.cast(image, tf.float32)
    if normalization == "caffe":
        return image[..., ::-1] - _per_pixel(CAFFE_MEAN_BGR, image)
    return (image - _per_pixel(MEAN_RGB, image)) / _per_pixel(STDDEV_RGB, image)


def _per_pixel(values, image):
    """Per-channel ``values`` as a constant of the image's own (H, W, C) shape, when it is known.

    On CPU, TensorFlow broadcasts a 3-vector along the last axis about 3x slower than it runs
    the same arithmetic against a full-size operand: normalising a 224x224 image took 0.49 ms
    that way, a third of all training preprocessing (bench/input_pipeline.py).  Bit-identical.
    """
    pixels = image.shape[-3:]
    if pixels.rank == 3 and pixels.is_fully_defined() and pixels.num_elements() <= _FULL_SIZE_MAX:
        return tf.constant(np.broadcast_to(np.float32(values), pixels.as_list()))
    return tf.constant(values, tf.float32)


def train_image(jpeg, bboxes, seed, network: Network, inp: Input):
    """Random crop (guided by the record's boxes when present), resize, flip, normalise.

    ``seed`` is an int32/int64 tensor of shape [2]; ``bboxes`` is (1, n, 4) with n >= 0.  The
    training input runs the same three steps with the sampler over a chunk of images at once.
    """
    shape, boxes, uniforms, flip = locate(jpeg, bboxes, seed)
    window = sample_crops(shape[None], boxes[None], uniforms[None], *crop_ranges(inp))[0]
    return crop_flip_normalize(jpeg, window, flip, network, inp.input_mode)


def locate(jpeg, bboxes, seed):
    """What the crop sampler needs of one image: its (height, width), its boxes in pixels
    (``pixel_boxes``), its uniforms (attempts, 4) and its flip, drawn from its ``seed``."""
    uniforms = tf.random.stateless_uniform([MAX_ATTEMPTS * 4 + 1], seed=seed)
    shape = tf.image.extract_jpeg_shape(jpeg)[:2]
    attempts = tf.reshape(uniforms[:-1], [MAX_ATTEMPTS, 4])
    return shape, pixel_boxes(bboxes, shape), attempts, uniforms[-1] < 0.5


def crop_flip_normalize(jpeg, window, flip, network: Network, input_mode: str):
    """Decode ``window`` [y, x, height, width] of ``jpeg``, resize it to the network's size,
    mirror it when ``flip``, normalise.  The reference's input mode resizes as TF 1's
    ``resize_images`` did (no half-pixel centres); its decode of the crop keeps TensorFlow's
    default options, as the reference's does."""
    size = network.image_size
    image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    image = _bilinear_resize(image, [size, size], input_mode)
    image = tf.where(flip, tf.reverse(image, axis=[1]), image)  # per-image flip
    image = normalize(image, network.preprocess)
    image.set_shape([size, size, 3])
    return image


def sample_crop(shape, bboxes, uniforms, min_object_covered, area_range, aspect_ratio_range):
    """``sample_crops`` for one image of ``shape`` (H, W, C) with ``bboxes`` (1, n, 4) and
    ``uniforms`` (attempts, 4): its window [y, x, height, width]."""
    hw = tf.cast(shape[:2], tf.int32)
    ranges = (min_object_covered, area_range, aspect_ratio_range)
    return sample_crops(hw[None], pixel_boxes(bboxes, hw)[None], uniforms[None], *ranges)[0]


def crop_ranges(inp: Input) -> tuple:
    """``sample_crops``' last three arguments, as --min_object_covered, --area_range and
    --aspect_ratio_range give them."""
    return inp.min_object_covered, inp.area_range, inp.aspect_ratio_range


def pixel_boxes(bboxes, shape):
    """``bboxes`` ((1, n, 4) [ymin, xmin, ymax, xmax] in 0..1) in pixels of an image of
    ``shape`` (height, width), corners truncated as TensorFlow's kernel does: (max(n, 1), 4)
    int32, the whole image when there are none."""
    height, width = tf.cast(shape[0], tf.int32), tf.cast(shape[1], tf.int32)
    fh, fw = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    boxes = tf.reshape(bboxes, [-1, 4])
    in_image = tf.reduce_all((boxes >= 0.0) & (boxes <= 1.0))
    # The message alone: data that is not text would wrap the check in a conditional, whose
    # call costs more than the rest of the check.
    with tf.control_dependencies([tf.debugging.Assert(in_image, [_BOX_ERROR])]):
        pixels = tf.cast(boxes * tf.stack([fh, fw, fh, fw]), tf.int32)
    # The boxes, or (none given) the whole image: the first max(n, 1) rows of both together.
    whole = tf.stack([[0, 0, height, width]])
    return tf.concat([pixels, whole], 0)[: tf.maximum(tf.shape(boxes)[0], 1)]


def sample_crops(shapes, boxes, uniforms, min_object_covered, area_range, aspect_ratio_range):
    """Crop windows [y, x, height, width] (batch, 4) of images of ``shapes`` (batch, 2), drawn
    as ``tf.image.sample_distorted_bounding_box`` draws them, from ``uniforms`` in [0, 1) of
    shape (batch, attempts, 4).

    Each attempt draws an aspect ratio, a height between those giving the smallest and largest
    allowed area, and an offset; it succeeds if its area is in ``area_range`` (as a fraction of
    the image) and it covers at least ``min_object_covered`` of one of ``boxes`` ((batch, n, 4)
    of ``pixel_boxes``; rows of zeros pad an image's boxes and cover nothing).  The first
    successful attempt wins; if none succeeds, the whole image.  Integer rounding follows
    TensorFlow's kernel (round half to even, truncating box corners, offsets in [0, H -
    height)); attempts, and images, are evaluated side by side: the ops of one image, a few
    hundred small ones, cost more than their arithmetic, so a chunk of images shares them.
    """
    f32, i32 = tf.float32, tf.int32
    height, width = shapes[:, 0:1], shapes[:, 1:2]  # (batch, 1): broadcast over the attempts
    fh, fw = tf.cast(height, f32), tf.cast(width, f32)
    u_aspect, u_height, u_y, u_x = tf.unstack(tf.cast(uniforms, f32), axis=2)

    def rint(value):  # lrintf
        return tf.cast(tf.round(value), i32)

    def uniform_int(u, n):  # an integer in [0, n), n >= 1
        return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, f32)), i32), n - 1)

    aspect = u_aspect * (aspect_ratio_range[1] - aspect_ratio_range[0]) + aspect_ratio_range[0]
    min_area = area_range[0] * fw * fh
    max_area = area_range[1] * fw * fh
    h = rint(tf.sqrt(min_area / aspect))
    max_h = rint(tf.sqrt(max_area / aspect))
    # The tallest crop whose rounded width still fits (the kernel's correction, same epsilon).
    eps = float(np.float32(1e-7))  # the kernel's float epsilon, in double arithmetic like it
    fitted = tf.cast((tf.cast(width, tf.float64) + 0.5 - eps) / tf.cast(aspect, tf.float64), i32)
    fitted = tf.where(rint(tf.cast(fitted, f32) * aspect) > width, fitted - 1, fitted)
    max_h = tf.where(rint(tf.cast(max_h, f32) * aspect) > width, fitted, max_h)
    max_h = tf.minimum(max_h, height)
    h = tf.minimum(h, max_h)
    h = h + tf.where(h < max_h, uniform_int(u_height, tf.maximum(max_h - h + 1, 1)), 0)

    def width_and_area(h):
        w = rint(tf.cast(h, f32) * aspect)
        return w, tf.cast(w * h, f32)

    w, area = width_and_area(h)
    h = tf.where(area < min_area, h + 1, h)  # rounding left it too small: one row more
    w, area = width_and_area(h)
    h = tf.where(area > max_area, h - 1, h)  # or too large: one row less
    w, area = width_and_area(h)
    valid = (
        (area >= min_area) & (area <= max_area) & (w <= width) & (h <= height) & (w > 0) & (h > 0)
    )
    y = tf.where(h < height, uniform_int(u_y, tf.maximum(height - h, 1)), 0)
    x = tf.where(w < width, uniform_int(u_x, tf.maximum(width - w, 1)), 0)

    covered = _covers_an_object(y, x, h, w, boxes, min_object_covered)
    valid = valid & (area >= 1.0) & covered

    first = tf.argmax(tf.cast(valid, i32), axis=1, output_type=i32)
    # (TF 1.15's batch_dims must be below the indices' rank: one index per image, as a column.)
    chosen = tf.gather(tf.stack([y, x, h, w], axis=2), first[:, None], batch_dims=1)[:, 0]
    whole = tf.concat([tf.zeros_like(shapes), shapes], axis=1)
    return tf.where(tf.reduce_any(valid, axis=1, keepdims=True), chosen, whole)


def _covers_an_object(y, x, h, w, boxes, min_object_covered: float):
    """Per image and attempt: whether the window (y, x, h, w), each (batch, attempts), covers
    at least ``min_object_covered`` of one of ``boxes`` (batch, n, 4)."""
    f32 = tf.float32
    by0, bx0, by1, bx1 = (boxes[:, None, :, i] for i in range(4))  # (batch, 1, n)
    y0, x0 = y[:, :, None], x[:, :, None]  # (batch, attempts, 1)
    y1, x1 = (y + h)[:, :, None], (x + w)[:, :, None]
    iy0, ix0 = tf.maximum(y0, by0), tf.maximum(x0, bx0)
    iy1, ix1 = tf.minimum(y1, by1), tf.minimum(x1, bx1)
    overlap = tf.where((iy0 > iy1) | (ix0 > ix1), tf.zeros_like(iy0), (iy1 - iy0) * (ix1 - ix0))
    box_area = tf.cast((bx1 - bx0) * (by1 - by0), f32)
    covered = (box_area >= 1.0) & (
        tf.cast(overlap, f32) / tf.maximum(box_area, 1.0) >= min_object_covered
    )
    return tf.reduce_any(covered, axis=2)


def decode(jpeg, input_mode: str):
    """The whole image as RGB: the reference's input mode decodes validation JPEGs as it did
    (no fancy upsampling of the chroma, the fast integer DCT)."""
    if input_mode == "reference":
        return tf.image.decode_jpeg(jpeg, 3, fancy_upscaling=False, dct_method="INTEGER_FAST")
    return tf.image.decode_jpeg(jpeg, channels=3)


def eval_image(jpeg, network: Network, inp: Input):
    """``resize_for_eval``, central crop, normalise."""
    size = network.image_size
    image = resize_for_eval(decode(jpeg, inp.input_mode), size, inp.resize, inp.input_mode)
    image = central_crop(image, size)
    image = normalize(image, network.preprocess)
    image.set_shape([size, size, 3])
    return image


def ten_crop_images(jpeg, network: Network, inp: Input):
    """The ten crops of multi-crop evaluation, shape (10, size, size, 3), normalised.

    Resized as ``eval_image``; then the four corners and the centre (index 4, ``eval_image``'s
    crop), followed by the same five mirrored.  Averaging the network's outputs over them is
    the ten-crop evaluation of AlexNet and Caffe-era accuracy tables (the VGG paper's own
    multi-crop figures use 150 crops over three scales).
    """
    size = network.image_size
    image = resize_for_eval(decode(jpeg, inp.input_mode), size, inp.resize, inp.input_mode)
    shape = tf.shape(image)
    bottom, right = shape[0] - size, shape[1] - size
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    crops = tf.stack([tf.slice(image, [top, left, 0], [size, size, 3]) for top, left in corners])
    crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
    crops = normalize(crops, network.preprocess)
    crops.set_shape([TEN_CROPS, size, size, 3])
    return crops


def resize_for_eval(image, image_size: int, resize: str, input_mode: str):
    """Before the central crop(s): ``aspect`` resizes the shorter side to ``image_size *
    256/224`` (the usual ImageNet protocol); ``square`` resizes the whole image to that square,
    ignoring its aspect ratio (the reference's 256x256 for 224)."""
    side = int(round(image_size * EVAL_RESIZE_RATIO))
    if resize == "square":
        return _bilinear_resize(image, [side, side], input_mode)
    return resize_shorter_side(image, side, input_mode)


def resize_shorter_side(image, side: int, input_mode: str):
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.minimum(height, width)
    new_h = tf.maximum(side, tf.cast(tf.round(height * scale), tf.int32))
    new_w = tf.maximum(side, tf.cast(tf.round(width * scale), tf.int32))
    return _bilinear_resize(image, [new_h, new_w], input_mode)


def _bilinear_resize(image, size, input_mode: str):
    """Bilinear resize to ``size`` as float32, with the float kernel: half-pixel centres
    (``tf.image.resize``), or the reference's TF 1 ``resize_images`` (corners not aligned, no
    half-pixel centres).

    TensorFlow's float kernel is vectorised and its uint8 one is not: casting a decoded JPEG
    first gives the same values 5-30% faster (20-110 us per 224x224 image on one core,
    bench/input_pipeline.py).
    """
    image = tf.cast(image, tf.float32)
    if input_mode == "reference":
        return v1.image.resize_bilinear(
            image[None], size, align_corners=False, half_pixel_centers=False
        )[0]
    return tf.image.resize(image, size, method="bilinear")


def central_crop(image, size: int):
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    return tf.slice(image, [top, left, 0], [size, size, 3])
