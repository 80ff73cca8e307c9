"""Evaluation results: the table people read (percent), the files programs read (fractions),
the curve, and per-class accuracy with the confusion matrix.

    eval_results[.<tag>].json   [{checkpoint, step, epoch, top1, top5, loss, images, crops,
                                  resize, input_mode, data_dir}, ...], one per checkpoint
    eval_results[.<tag>].csv    the same rows
    eval_curve[.<tag>].png      top-1/top-5 and loss against step (two or more checkpoints)
    eval_results[.<tag>].step<N>.per_class.csv / .confusion.json / .confusion.png  (--per_class)

A file's rows are merged by step: evaluating one checkpoint again replaces its row and keeps
the others.  The tag names the settings that differ from the run's own evaluation.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import re

import numpy as np

from vgg_keras import atomic, documents, rundir, storage
from vgg_keras.config import Config
from vgg_keras.data import info
from vgg_keras.errors import UsageError
from vgg_keras.reporting import read_metrics

SUMS = ("top1", "top5", "loss", "images")  # what the evaluation graph sums
WORST_CLASSES = 5  # the per-class rows printed
KEYS = ("checkpoint", "step", "epoch", "top1", "top5", "loss", "images")
SETTINGS = ("crops", "resize", "input_mode", "data_dir")  # recorded with every row
HEADER = (
    f"{'step':>8}  {'epoch':>6}  {'top1 %':>7}  {'top5 %':>7}  {'loss':>7}  checkpoint_time(UTC)"
)


def row(
    checkpoint: str, step: int, steps_per_epoch: int | None, totals: dict, written: float
) -> dict:
    images = int(totals["images"])  # at least one: evaluation refuses none
    return {
        "checkpoint": checkpoint,
        "step": step,
        "epoch": round(step / steps_per_epoch, 3) if steps_per_epoch else None,
        **{k: totals[k] / images for k in SUMS[:3]},
        "images": images,
        "checkpoint_time": written,
    }


def format_row(result: dict) -> str:
    """One row of the evaluation table: accuracies in percent, as TF-slim and torchvision
    print them."""
    when = result.get("checkpoint_time")
    stamp = (
        datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        if when
        else "-"
    )
    epoch = f"{result['epoch']:6.1f}" if result.get("epoch") is not None else f"{'-':>6}"
    return (
        f"{result['step']:8d}  {epoch}  {100 * result['top1']:7.2f}  "
        f"{100 * result['top5']:7.2f}  {result['loss']:7.4f}  {stamp}"
    )


def tag(config: Config, crops: int, saved: dict) -> str:
    """What distinguishes this evaluation from the run's own (one central crop, the run's data,
    resize and input mode, from its config.json ``saved``): "" when nothing does."""
    parts = [f"crops{crops}"] if crops != 1 else []
    if saved:
        inp = config.input
        own = config.replace(**{k: saved[k] for k in ("eval_resize", "input_mode") if k in saved})
        if inp.resize != own.input.resize:
            parts.append(f"resize-{inp.resize}")
        if inp.input_mode != own.input.input_mode:
            parts.append(f"input-{inp.input_mode}")
        data = saved.get("data_dir")
        if data and storage.normpath(str(data)) != storage.normpath(inp.data_dir):
            parts.append("data-" + _slug(inp.data_dir))
    return ".".join(parts)


def _slug(path: str) -> str:
    name = os.path.basename(storage.normpath(path)) or "data"
    return re.sub(r"[^\w-]+", "_", name)[:40]


def write(rows: list[dict], config: Config, output: str, tag: str, crops: int) -> list[str]:
    """The results files in ``output``: the JSON and CSV (merged with the rows already there),
    the curve, and per-class files for the newest row if it carries a confusion matrix; returns
    the lines that say where those are and which classes did worst."""
    storage.makedirs(output)
    inp = config.input
    settings = dict(zip(SETTINGS, (crops, inp.resize, inp.input_mode, inp.data_dir)))
    new = [{**{k: r[k] for k in KEYS}, **settings} for r in rows]
    path = os.path.join(output, rundir.results_name(tag))
    merged = _merge(path, new)
    atomic.write_text(path, json.dumps(merged, indent=1) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, KEYS + SETTINGS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(merged)
    atomic.write_text(os.path.join(output, rundir.results_name(tag, ".csv")), text.getvalue())
    # Training's own evaluations (one crop, the run's data) fill in the steps not kept.
    earlier = [] if tag else _training_evaluations(os.path.dirname(merged[0]["checkpoint"]))
    earlier = [r for r in earlier if r["step"] not in {m["step"] for m in merged}]
    if len(merged) + len(earlier) > 1:
        title = os.path.dirname(merged[0]["checkpoint"]) or "."
        title += f", {crops} crops" if crops > 1 else ", one central crop"
        plot_curve(merged, os.path.join(output, rundir.curve_name(tag)), title, earlier)
    if "confusion" not in rows[-1]:
        return []
    return write_per_class(rows[-1], _class_names(config), output, tag)


def _training_evaluations(log_dir: str) -> list[dict]:
    """The evaluations training recorded in its metrics.jsonl, as rows (none if unreadable)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):
        records = [r for r in read_metrics(log_dir) if "eval_top1" in r]
        return [{"step": r["step"], **{k: r["eval_" + k] for k in SUMS[:3]}} for r in records]
    return []


