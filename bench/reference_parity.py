"""Golden values from Huawei's reference VGG16/VGG19 (Ascend ModelZoo), run on its own stack.

Standalone on TF 1.15 in graph mode; it never imports vgg_keras.  It imports the reference's
packages from a ModelZoo checkout (``vgg19`` from the seed folder, ``vgg16`` from the VGG16 copy),
gives them a stand-in ``npu_bridge`` (dropout as identity, the optimizer wrapper as a no-op: one
device, no NPU) and writes ``golden.json`` for the tests, plus the JPEG fixtures it reads:

  .venv-tf115/bin/python bench/reference_parity.py \
      --modelzoo ModelZoo-TensorFlow --out tests/data/reference

Every rule that makes an input (fixtures, weights, batch, sample indices) is written into the
JSON under "rules", so a test reproduces the inputs without the reference.  The three training
steps run the reference's graph with resource variables: with its own ref variables and
GATE_NONE an update can land before another gradient has read the variable (measured under
"reference_step_race").  docs/reference.md says how to get the reference; a run takes about
2 minutes of CPU time and 7 GB of memory (the full networks at batch 2).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import importlib
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

SEED_DIR = "TensorFlow/contrib/cv/VGG19_ID0374_for_TensorFlow"
VGG16_DIR = "TensorFlow/built-in/cv/image_classification/VGG16_ID0068_for_TensorFlow"
PACKAGES = {"seed_vgg19": (SEED_DIR, "vgg19"), "vgg16_copy": (VGG16_DIR, "vgg16")}

STAND_INS = {
    "npu_bridge/__init__.py": "",
    "npu_bridge/estimator/__init__.py": "",
    "npu_bridge/estimator/npu_ops.py": "def dropout(x, keep_prob, *args, **kwargs):\n    return x\n",
    "npu_bridge/estimator/npu/__init__.py": "",
    "npu_bridge/estimator/npu/npu_optimizer.py": (
        "def NPUDistributedOptimizer(optimizer, *args, **kwargs):\n    return optimizer\n"
    ),
}
STAND_IN_NOTE = {
    "npu_bridge.estimator.npu_ops.dropout": "identity: dropout is OFF in the step comparison",
    "npu_bridge.estimator.npu.npu_optimizer.NPUDistributedOptimizer": (
        "returns the optimizer unchanged (one device: no all-reduce); only vgg16/model.py uses it"
    ),
}

# (file, height, width, kind, noise seed); kind: rgb420 / rgb444 / gray via tf.image.encode_jpeg,
# cmyk via Pillow.  Sizes: landscape, portrait, odd, small, odd small.
FIXTURES = [
    ("rgb420_300x200.jpg", 200, 300, "rgb420", 1),
    ("rgb444_150x400.jpg", 400, 150, "rgb444", 2),
    ("rgb420_257x256.jpg", 256, 257, "rgb420", 3),
    ("gray_60x90.jpg", 90, 60, "gray", 4),
    ("rgb420_91x61.jpg", 61, 91, "rgb420", 5),
    ("cmyk_120x80.jpg", 80, 120, "cmyk", 6),
]
JPEG_QUALITY = 80
SAMPLE_COUNT = 4096
WINDOW_SEEDS = (1, 2, 3)
INIT_SEEDS = (0, 1, 2)
QUANTILES = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
ARGS = {
    "class_num": 1000,
    "label_smoothing": 0.1,
    "weight_decay": 0.0001,
    "momentum": 0.9,
    "use_nesterov": True,
    "lr": 0.01,
    "restore_path": "",
    "num_training_samples": 1281167,
    "global_batch_size": 256,
    "max_epochs": 150,
    "T_max": 150,
    "max_train_steps": None,
}
STEPS = 3
LABELS = [3, 997]

RULES = {
    "fixtures": (
        "image(h, w, seed): y, x = np.mgrid[0:h, 0:w] (float64); R = 30 + 190*x/max(w-1, 1); "
        "G = 40 + 170*y/max(h-1, 1); B = 128 + 90*sin(2*pi*(x + 2*y)/(0.7*(h + w))); "
        "the box |y - 0.4h| < 0.2h and |x - 0.55w| < 0.25w is replaced by 255 - value; "
        "pixels with (x + y) % 8 < 2 and 0.75h < y < 0.85h are multiplied by 0.6; "
        "+ np.random.RandomState(seed).normal(0, 3, (h, w, 3)); rounded, clipped to 0..255, "
        "uint8.  gray: round(rgb @ [0.299, 0.587, 0.114]).  rgb420/rgb444/gray: "
        "tf.image.encode_jpeg(quality=80, chroma_downsampling=kind == 'rgb420', format "
        "'grayscale' for gray) on TF 1.15.5; cmyk: PIL Image.fromarray(rgb).convert('CMYK')"
        ".save(format='JPEG', quality=80), Pillow 9.5.0.  The committed files are the inputs "
        "(sha256 under 'fixtures').  TF's decode_jpeg dct_method '' means INTEGER_FAST."
    ),
    "samples": (
        "indices = np.sort(np.random.RandomState(0).choice(224*224*3, 4096, replace=False)) "
        "into the row-major flattened (224, 224, 3) output; values are stored as base64 of "
        "little-endian float32 ('samples_f32le_b64'): np.frombuffer(base64.b64decode(s), '<f4')"
    ),
    "eval_input": (
        "output of the reference's preprocessing.parse_and_preprocess_image_record(jpeg, "
        "bbox, training=False); variants are the same chain (decode_jpeg(channels=3), "
        "resize to 256x256, central_crop(224/256), the reference's normalize) with one part "
        "changed; diffs are |variant - reference| over all 224*224*3 values, in normalized "
        "units and in pixel units (before normalize)"
    ),
    "train_input": (
        "the reference's preprocessing.decode_crop_and_resize(jpeg, bbox, 224, (0.08, 1.0), "
        "(0.75, 1.333)) then its normalize, bbox an empty float32 [1, 0, 4]; its own sampler "
        "op is unseeded (seed=seed2=0) whatever tf.set_random_seed says, so the window is fed "
        "into the sampler's outputs (bbox_begin = [y, x, 0], bbox_size = [h, w, -1]): window "
        "for seed s = tf.image.sample_distorted_bounding_box(tf.image.extract_jpeg_shape(jpeg), "
        "zeros [1, 0, 4], seed=s (seed2 0), min_object_covered=0.1, aspect_ratio_range=(0.75, "
        "1.333), area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)"
    ),
    "weights": (
        "trainable variables in creation order, two per layer (kernel, bias); layer index L "
        "from 0 (convs, then dense, dense_1, dense_2): kernel = np.random.RandomState(1000 + L)"
        ".standard_normal(shape).astype(np.float32) * np.float32(std), std = sqrt(2/(9*c_out)) "
        "for convs, 0.01 for dense; bias = np.random.RandomState(2000 + L).uniform(-0.05, 0.05, "
        "shape).astype(np.float32)"
    ),
    "batch": (
        "images = np.random.RandomState(7).standard_normal((2, 224, 224, 3)).astype(np.float32)"
        " fed as features (already preprocessed); labels [3, 997] int32 (0-based, as model_fn "
        "receives them); dropout off (stand-in)"
    ),
    "steps": (
        "the reference's model_fn (TRAIN) built with tf.compat.v1.enable_resource_variables() "
        "and run in a session with inter_op_parallelism_threads=1: the reference's own graph "
        "(ref variables, GATE_NONE) lets an update run before other gradients have read that "
        "variable, so its steps are neither clean nor repeatable (see reference_step_race); "
        "resource variables keep every read before the update.  train_op run 3 times, each run "
        "also fetching loss, total_loss, learning_rate and the l2 term (pre-update values of "
        "that step); TF's l2 and total_loss vary in their last bit from run to run (the AddN of "
        "the l2 term), so l2_float64 = weight_decay * sum ||w||^2/2 from the pre-step weights "
        "and total_loss_float64 = loss + l2_float64 are stored, TF's values checked to agree "
        "within 1e-6 relative; per trainable variable k (creation "
        "order): indices = np.random.RandomState(3000 + k).randint(0, size, 16) into the "
        "flattened variable; after steps 1 and 3: norm = ||w||, delta_norm = ||w - w0|| "
        "(float64), delta = (w - w0)[indices] (float64 of float32 values).  "
        "step1_max_rel_deviation_from_clean_update: max over variables of "
        "max |delta - clean| / max |clean|, clean = -lr * (1 + momentum) * "
        "tf.gradients(total_loss) at w0"
    ),
    "args": dict(ARGS, dtype="tf.float32"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--modelzoo", required=True, help="a checkout of Ascend/ModelZoo-TensorFlow")
    p.add_argument("--out", required=True, help="folder for golden.json and the JPEG fixtures")
    p.add_argument("--modelzoo_commit", default="", help="commit of --modelzoo if not a checkout")
    args = p.parse_args(argv)
    if not tf.__version__.startswith("1.15"):
        p.error(f"needs TensorFlow 1.15, the reference's stack (found {tf.__version__})")
    zoo, out = Path(args.modelzoo), Path(args.out)
    for rel, _ in PACKAGES.values():
        if not (zoo / rel).is_dir():
            p.error(f"--modelzoo: {zoo / rel} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
    with tempfile.TemporaryDirectory() as stubs:
        pkgs = import_reference(zoo, Path(stubs))
        golden = measure(zoo, out, pkgs, args.modelzoo_commit)
    text = json.dumps(golden, indent=1) + "\n"
    (out / "golden.json").write_text(text)
    print(f"wrote {out / 'golden.json'} ({len(text)} bytes)")
    return 0


def import_reference(zoo: Path, stubs: Path) -> dict:
    """The reference's modules, imported from ``zoo`` with the stand-in npu_bridge on sys.path."""
    for rel, text in STAND_INS.items():
        (stubs / rel).parent.mkdir(parents=True, exist_ok=True)
        (stubs / rel).write_text(text)
    sys.path[:0] = [str(stubs)] + [str(zoo / rel) for rel, _ in PACKAGES.values()]
    pkgs = {}
    for key, (_, name) in PACKAGES.items():
        pkgs[key] = {
            m: importlib.import_module(f"{name}.{m}")
            for m in ("hyper_param", "model", "layers", "preprocessing", "vgg")
        }
    return pkgs


