"""TFDS-prepared datasets read through the same pipeline (a tiny dataset prepared here)."""

import numpy as np
import pytest

from vgg_keras.compat import tf
from vgg_keras.data import pipeline, schema
from vgg_keras.errors import UsageError

tfds = pytest.importorskip("tensorflow_datasets")

TRAIN_SIZE, EVAL_SIZE, CLASSES = 12, 5, 3


class TinyDigits(tfds.core.GeneratorBasedBuilder):
    """A local TFDS dataset with ImageNet's features (JPEG ``image``, 0-based ``label``)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=CLASSES),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(TRAIN_SIZE),
            "validation": self._generate_examples(EVAL_SIZE),
        }

    def _generate_examples(self, n):
        for i in range(n):
            # A flat grey level per class, so labels can be checked against pixels.
            image = np.full((40, 48, 3), 40 + 80 * (i % CLASSES), np.uint8)
            yield i, {"image": image, "label": i % CLASSES}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyDigits(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_split_sizes_come_from_tfds_info(tfds_dir):
    train = pipeline.load_split("tfds:tiny_digits", "train", tfds_dir)
    assert train.num_examples == TRAIN_SIZE
    assert train.parse is schema.parse_tfds
    assert pipeline.load_split("tfds:tiny_digits", "validation", tfds_dir).num_examples == EVAL_SIZE


def test_eval_pipeline_reads_every_image_with_zero_based_labels(tfds_dir):
    split = pipeline.load_split("tfds:tiny_digits", "validation", tfds_dir)
    labels, means = [], []
    for images, batch_labels in pipeline.eval_dataset(split, 2, 32, CLASSES, label_offset=1):
        labels += batch_labels.numpy().tolist()
        means += tf.reduce_mean(images, axis=[1, 2, 3]).numpy().tolist()
    # TFDS shuffles records when it writes them: compare as multisets.
    assert sorted(labels) == sorted(i % CLASSES for i in range(EVAL_SIZE))
    # Each image is its label's grey level: the brighter the class, the larger the mean.
    by_label = {}
    for label, mean in zip(labels, means):
        by_label.setdefault(label, []).append(mean)
    assert all(np.ptp(v) < 1e-3 for v in by_label.values())
    assert by_label[0][0] < by_label[1][0] < by_label[2][0]


def test_train_pipeline_batches(tfds_dir):
    split = pipeline.load_split("tfds:tiny_digits", "train", tfds_dir)
    images, labels = next(iter(pipeline.train_dataset(split, 4, 32, CLASSES)))
    assert images.shape == (4, 32, 32, 3)
    assert set(labels.numpy().tolist()) <= set(range(CLASSES))


def test_split_override_names_the_eval_split(tfds_dir):
    split = pipeline.load_split("tfds:tiny_digits:train", "validation", tfds_dir)
    assert split.num_examples == TRAIN_SIZE


@pytest.mark.parametrize(
    "spec, message",
    [
        ("tfds:tiny_digits:test", "no split 'test'"),
        ("tfds:not_a_dataset_name_xyz", "tfds:not_a_dataset_name_xyz"),
        ("tfds:", "expected tfds:NAME"),
    ],
)
def test_bad_specs_name_the_flag(tfds_dir, spec, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        pipeline.load_split(spec, "validation", tfds_dir)


def test_evaluation_reads_tfds_data_in_its_own_folder(tfds_dir, tmp_path):
    """--tfds_data_dir reaches the validation split (and run_eval.py has the flag)."""
    from vgg_keras import checkpoints, cli, evaluation, model
    from vgg_keras.compat import v1
    from vgg_keras.config import make_config

    config = make_config(
        data_dir="tfds:tiny_digits", tfds_data_dir=tfds_dir, class_num=CLASSES, image_size=32,
        width_multiplier=0.0625, batch_size=2, label_offset=0,
    )  # fmt: skip
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
        network = model.from_config(config)
        sess.run(v1.global_variables_initializer())
        prefix = str(tmp_path / checkpoints.PREFIX)
        v1.train.Saver(network.weights).save(sess, prefix, global_step=3)
    with evaluation.Evaluator(config) as evaluator:
        result = evaluator.evaluate(f"{prefix}-3")
    assert result["images"] == EVAL_SIZE
    assert result["epoch"] == round(3 / (TRAIN_SIZE / 2), 3)
    args = cli.eval_parser().parse_args(["--ckpt", prefix, "--tfds_data_dir", tfds_dir])
    assert args.tfds_data_dir == tfds_dir
