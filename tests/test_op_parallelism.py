"""One op at a time on one CPU device when each step's ops fill the cores; else TensorFlow's
choice, or what --inter_op_threads says."""

import pytest

from vgg_keras import distribute, op_parallelism
from vgg_keras import model as model_lib
from vgg_keras.compat import gpu_count, keras, tf
from vgg_keras.config import resolve

ONE_AT_A_TIME = op_parallelism.ONE_AT_A_TIME_GFLOP * 1e9


def _config(preset="imagenet", **settings):
    return resolve(preset, settings, need_data=False)


def test_a_convolution_and_a_dense_layer_are_counted_as_2_x_their_multiply_adds():
    with tf.Graph().as_default():
        images = keras.Input((8, 8, 3))
        features = keras.layers.Conv2D(4, 3, padding="same")(images)
        logits = keras.layers.Dense(5)(keras.layers.Flatten()(features))
        model = keras.Model(images, logits)
    assert op_parallelism.forward_flops_per_image(model) == 2 * (8 * 8 * 9 * 3 * 4 + 256 * 5)


def test_vgg16_at_224_px_is_its_published_15_5_billion_multiply_adds():
    with tf.Graph().as_default():
        model = model_lib.build(_config(image_size=224, class_num=1000).network)
    convolutions = 15_346_630_656
    dense = 25_088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert op_parallelism.forward_flops_per_image(model) == 2 * (convolutions + dense)


@pytest.mark.parametrize(
    "requested, step_flops, cores, expected",
    [
        (0, ONE_AT_A_TIME * 2, 2, 1),  # each of 2 cores has the threshold's work: one at a time
        (0, ONE_AT_A_TIME * 2 - 1, 2, 0),  # just under it: TensorFlow's choice
        (0, ONE_AT_A_TIME * 2, 4, 0),  # the same work spread over twice the cores
        (0, 0.0, 2, 0),  # a graph of unknown work (export, prediction)
        (3, ONE_AT_A_TIME * 100, 2, 3),  # what the user asked for, either way
        (2, 0.0, 2, 2),
    ],
)
def test_inter_op_threads(requested, step_flops, cores, expected):
    assert op_parallelism.inter_op_threads(requested, step_flops, cores) == expected


@pytest.mark.skipif(gpu_count() > 0, reason="with a GPU, TensorFlow's choice stays")
def test_one_cpu_device_runs_a_large_step_one_op_at_a_time_unless_told_otherwise():
    one_device = distribute.single_device()
    two_cores = _config(intra_op_threads=2).runtime
    large, small = 2 * ONE_AT_A_TIME, 2 * ONE_AT_A_TIME / 100
    assert one_device.session_config(two_cores, large).inter_op_parallelism_threads == 1
    assert one_device.session_config(two_cores, small).inter_op_parallelism_threads == 0
    told = _config(intra_op_threads=2, inter_op_threads=2).runtime
    assert one_device.session_config(told, large).inter_op_parallelism_threads == 2
    config = one_device.session_config(two_cores, large)
    assert config.intra_op_parallelism_threads == 2 and config.allow_soft_placement


def test_the_demo_keeps_tensorflows_choice_and_vgg16_at_224_px_batch_64_goes_one_at_a_time():
    """The step work the training session is given, at the two ends of what was measured."""

    def per_core(preset="imagenet", **settings):
        config = _config(preset, **settings)
        with tf.Graph().as_default():
            flops = op_parallelism.training_flops_per_image(model_lib.build(config.network))
        return flops * config.input.batch_size / 2

    assert per_core("demo") < ONE_AT_A_TIME / 100
    assert per_core(image_size=224, class_num=1000, batch_size=64) > 2 * ONE_AT_A_TIME