def measure(zoo: Path, out: Path, pkgs: dict, commit: str) -> dict:
    """Every section of golden.json, timed on stdout."""
    golden = {
        "rules": RULES,
        "measured_with": machine(zoo, commit),
        "reference_files": reference_files(zoo),
        "stand_ins": STAND_IN_NOTE,
    }
    fixtures = load_fixtures(out)
    golden["fixtures"] = [
        {k: v for k, v in f.items() if k not in ("data", "source")} for f in fixtures
    ]
    prep = pkgs["seed_vgg19"]["preprocessing"]
    sections = [
        ("lr", lambda: lr_section(pkgs)),
        ("initializer", initializer_section),
        ("eval_input", lambda: eval_input_section(prep, fixtures)),
        ("train_input", lambda: train_input_section(prep, fixtures)),
    ]
    for name, make in sections:
        start = time.time()
        golden[name] = make()
        print(f"{name}: {time.time() - start:.1f} s")
    for name in ("variables", "weight_decay", "reference_step_race", "steps"):
        golden[name] = {}
    for arch, key in (("vgg16", "vgg16_copy"), ("vgg19", "seed_vgg19")):
        variables, decay, race = reference_variables_facts(pkgs[key], arch)
        golden["variables"][arch] = variables
        golden["weight_decay"][arch] = decay
        golden["reference_step_race"][arch] = race
        steps = steps_section(pkgs[key], arch)
        names = [v[:2] for v in variables]
        assert steps.pop("global_variables") == names, "resource and ref graphs differ"
        golden["steps"][arch] = steps
    return golden