def _merge(path: str, new: list[dict]) -> list[dict]:
    """The rows of the file at ``path`` with those of ``new`` in place of the same steps."""
    try:
        old = documents.read_json(path, "evaluation results", list)
    except UsageError:
        old = []  # not ours, or cut short: replaced by the complete new file
    steps = {r["step"] for r in new}
    rows = [r for r in old if isinstance(r, dict) and isinstance(r.get("step"), int)]
    kept = [r for r in rows if r["step"] not in steps]
    return sorted(kept + new, key=lambda r: r["step"])


def _class_names(config: Config) -> list[str]:
    labels = os.path.join(config.input.data_dir or "", info.LABELS_FILE)
    names = info.read_labels(labels) if storage.isfile(labels) else []
    classes = config.network.class_num
    return names if len(names) == classes else [str(k) for k in range(classes)]


def write_per_class(result: dict, names: list[str], output: str, tag: str) -> list[str]:
    """Per-class accuracy (CSV) and the confusion matrix (JSON, PNG) of one checkpoint; returns
    the lines that name the files and show the worst classes."""
    confusion = np.asarray(result["confusion"], dtype=np.int64)
    images = confusion.sum(axis=1)
    correct = np.diag(confusion)
    base = os.path.join(output, rundir.per_class_name(result["step"], tag))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["class", "name", "images", "correct", "top1"])
    accuracy = correct / np.where(images, images, np.nan)
    for k, name in enumerate(names):
        writer.writerow([k, name, int(images[k]), int(correct[k]), f"{accuracy[k]:.6f}"])
    atomic.write_text(base + ".per_class.csv", text.getvalue())
    document = {
        "checkpoint": result["checkpoint"],
        "classes": names,
        "rows": "label",
        "columns": "prediction",
        "matrix": confusion.tolist(),
    }
    atomic.write_text(base + ".confusion.json", json.dumps(document) + "\n")
    plot_confusion(confusion, names, base + ".confusion.png", result["checkpoint"])
    worst = [k for k in np.argsort(accuracy, kind="stable") if images[k]][:WORST_CLASSES]
    return [
        f"per class, step {result['step']}: {base}.per_class.csv, {base}.confusion.png; "
        f"the {len(worst)} lowest of {len(names)} classes:",
        f"{'class':>8}  {'top1 %':>7}  {'correct':>7}  {'images':>7}  name",
        *(
            f"{k:8d}  {100 * accuracy[k]:7.2f}  {correct[k]:7d}  {images[k]:7d}  {names[k]}"
            for k in worst
        ),
    ]


def _figure(size):
    # The Agg canvas directly, not pyplot: no global backend state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str) -> None:
    with atomic.replacing(path) as tmp, storage.open(tmp, "wb") as f:
        figure.savefig(f, format="png")


def plot_curve(rows: list[dict], path: str, title: str, earlier: list[dict] = ()) -> None:
    """Top-1/top-5 (percent, the y-range fitted to the values) and the loss against step;
    ``earlier`` (training's evaluations of checkpoints not kept) drawn hollow on the same lines."""
    figure = _figure((9, 4.4))
    accuracy, loss = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    points = sorted([*rows, *earlier], key=lambda r: r["step"])
    lines = (("top1", accuracy, "o-", "tab:blue"), ("top5", accuracy, "s--", "tab:orange"))
    for key, axes, fmt, colour in (*lines, ("loss", loss, "o-", "tab:red")):
        scale, label = (1 if key == "loss" else 100), key.replace("top", "top-")
        steps, values = [r["step"] for r in points], [scale * r[key] for r in points]
        axes.plot(steps, values, fmt, color=colour, mfc=colour, label=label)
        steps, values = [r["step"] for r in earlier], [scale * r[key] for r in earlier]
        axes.plot(steps, values, fmt[0], color=colour, mfc="white", label=f"{label}, training's")
    values = [100 * r[k] for r in points for k in ("top1", "top5")]
    margin = max(1.0, 0.1 * (max(values) - min(values)))  # headroom: nothing on the frame
    accuracy.set(xlabel="step", ylabel="accuracy (%)")
    accuracy.set_ylim(max(0, min(values) - margin), max(values) + margin)
    accuracy.set_yticks([t for t in accuracy.get_yticks() if 0 <= t <= 100])
    loss.set(xlabel="step", ylabel="loss")
    for axes in (accuracy, loss):
        axes.grid(alpha=0.3)
    # Below the panels: a legend inside would cover the last points.
    handles = [h for h in accuracy.get_legend_handles_labels()[0] if len(h.get_xdata())]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    figure.suptitle(title + (" (hollow: checkpoint not kept)" if earlier else ""), fontsize=9)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    _save(figure, path)


def plot_confusion(confusion: np.ndarray, names: list[str], path: str, title: str) -> None:
    """The confusion matrix, each row (a true class) as fractions of its images."""
    classes = len(names)
    figure = _figure((max(4, min(16, 0.4 * classes + 2)),) * 2)
    axes = figure.add_subplot()
    totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fractions = confusion / totals
    image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    bar = figure.colorbar(image, ax=axes, fraction=0.046)
    bar.set_label("fraction of the true class's images")
    if classes <= 40:
        axes.set_xticks(range(classes))
        axes.set_yticks(range(classes))
        axes.set_xticklabels(names, rotation=90, fontsize=7)
        axes.set_yticklabels(names, fontsize=7)
        cells = [(i, j) for i in range(classes) for j in range(classes) if classes <= 20]
        for i, j in filter(lambda ij: confusion[ij], cells):  # white on dark, black on light
            colour = "white" if fractions[i, j] > 0.5 else "black"
            axes.text(j, i, confusion[i, j], ha="center", va="center", size=7, color=colour)
    axes.set(xlabel="predicted", ylabel="true")
    axes.set_title(title, fontsize=8)
    figure.tight_layout()
    _save(figure, path)
