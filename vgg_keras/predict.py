"""Classifying image files with a checkpoint, a published Keras weight file, or an exported model.

``python run_predict.py photos/ cat.jpg 'more/*.jpg' --ckpt runs/demo --top 5`` prints one line
per image with the top classes and their probabilities (``--json``: one JSON document).  Images
go through the evaluation preprocessing, batched; a checkpoint's class names come from the
dataset's labels.txt (``--labels`` to choose another), an export's from the labels.txt inside it.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from tqdm import tqdm

from vgg_keras import config as config_lib
from vgg_keras import distribute, export, storage
from vgg_keras.compat import tf, v1
from vgg_keras.data import info
from vgg_keras.errors import EXIT_USAGE, UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")  # what a folder is searched for
NOT_AN_IMAGE = "not an image the decoder reads (JPEG, PNG, BMP, GIF)"


def find_images(patterns: list[str]) -> list[str]:
    """Image paths from files, folders (searched recursively) and glob patterns, in order."""
    found: list[str] = []
    for pattern in patterns:
        paths = [pattern] if storage.exists(pattern) else sorted(storage.glob(pattern))
        if not paths:
            raise UsageError(f"{pattern}: no such file")
        for path in paths:
            if not storage.isdir(path):
                found.append(path)
                continue
            inside = sorted(
                os.path.join(root, name)
                for root, _, names in storage.walk(path)
                for name in names
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not inside:
                raise UsageError(f"{path}: no {'/'.join(IMAGE_EXTENSIONS)} files in this folder")
            found.extend(inside)
    return list(dict.fromkeys(found))  # a file named twice is classified once


class Predictor:
    """Class probabilities for encoded images, from an inference graph or a SavedModel."""

    def __init__(self, session: v1.Session, image_bytes, probabilities, labels: list[str]):
        self.session = session
        self.image_bytes = image_bytes
        self.probabilities = probabilities
        self.labels = labels

    @classmethod
    def from_source(cls, source: export.ModelSource, labels_file: str | None = None):
        inference = export.build_inference(source)  # first: a model that does not load is the error
        try:
            labels = export.class_names(
                labels_file or source.labels_file(), source.config.network.class_num
            )
        except UsageError:
            inference.close()
            raise
        heads = inference.outputs["image_bytes"]
        return cls(inference.session, inference.image_bytes, heads["probabilities"], labels)

    @classmethod
    def from_saved_model(cls, folder: str, labels_file: str | None, runtime):
        if not storage.isfile(os.path.join(folder, "saved_model.pb")):
            raise UsageError(f"--model {folder}: no saved_model.pb (export with run_export.py)")
        own = os.path.join(folder, info.LABELS_FILE)
        labels_file = labels_file or (own if storage.isfile(own) else None)
        graph = tf.Graph()
        session = distribute.single_device().session(graph, runtime)
        try:
            with graph.as_default():
                meta = v1.saved_model.loader.load(
                    session, [v1.saved_model.tag_constants.SERVING], folder
                )
            signature = meta.signature_def.get(export.BYTES_SIGNATURE)
            if signature is None or "image_bytes" not in signature.inputs:
                raise UsageError(
                    f"--model {folder}: no {export.BYTES_SIGNATURE} signature taking image_bytes "
                    "(export with run_export.py)"
                )
            image_bytes = graph.get_tensor_by_name(signature.inputs["image_bytes"].name)
            probabilities = graph.get_tensor_by_name(signature.outputs["probabilities"].name)
            labels = export.class_names(labels_file, probabilities.shape[-1])
        except UsageError:
            session.close()
            raise
        return cls(session, image_bytes, probabilities, labels)

    def predict(self, images: list[tuple[str, bytes]], batch_size: int) -> np.ndarray:
        """float32 [len(images), classes] probabilities of (path, encoded bytes) pairs,
        ``batch_size`` per session call; a progress bar on a terminal."""
        batches = []
        with tqdm(total=len(images), unit="image", leave=False, disable=None) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                feed = {self.image_bytes: [data for _, data in chunk]}
                try:
                    batches.append(self.session.run(self.probabilities, feed))
                except tf.errors.InvalidArgumentError as err:
                    bad = _undecodable(chunk)
                    if bad is None:
                        raise
                    raise bad from err
                bar.update(len(chunk))
        return np.concatenate(batches)

    def close(self) -> None:
        self.session.close()


def _encoded(path: str) -> bytes:
    """The file's bytes as the serving graph's JPEG decoder reads them: a JPEG as it is, any
    other format TensorFlow decodes (PNG, BMP, GIF, CMYK JPEG) re-encoded to an RGB JPEG, as
    the converter does for training data."""
    from vgg_keras.tools import convert

    try:
        with storage.open(path, "rb") as f:
            return convert.encode_image(f.read())[0]
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err.strerror})") from err
    except convert.BadImage as err:
        raise UsageError(f"{path}: {NOT_AN_IMAGE}") from err


def _undecodable(images: list[tuple[str, bytes]]) -> UsageError | None:
    """The error naming the first file of a failed batch that the decoder rejects."""
    for path, data in images:
        try:
            tf.io.decode_jpeg(data, channels=3)
        except tf.errors.InvalidArgumentError:
            return UsageError(f"{path}: {NOT_AN_IMAGE}")
    return None


def usable(paths: list[str]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """((path, the bytes the decoder reads) of the images that can be classified, one-line
    reasons for those that cannot)."""
    good, bad = [], []
    for path in paths:
        try:
            good.append((path, _encoded(path)))
        except UsageError as err:
            bad.append(str(err))
    return good, bad


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, probabilities) of the ``k`` most probable classes per row, best first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)


def results(paths: list[str], probabilities: np.ndarray, labels: list[str], k: int) -> list[dict]:
    classes, probs = top_k(probabilities, k)
    return [
        {
            "file": path,
            "top": [
                {"class": int(c), "label": labels[c], "probability": float(p)}
                for c, p in zip(row_classes, row_probs)
            ],
        }
        for path, row_classes, row_probs in zip(paths, classes, probs)
    ]


def run(args) -> int:
    """run_predict.py with cli.predict_args' flags."""
    options = args.options
    images, skipped = usable(find_images(args.extra["images"]))
    for why in skipped:
        print(f"skipped: {why}", file=sys.stderr)
    if not images:
        raise UsageError(f"none of the {len(skipped)} file(s) is an image the decoder reads")
    if args.extra.get("model"):
        runtime = config_lib.resolve(settings=args.settings, need_data=False).runtime
        predictor = Predictor.from_saved_model(args.extra["model"], options.labels, runtime)
    else:
        predictor = Predictor.from_source(export.source_from_args(args), options.labels)
    try:
        probabilities = predictor.predict(images, options.batch_size)
    finally:
        predictor.close()
    found = results([path for path, _ in images], probabilities, predictor.labels, options.top)
    if options.json:
        print(json.dumps(found, indent=1))
    else:
        for result in found:
            ranked = "; ".join(f"{t['label']} {t['probability']:.4f}" for t in result["top"])
            print(f"{result['file']}: {ranked}")
    if skipped:  # the others are classified; the exit code still says that some were not
        print(f"error: {len(skipped)} file(s) skipped, listed above", file=sys.stderr)
        return EXIT_USAGE
    return 0