# ---------------------------------------------------------------------------------------------
# Provenance


def machine(zoo: Path, commit: str) -> dict:
    """Versions, the ModelZoo commit, the date and the CPU model."""
    if not commit:
        found = subprocess.run(
            ["git", "-C", str(zoo), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        commit = found.stdout.strip() if found.returncode == 0 else "unknown"
    cpu = platform.processor()
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    from tensorflow.python import pywrap_tensorflow

    return {
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mkl_enabled": bool(pywrap_tensorflow.IsMklEnabled()),
        "modelzoo_commit": commit,
        "date": datetime.date.today().isoformat(),
        "cpu": names[0] if names else cpu,
    }


def reference_files(zoo: Path) -> dict:
    """sha256 of every reference module used, so a changed checkout is visible."""
    found = {}
    for rel, name in PACKAGES.values():
        for path in sorted((zoo / rel / name).glob("*.py")):
            found[f"{rel}/{name}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# ---------------------------------------------------------------------------------------------
# Fixtures


def fixture_pixels(h: int, w: int, seed: int, gray: bool) -> np.ndarray:
    """The fixture's source image (RULES['fixtures']): gradients, edges, seeded noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 30 + 190 * x / max(w - 1, 1)
    g = 40 + 170 * y / max(h - 1, 1)
    b = 128 + 90 * np.sin(2 * np.pi * (x + 2 * y) / (0.7 * (h + w)))
    img = np.stack([r, g, b], -1)
    box = (np.abs(y - h * 0.4) < h * 0.2) & (np.abs(x - w * 0.55) < w * 0.25)
    img[box] = 255 - img[box]
    img[((x + y) % 8 < 2) & (y > h * 0.75) & (y < h * 0.85)] *= 0.6
    img += np.random.RandomState(seed).normal(0, 3, img.shape)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if gray:
        img = np.round(img.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)[..., None]
    return img


def encode_fixture(img: np.ndarray, kind: str) -> bytes:
    """JPEG bytes of ``img`` as ``kind`` says (TF's encoder; Pillow for CMYK)."""
    if kind == "cmyk":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).convert("CMYK").save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        fmt = "grayscale" if kind == "gray" else "rgb"
        return sess.run(
            tf.image.encode_jpeg(
                img, format=fmt, quality=JPEG_QUALITY, chroma_downsampling=kind == "rgb420"
            )
        )


def load_fixtures(out: Path) -> list:
    """The committed fixtures (made once from the rule if absent), with their sha256."""
    fixtures = []
    for name, h, w, kind, seed in FIXTURES:
        source = fixture_pixels(h, w, seed, kind == "gray")
        path = out / name
        if not path.exists():
            path.write_bytes(encode_fixture(source, kind))
            print(f"created {path}")
        data = path.read_bytes()
        fixtures.append(
            {
                "file": name,
                "kind": kind,
                "height": h,
                "width": w,
                "noise_seed": seed,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "data": data,
                "source": source,
            }
        )
    return fixtures


# ---------------------------------------------------------------------------------------------
# Learning rate


def runs(table: np.ndarray) -> list:
    """``table`` as ``[[first_step, value], ...]``, one entry where the value changes."""
    change = np.flatnonzero(np.diff(table) != 0) + 1
    starts = [0] + change.tolist()
    return [[int(i), float(table[i])] for i in starts]


def namespace(**overrides):
    return argparse.Namespace(**dict(ARGS, dtype=tf.float32, **overrides))


def lr_section(pkgs: dict) -> dict:
    """Each package's per-step table as HyperParams builds it, compressed to runs."""
    section = {"call": "warmup_cosine_annealing_lr(0.01, 5004, 0, 150, 150, 0.0)"}
    for key, mods in pkgs.items():
        hp = mods["hyper_param"]
        table = hp.warmup_cosine_annealing_lr(0.01, 5004, 0, 150, 150, 0.0)
        via_class = hp.HyperParams(namespace())
        at_512 = hp.HyperParams(namespace(global_batch_size=512))
        section[key] = {
            "length": int(table.size),
            "dtype": str(table.dtype),
            "runs": runs(table),
            "equals_hyper_params_cos_lr": bool(np.array_equal(table, via_class.cos_lr)),
            "values_at": {str(i): float(table[i]) for i in probe_steps(table.size)},
            "global_batch_512": {"length": int(at_512.cos_lr.size), "runs": runs(at_512.cos_lr)},
            "gather_past_end": gather_past_end(hp, table.size),
        }
    section["nsteps_per_epoch"] = {
        str(b): pkgs["seed_vgg19"]["hyper_param"]
        .HyperParams(namespace(global_batch_size=b))
        .args.nsteps_per_epoch
        for b in (256, 512)
    }
    section["quirks"] = [
        "seed_vgg19: step decay, not cosine: 0.01, /10 from step 330000, /100 from 520000, "
        "/1000 from 625001: no branch matches i == 625000, so that step keeps the previous "
        "value 0.0001 (see values_at)",
        "seed_vgg19: the boundaries are absolute steps: at global batch 512 the table has "
        "375300 steps and only the first drop happens",
        "vgg16_copy: cosine per epoch (last_epoch = i // 5004), constant within an epoch, "
        "last value at epoch 149, never eta_min",
        "both: tf.gather(cos_lr, global_step) on CPU fails once global_step reaches the "
        "table's length (see gather_past_end)",
    ]
    return section


def probe_steps(length: int) -> list:
    """The steps around the seed's boundaries, and the last one."""
    return [0, 329999, 330000, 519999, 520000, 624999, 625000, 625001, 625002, length - 1]


def gather_past_end(hp, length: int) -> dict:
    """What HyperParams.get_learning_rate gives at global_step == len(table) on CPU."""
    with tf.Graph().as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        lr = hp.HyperParams(namespace()).get_learning_rate()
        with tf.compat.v1.Session() as sess:
            step.load(length, sess)
            try:
                return {"step": length, "value": float(sess.run(lr)), "error": None}
            except tf.errors.OpError as e:
                return {"step": length, "value": None, "error": type(e).__name__}


# ---------------------------------------------------------------------------------------------
# Initialisers


def sample_layer(build, in_shape: list, seed: int):
    """Kernel, bias and kernel initialiser of one layer made by ``build`` under graph seed."""
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(seed)
        build(tf.compat.v1.placeholder(tf.float32, in_shape))
        kernel, bias = tf.compat.v1.trainable_variables()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return sess.run(kernel), sess.run(bias)


def initializer_section() -> dict:
    """vgg.py's conv and dense initialisers, sampled through tf.layers as vgg.py calls them."""
    conv_init = tf.initializers.variance_scaling(scale=2.0, mode="fan_out")
    dense_init = tf.keras.initializers.RandomNormal(stddev=0.01)
    fan_out = 3 * 3 * 512
    target = np.sqrt(2.0 / fan_out)
    conv, dense = {}, {}
    for seed in INIT_SEEDS:
        kernel, bias = sample_layer(
            lambda x: tf.layers.conv2d(
                x,
                512,
                kernel_size=(3, 3),
                activation=tf.nn.relu,
                padding="SAME",
                use_bias=True,
                kernel_initializer=conv_init,
            ),
            [None, 8, 8, 256],
            seed,
        )
        z = kernel.astype(np.float64).ravel() / target
        conv[str(seed)] = {
            "std": float(kernel.astype(np.float64).std()),
            "std_over_target": float(z.std()),
            "max_abs_over_target": float(np.abs(z).max()),
            "quantiles_over_target": [float(q) for q in np.quantile(z, QUANTILES)],
            "bias_max_abs": float(np.abs(bias).max()),
        }
        kernel, bias = sample_layer(
            lambda x: tf.layers.dense(
                x, 4096, activation=tf.nn.relu, use_bias=True, kernel_initializer=dense_init
            ),
            [None, 4096],
            seed,
        )
        w = kernel.astype(np.float64).ravel() / 0.01
        dense[str(seed)] = {
            "std_over_stddev": float(w.std()),
            "max_abs_over_stddev": float(np.abs(w).max()),
            "bias_max_abs": float(np.abs(bias).max()),
        }
    return {
        "conv": {
            "call": "tf.layers.conv2d(x, 512, (3, 3), kernel_initializer="
            "tf.initializers.variance_scaling(scale=2.0, mode='fan_out')) on 256 channels",
            "shape": [3, 3, 256, 512],
            "fan_out": fan_out,
            "target_std": float(target),
            "initializer_class": type(conv_init).__module__ + "." + type(conv_init).__name__,
            "distribution": conv_init.distribution,
            "quantile_levels": list(QUANTILES),
            "by_graph_seed": conv,
        },
        "dense": {
            "call": "tf.layers.dense(x, 4096, kernel_initializer="
            "tf.keras.initializers.RandomNormal(stddev=0.01)) on 4096 inputs",
            "shape": [4096, 4096],
            "initializer_class": type(dense_init).__module__ + "." + type(dense_init).__name__,
            "by_graph_seed": dense,
        },
        "bias_initializer": "tf.layers default zeros (bias_max_abs above)",
    }


# ---------------------------------------------------------------------------------------------
# Input pipelines


def sample_indices() -> np.ndarray:
    return np.sort(np.random.RandomState(0).choice(224 * 224 * 3, SAMPLE_COUNT, replace=False))


def summary(image: np.ndarray) -> dict:
    """Channel mean and std (float64) and the fixed samples of a (224, 224, 3) output."""
    assert image.shape == (224, 224, 3) and image.dtype == np.float32, image.shape
    flat = image.reshape(-1, 3).astype(np.float64)
    samples = image.ravel()[sample_indices()].astype("<f4")
    return {
        "mean": flat.mean(0).tolist(),
        "std": flat.std(0).tolist(),
        "samples_f32le_b64": base64.b64encode(samples.tobytes()).decode("ascii"),
    }


def diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


EVAL_VARIANTS = {
    # name: (decode_jpeg options, resize); the first is the reference's chain itself
    "harness_copy": ({"fancy_upscaling": False, "dct_method": "INTEGER_FAST"}, "legacy"),
    "decode_fancy_upscaling_true": ({"dct_method": "INTEGER_FAST"}, "legacy"),
    "decode_dct_method_default": ({"fancy_upscaling": False}, "legacy"),
    "decode_dct_integer_accurate": (
        {"fancy_upscaling": False, "dct_method": "INTEGER_ACCURATE"},
        "legacy",
    ),
    "decode_fancy_upscaling_true_integer_accurate": ({"dct_method": "INTEGER_ACCURATE"}, "legacy"),
    "decode_default": ({}, "legacy"),
    "resize_half_pixel_centers": (
        {"fancy_upscaling": False, "dct_method": "INTEGER_FAST"},
        "half_pixel",
    ),
}
RESIZE = {
    "legacy": "tf.image.resize_images(image, [256, 256]) (align_corners=False; TF 1.15: "
    "resize_bilinear with half_pixel_centers=False)",
    "half_pixel": "tf.compat.v1.image.resize_bilinear(image[None], [256, 256], "
    "half_pixel_centers=True)[0]",
}


def eval_variant(record, options: dict, resize: str):
    """The eval chain with ``options`` for decode_jpeg and ``resize``: pixels before normalize."""
    image = tf.image.decode_jpeg(record, channels=3, **options)
    if resize == "legacy":
        image = tf.image.resize_images(image, [256, 256])
    else:
        image = tf.compat.v1.image.resize_bilinear(
            image[None], [256, 256], half_pixel_centers=True
        )[0]
    return tf.image.central_crop(image, 224.0 / 256)


def eval_input_section(prep, fixtures: list) -> dict:
    """The reference's eval preprocessing of each fixture, and what each variant changes."""
    by_fixture = {}
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        record = tf.compat.v1.placeholder(tf.string, [])
        bbox = tf.zeros([1, 0, 4])
        reference = prep.parse_and_preprocess_image_record(record, bbox, training=False)
        native = prep.decode_jpeg(record, channels=3)
        pixels = {k: eval_variant(record, *v) for k, v in EVAL_VARIANTS.items()}
        normalized = {k: prep.normalize(v) for k, v in pixels.items()}
        for f in fixtures:
            feed = {record: f["data"]}
            try:
                ref, nat, px, out = sess.run([reference, native, pixels, normalized], feed)
            except tf.errors.OpError as e:
                by_fixture[f["file"]] = {"ok": False, "error": type(e).__name__}
                continue
            source = np.broadcast_to(f["source"], nat.shape)
            entry = {"ok": True, "decoded_vs_source_pixels": diff(nat, source)}
            entry.update(summary(ref))
            entry["variants"] = {
                k: {
                    "normalized": diff(out[k], ref),
                    "pixels": diff(px[k], px["harness_copy"]),
                }
                for k in EVAL_VARIANTS
            }
            by_fixture[f["file"]] = entry
    return {
        "call": "preprocessing.parse_and_preprocess_image_record(jpeg, bbox, training=False)",
        "reference_decode": "decode_jpeg(channels=3, fancy_upscaling=False, "
        "dct_method='INTEGER_FAST'), then resize_images to 256x256, central_crop(0.875)",
        "note": "decode_dct_method_default shows TF's dct_method '' decodes as INTEGER_FAST",
        "variants": {
            k: {"decode_options": v[0], "resize": RESIZE[v[1]]} for k, v in EVAL_VARIANTS.items()
        },
        "by_fixture": by_fixture,
    }


SAMPLER_OP = "decode_crop_and_resize/sample_distorted_bounding_box/SampleDistortedBoundingBoxV2"
EMPTY_BOX = np.zeros((1, 0, 4), np.float32)


def train_graph(prep, seed: int) -> dict:
    """The reference's train crop + normalize, its sampler's outputs, and the window rule's."""
    tf.compat.v1.set_random_seed(seed)
    record = tf.compat.v1.placeholder(tf.string, [])
    bbox = tf.compat.v1.placeholder(tf.float32, [1, None, 4])
    image = prep.decode_crop_and_resize(record, bbox, 224, (0.08, 1.0), (0.75, 1.333))
    sampler = tf.compat.v1.get_default_graph().get_operation_by_name(SAMPLER_OP)
    with tf.name_scope("window_rule"):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(record),
            bounding_boxes=bbox,
            seed=seed,
            min_object_covered=0.1,
            aspect_ratio_range=(0.75, 1.333),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
    return {
        "record": record,
        "bbox": bbox,
        "out": prep.normalize(image),
        "sampler": sampler,
        "rule": (begin, size),
    }


def window(begin: np.ndarray, size: np.ndarray) -> list:
    return [int(begin[0]), int(begin[1]), int(size[0]), int(size[1])]


def train_fixture(prep, data: bytes) -> dict:
    """One fixture through the reference's train crop: per window seed, and the fed-window check."""
    entry = {"ok": True, "by_seed": {}}
    for seed in WINDOW_SEEDS:
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            g = train_graph(prep, seed)
            feed = {g["record"]: data, g["bbox"]: EMPTY_BOX}
            own_begin, own_size = g["sampler"].outputs[:2]
            try:
                begin, size = sess.run(g["rule"], feed)
                out = sess.run(g["out"], {**feed, own_begin: begin, own_size: size})
            except tf.errors.OpError as e:
                return {"ok": False, "error": type(e).__name__}
            entry["by_seed"][str(seed)] = {"window": window(begin, size), **summary(out)}
            if seed == WINDOW_SEEDS[0]:
                # The sampler's own choice and the output in one run, then that window fed.
                b, s, free = sess.run([own_begin, own_size, g["out"]], feed)
                fed = sess.run(g["out"], {**feed, own_begin: b, own_size: s})
                entry["own_sampler_run_reproduced_by_feeding_its_window"] = diff(free, fed)
    return entry


def sampler_facts(prep, data: bytes) -> dict:
    """Whether tf.set_random_seed fixes the reference's crop window, and its op's seeds."""
    windows = set()
    for _ in range(5):
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            g = train_graph(prep, 1)
            begin, size = sess.run(
                g["sampler"].outputs[:2], {g["record"]: data, g["bbox"]: EMPTY_BOX}
            )
            windows.add(tuple(window(begin, size)))
            attrs = {k: g["sampler"].get_attr(k) for k in ("seed", "seed2")}
    return {
        "op": SAMPLER_OP,
        "op_type": g["sampler"].type,
        "op_seed_attrs": attrs,
        "fresh_graphs_with_set_random_seed_1": 5,
        "distinct_windows": len(windows),
        "graph_seed_fixes_window": len(windows) == 1,
    }


def flip_facts(prep) -> dict:
    """random_horizontal_flip draws Python's random once per graph: all images or none."""
    import random

    flipped = []
    for seed in range(10):
        random.seed(seed)
        with tf.Graph().as_default() as graph:
            record = tf.compat.v1.placeholder(tf.string, [])
            prep.parse_and_preprocess_image_record(record, tf.zeros([1, 0, 4]), training=True)
            flipped.append(any(op.type == "ReverseV2" for op in graph.get_operations()))
    return {"python_random_seeds": list(range(10)), "graph_has_flip_op": flipped}


def train_input_section(prep, fixtures: list) -> dict:
    """The reference's training crop of each fixture for three window seeds."""
    return {
        "call": "preprocessing.decode_crop_and_resize(jpeg, bbox, 224, (0.08, 1.0), "
        "(0.75, 1.333)) then preprocessing.normalize; its decode_and_crop_jpeg keeps TF's "
        "default decode options (fancy_upscaling=True, dct_method '') unlike the eval path",
        "window_seeds": list(WINDOW_SEEDS),
        "sampler": sampler_facts(prep, fixtures[0]["data"]),
        "flip": flip_facts(prep),
        "by_fixture": {f["file"]: train_fixture(prep, f["data"]) for f in fixtures},
    }


# ---------------------------------------------------------------------------------------------
# The training graph: variables, weight decay, three steps


def build_train_graph(mods: dict) -> dict:
    """The reference's model_fn in TRAIN mode, as its Estimator calls it (global step first)."""
    tf.compat.v1.train.get_or_create_global_step()
    features = tf.compat.v1.placeholder(tf.float32, [2, 224, 224, 3])
    labels = tf.compat.v1.placeholder(tf.int32, [2])
    args = namespace()
    model = mods["model"].Model(
        args,
        data=None,
        hyper_param=mods["hyper_param"].HyperParams(args),
        layers=mods["layers"].Layers(),
        logger=None,
    )
    spec = model.get_estimator_model_func(features, labels, tf.estimator.ModeKeys.TRAIN)
    graph = tf.compat.v1.get_default_graph()
    total = graph.get_tensor_by_name("total_loss:0")
    l2 = total.op.inputs[0].op.inputs[1]  # total_loss = identity(base_loss + l2 * decay)
    assert l2.op.type == "Mul", l2
    return {
        "features": features,
        "labels": labels,
        "train_op": spec.train_op,
        "loss": graph.get_tensor_by_name("loss:0"),
        "total_loss": total,
        "lr": graph.get_tensor_by_name("learning_rate:0"),
        "l2": l2,
    }


def decayed_variables(l2: tf.Tensor) -> list:
    """The variables whose L2Loss feeds the weight-decay term, read from the graph itself."""
    names = []
    for op in l2.graph.get_operations():
        if op.type != "L2Loss" or l2.op not in downstream(op):
            continue
        source = op.inputs[0].op
        while source.type not in ("VariableV2", "VarHandleOp"):
            source = source.inputs[0].op
        names.append(source.name)
    return names


def downstream(op) -> set:
    seen, todo = set(), [op]
    while todo:
        for consumer in (c for t in todo.pop().outputs for c in t.consumers()):
            if consumer not in seen:
                seen.add(consumer)
                todo.append(consumer)
    return seen


def rule_weights(trainable: list) -> list:
    """RULES['weights'] for each trainable variable (kernel, bias per layer)."""
    values = []
    for k, var in enumerate(trainable):
        layer, shape = k // 2, var.shape.as_list()
        if k % 2 == 0:
            std = np.sqrt(2.0 / (9 * shape[-1])) if len(shape) == 4 else 0.01
            w = np.random.RandomState(1000 + layer).standard_normal(shape).astype(np.float32)
            values.append(w * np.float32(std))
        else:
            values.append(
                np.random.RandomState(2000 + layer).uniform(-0.05, 0.05, shape).astype(np.float32)
            )
    return values


def variable_state(sess, trainable: list, w0: list) -> list:
    """norm, delta_norm and the 16 sampled deltas of every trainable variable now."""
    states = []
    for k, (var, start) in enumerate(zip(trainable, w0)):
        w = sess.run(var).astype(np.float64)
        d = w - start
        at = np.random.RandomState(3000 + k).randint(0, start.size, 16)
        states.append(
            {
                "norm": norm(w),
                "delta_norm": norm(d),
                "delta": d.ravel()[at].tolist(),
            }
        )
    return states


def one_thread_session() -> tf.compat.v1.Session:
    """A session with one inter-op thread: ops run in one fixed order, so runs repeat exactly."""
    return tf.compat.v1.Session(config=tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1))


def loaded_graph(mods: dict, sess) -> tuple:
    """The training graph with the rule's weights loaded, the batch's feed and the clean gradients.

    The clean gradients (tf.gradients of total_loss at the loaded weights, in a run of their own)
    are what a step's update is compared with.
    """
    g = build_train_graph(mods)
    trainable = tf.compat.v1.trainable_variables()
    grads = tf.gradients(g["total_loss"], trainable)
    sess.run(tf.compat.v1.global_variables_initializer())
    w0 = rule_weights(trainable)
    for var, value in zip(trainable, w0):
        var.load(value, sess)
    images = np.random.RandomState(7).standard_normal((2, 224, 224, 3)).astype(np.float32)
    feed = {g["features"]: images, g["labels"]: np.array(LABELS, np.int32)}
    return g, trainable, w0, feed, sess.run(grads, feed)


def update_vs_clean(sess, trainable: list, w0: list, grads: list) -> dict:
    """Per variable: max |step-1 delta - clean update| / max |clean update|.

    The clean first Nesterov-momentum step from zero slots is -lr * (1 + momentum) * grad.
    """
    scale = ARGS["lr"] * (1 + ARGS["momentum"])
    found = {}
    for var, start, grad in zip(trainable, w0, grads):
        delta = sess.run(var).astype(np.float64) - start
        clean = -scale * grad.astype(np.float64)
        found[var.op.name] = float(np.abs(delta - clean).max() / np.abs(clean).max())
    return found


def reference_variables_facts(mods: dict, arch: str) -> tuple:
    """The reference's own graph (ref variables, GATE_NONE): its variables, its decay set, and
    whether its first step equals the clean update."""
    start = time.time()
    with tf.Graph().as_default(), one_thread_session() as sess:
        g, trainable, w0, feed, grads = loaded_graph(mods, sess)
        every = tf.compat.v1.global_variables()
        variables = [[v.op.name, v.shape.as_list(), v.dtype.base_dtype.name] for v in every]
        decayed = decayed_variables(g["l2"])
        sess.run(g["train_op"], feed)
        deviation = update_vs_clean(sess, trainable, w0, grads)
    worst = max(deviation, key=deviation.get)
    print(f"{arch}: ref variables: step 1 vs clean update, worst {worst} {deviation[worst]:.3g}")
    print(f"{arch}: ref-variable graph {time.time() - start:.1f} s")
    l2_64 = ARGS["weight_decay"] * sum(0.5 * np.sum(w.astype(np.float64) ** 2) for w in w0)
    decay = {
        "variables": decayed,
        "count": len(decayed),
        "trainable_count": len(trainable),
        "includes_biases": any(n.endswith("/bias") for n in decayed),
        "weight_decay": ARGS["weight_decay"],
        "l2_term_at_rule_weights_float64": float(l2_64),
    }
    race = {
        "variable_kind": type(trainable[0]).__name__,
        "step1_equals_clean_update": max(deviation.values()) < 1e-3,
        "criterion": "max |delta - clean| / max |clean| < 1e-3 for every variable",
    }
    return variables, decay, race


def steps_section(mods: dict, arch: str) -> dict:
    """Three steps of the reference's train_op with resource variables (see RULES['steps'])."""
    start = time.time()
    tf.compat.v1.enable_resource_variables()
    try:
        with tf.Graph().as_default(), one_thread_session() as sess:
            g, trainable, w0, feed, grads = loaded_graph(mods, sess)
            every = [[v.op.name, v.shape.as_list()] for v in tf.compat.v1.global_variables()]
            print(f"{arch}: graph, weights, clean gradients {time.time() - start:.1f} s")
            per_step, after = [], {}
            for step in range(1, STEPS + 1):
                l2 = l2_float64(sess, trainable)
                t = time.time()
                names = ("train_op", "loss", "total_loss", "lr", "l2")
                got = sess.run({k: g[k] for k in names}, feed)
                print(f"{arch}: step {step} {time.time() - t:.1f} s loss {got['loss']:.6f}")
                total = float(got["loss"]) + l2
                # TF's l2 and total_loss change in their last bit from run to run (the AddN of
                # the l2 term): stored in float64 from the weights, TF's checked against them.
                per_step.append(
                    {
                        "loss": float(got["loss"]),
                        "lr": float(got["lr"]),
                        "l2_float64": l2,
                        "total_loss_float64": total,
                        "tf_l2_and_total_loss_agree_1e-6": bool(
                            abs(got["l2"] - l2) <= 1e-6 * l2
                            and abs(got["total_loss"] - total) <= 1e-6 * total
                        ),
                    }
                )
                if step == 1:
                    deviation = update_vs_clean(sess, trainable, w0, grads)
                if step in (1, STEPS):
                    after[str(step)] = variable_state(sess, trainable, w0)
            slots = [v for v in tf.compat.v1.global_variables() if v.op.name.endswith("/Momentum")]
            slot_norms = {v.op.name: norm(sess.run(v)) for v in slots}
    finally:
        tf.compat.v1.disable_resource_variables()
    by_variable = {}
    for k, v in enumerate(trainable):
        by_variable[v.op.name] = {"k": k, "shape": v.shape.as_list()}
        by_variable[v.op.name].update({f"after_{s}": after[s][k] for s in after})
    print(f"{arch}: steps {time.time() - start:.1f} s")
    return {
        "variable_kind": type(trainable[0]).__name__,
        "per_step": per_step,
        "step1_max_rel_deviation_from_clean_update": max(deviation.values()),
        "by_variable": by_variable,
        "momentum_norms_after_3": slot_norms,
        "global_variables": every,
    }


def l2_float64(sess, trainable: list) -> float:
    """weight_decay * sum of ||w||^2 / 2 over the trainable variables now, in float64."""
    total = sum(0.5 * np.sum(np.square(sess.run(v).astype(np.float64))) for v in trainable)
    return float(ARGS["weight_decay"] * total)


def norm(value: np.ndarray) -> float:
    return float(np.linalg.norm(value.astype(np.float64).ravel()))


if __name__ == "__main__":
    sys.exit(main())
