"""TFDS-prepared datasets read through the same pipeline (a tiny dataset prepared here)."""

import numpy as np
import pytest

from vgg_keras import compat, config
from vgg_keras.compat import tf
from vgg_keras.data import pipeline, schema
from vgg_keras.errors import UsageError

pytest.importorskip("tensorflow_datasets")
tfds = compat.import_tfds()

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
        # A list of SplitGenerators: the form both TFDS 3.2 (TF 1.15) and 4.x read.
        return [
            tfds.core.SplitGenerator(name=split, gen_kwargs={"n": n})
            for split, n in (("train", TRAIN_SIZE), ("validation", EVAL_SIZE))
        ]

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


def _config(tfds_dir, spec: str = "tfds:tiny_digits", **settings) -> config.Config:
    """The tiny dataset's settings (TFDS labels are 0-based; --label_offset is left at 1 to
    show it does not shift them)."""
    values = dict(data_dir=spec, tfds_data_dir=tfds_dir, class_num=CLASSES, image_size=32)
    return config.resolve(settings={**values, **settings}, need_data=False)


def _split(tfds_dir, split: str, spec: str = "tfds:tiny_digits") -> pipeline.Split:
    return pipeline.load_split(_config(tfds_dir, spec).input, split)


def test_split_sizes_come_from_tfds_info(tfds_dir):
    train = _split(tfds_dir, "train")
    assert train.num_examples == TRAIN_SIZE
    assert train.parse is schema.parse_tfds
    assert train.parse_many is schema.parse_tfds_many
    assert _split(tfds_dir, "validation").num_examples == EVAL_SIZE


def test_eval_pipeline_reads_every_image_with_zero_based_labels(tfds_dir):
    c = _config(tfds_dir, label_offset=1)
    split = pipeline.load_split(c.input, "validation")
    labels, means = [], []
    for images, batch_labels in pipeline.eval_dataset(split, c.network, c.input, 2):
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
    c = _config(tfds_dir, batch_size=4, shuffle_buffer=16)
    split = pipeline.load_split(c.input, "train")
    images, labels = next(iter(pipeline.train_dataset(split, c.network, c.input, seed=0)))
    assert images.shape == (4, 32, 32, 3)
    assert set(labels.numpy().tolist()) <= set(range(CLASSES))


def test_split_override_names_the_eval_split(tfds_dir):
    split = _split(tfds_dir, "validation", "tfds:tiny_digits:train")
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
        _split(tfds_dir, "validation", spec)


def test_evaluation_reads_tfds_data_in_its_own_folder(tfds_dir, tmp_path):
    """--tfds_data_dir reaches the validation split (and run_eval.py has the flag)."""
    from vgg_keras import cli, clock, evaluation, model, rundir
    from vgg_keras.compat import v1

    c = _config(tfds_dir, width_multiplier=0.0625, batch_size=2, label_offset=0)
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
        network = model.build(c.network)
        sess.run(v1.global_variables_initializer())
        prefix = str(tmp_path / rundir.CHECKPOINT_PREFIX)
        v1.train.Saver(network.weights).save(sess, prefix, global_step=3)
    # Training's epoch: its 12 images in batches of 2.
    per_epoch = clock.steps_per_epoch(_split(tfds_dir, "train").num_examples, 2)
    with evaluation.Evaluator(c, per_epoch, precision="fp32") as evaluator:
        result = evaluator.evaluate(f"{prefix}-3")
    assert result["images"] == EVAL_SIZE
    assert result["epoch"] == round(3 / (TRAIN_SIZE / 2), 3)
    args = cli.eval_args(["--ckpt", prefix, "--tfds_data_dir", tfds_dir])
    assert args.settings["tfds_data_dir"] == tfds_dir
    assert config.resolve(settings=args.settings, need_data=False).input.tfds_data_dir == tfds_dir
