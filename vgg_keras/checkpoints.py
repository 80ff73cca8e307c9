"""Checkpoints' variables: which network a checkpoint holds, in which layout, and restoring it.

Two layouts are read everywhere a checkpoint is read (evaluation, export, prediction,
fine-tuning, resuming): ours, named by keras.applications' layers (``block1_conv1/kernel``), and
the reference implementation's, named by ``tf.compat.v1.layers`` in creation order
(``conv2d/kernel`` ... ``dense_2/bias``, see arch.py); both with ``.../Momentum`` slots and
``global_step``.  ``Contents`` says what a checkpoint holds; ``stored_name`` maps one of our
variables to its name there.  Restoring reads the values and feeds them to the variables'
initializers (``assign``): no ops are added, so it works on a finalized graph, for any layout.
We always save in our layout.
"""

from __future__ import annotations

import dataclasses

from vgg_keras import arch
from vgg_keras.arch import BLOCK_FILTERS
from vgg_keras.compat import tf
from vgg_keras.errors import UsageError, reason

OURS, REFERENCE = "ours", "reference"
GLOBAL_STEP = "global_step"  # the same in both layouts, never restored by --restore_path


def variable_shapes(path: str) -> dict[str, list[int]]:
    """{variable name: shape} stored in a checkpoint (an unreadable one is a UsageError)."""
    try:
        return _reader(path).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as err:
        raise UsageError(f"{path}: unreadable checkpoint ({reason(err)})") from err


def _reader(path: str):
    """The reader of the checkpoint prefix ``path`` (``load_checkpoint`` would take a folder
    too, and so mistakes ``ram://run/model.ckpt-40`` for one: that store matches prefixes)."""
    return tf.compat.v1.train.NewCheckpointReader(path)


@dataclasses.dataclass(frozen=True)
class Contents:
    """What a checkpoint holds: its variables' shapes, its layout and its network."""

    path: str
    shapes: dict
    layout: str
    arch: arch.Arch | None  # None: layers that are no VGG of the table

    @property
    def layers(self) -> set[str]:
        """The layer (or reference scope) names that have a kernel."""
        return {n.split("/")[0] for n in self.shapes if n.endswith("/kernel") and n.count("/") == 1}

    def first_conv(self) -> list[int] | None:
        return self.shapes.get(
            "conv2d/kernel" if self.layout == REFERENCE else "block1_conv1/kernel"
        )

    def settings(self) -> dict:
        """The network settings the variables say: arch, class_num, width_multiplier and,
        from fc1's input (image_size/32 squared cells of the last filters), image_size."""
        if self.arch is None:
            return {}
        top, fc1, last = (
            self.shapes.get(stored_name(f"{layer}/kernel", self))
            for layer in ("predictions", "fc1", self.arch.conv_layers()[-1])
        )
        found = {"arch": self.arch.name}
        if top:
            found["class_num"] = top[-1]
        conv = self.first_conv()
        if conv:
            found["width_multiplier"] = conv[-1] / BLOCK_FILTERS[0]
        if last and fc1:
            found["image_size"] = int(round((fc1[0] / last[-1]) ** 0.5)) * 32
        return found

    def describe(self, width: bool = False) -> str:
        """``vgg16 with 10 classes`` (``at width 0.25`` when asked), as messages show it."""
        name = self.arch.name if self.arch else "an unknown network"
        top = "dense_2" if self.layout == REFERENCE else "predictions"
        classes = self.shapes.get(f"{top}/kernel", [None, "?"])[-1]
        conv = self.first_conv()
        at = f" at width {conv[-1] / BLOCK_FILTERS[0]:g}" if width and conv else ""
        return f"{name}{at} with {classes} classes"


def read_contents(path: str) -> Contents:
    """The contents of the checkpoint at ``path``; a checkpoint that is neither layout is one
    line naming what it found."""
    shapes = variable_shapes(path)
    if "block1_conv1/kernel" in shapes:
        layout = OURS
    elif "conv2d/kernel" in shapes:
        layout = REFERENCE
    else:
        found = ", ".join(sorted(shapes)[:4]) + (" ..." if len(shapes) > 4 else "")
        raise UsageError(
            f"{path}: not a VGG checkpoint of this project or of the reference (it holds "
            f"{found or 'no variables'}; expected block1_conv1/kernel ... or conv2d/kernel ...)"
        )
    for name, shape in shapes.items():  # a kernel of another rank would fail far from here
        if name.endswith("/kernel") and len(shape) != (4 if "conv" in name else 2):
            raise UsageError(f"{path}: not a VGG checkpoint ({name} has the shape {shape})")
    layers = Contents(path, shapes, layout, None).layers
    if layout == REFERENCE:
        return Contents(path, shapes, layout, arch.from_reference_scopes(layers))
    batch_norm = any(name.endswith("/moving_mean") for name in shapes)
    return Contents(path, shapes, layout, arch.from_layers(layers, batch_norm))


def stored_name(name: str, contents: Contents) -> str:
    """Our variable ``name`` (``block1_conv1/kernel/Momentum``) as ``contents`` names it."""
    if contents.layout == OURS or contents.arch is None:
        return name
    layer, sep, rest = name.partition("/")
    return contents.arch.reference_names().get(layer, layer) + sep + rest


def our_scope(scope: str, contents: Contents) -> str:
    """A --restore_exclude scope in the checkpoint's own names (``dense_2``) as ours."""
    if contents.layout == OURS or contents.arch is None:
        return scope
    ours = {ref: our for our, ref in contents.arch.reference_names().items()}
    layer, sep, rest = scope.rstrip("/").partition("/")
    return ours.get(layer, layer) + sep + rest


def weight_names(model) -> list[tuple[str, object]]:
    """(``layer/weight`` name, variable) of a keras model's weights: the names a checkpoint of
    ours stores, whatever suffix the graph gave the variables (a second model in one graph)."""
    return [
        (f"{layer.name}/{w.op.name.split('/')[-1]}", w)
        for layer in model.layers
        for w in layer.weights
    ]


def check_network(contents: Contents, model) -> None:
    """Raise a UsageError naming both sides when the checkpoint holds another network than the
    keras ``model`` (named by its arch, as model.py names it): arch, class count or width."""
    wanted = {name: v.shape.as_list() for name, v in weight_names(model)}
    stored = {name: contents.shapes.get(stored_name(name, contents)) for name in wanted}
    missing = [n for n, shape in stored.items() if shape is None]
    wrong = [n for n, shape in stored.items() if shape is not None and list(shape) != wanted[n]]
    ours = arch.get(model.name)
    # A VGG19 checkpoint holds every VGG16 variable with the same shapes: the layers decide.
    if not (missing or wrong or contents.arch != ours):
        return
    if missing:
        detail = f"missing {stored_name(missing[0], contents)}"
    elif wrong:
        detail = f"{stored_name(wrong[0], contents)} is {list(stored[wrong[0]])}"
    else:
        extra = sorted(contents.layers - {n.split("/")[0] for n in wanted})
        detail = f"unexpected {extra[0]}" if extra else "other layers"
    model = Contents("", wanted, OURS, ours)
    width = contents.first_conv() != model.first_conv()
    raise UsageError(
        f"{contents.path}: checkpoint has {contents.describe(width)}, model is "
        f"{model.describe(width)} ({detail})"
    )


def restore(session, path: str, model, required=(), optional=()) -> list:
    """Set the keras ``model``'s weights (checked with ``check_network``), ``required`` and,
    where the checkpoint has them, ``optional`` variables from the checkpoint at ``path``
    (either layout); returns the optional variables it lacked."""
    contents = read_contents(path)
    check_network(contents, model)
    own = [*weight_names(model), *[(v.op.name, v) for v in required]]
    pairs = [(stored_name(ours, contents), variable) for ours, variable in own]
    lacking = [name for name, _ in pairs if name not in contents.shapes]
    if lacking:
        raise UsageError(f"{path}: has no variable {lacking[0]} (needed to resume)")
    absent = []
    for variable in optional:
        name = stored_name(variable.op.name, contents)
        if name in contents.shapes and list(contents.shapes[name]) == variable.shape.as_list():
            pairs.append((name, variable))
        else:
            absent.append(variable)
    assign(session, [v for _, v in pairs], read_values(path, [n for n, _ in pairs]))
    return absent


def read_values(path: str, names: list[str]) -> list:
    """The stored values of ``names`` (a damaged file is a UsageError naming it)."""
    try:
        reader = _reader(path)
        return [reader.get_tensor(name) for name in names]
    except (tf.errors.OpError, ValueError, IndexError) as err:  # IndexError: a cut .data file
        raise UsageError(
            f"{path}: unreadable checkpoint ({reason(err)}); move its files away to resume "
            "from an earlier one"
        ) from err


def restore_subset(session, path: str, variables, exclude) -> list[str]:
    """Initialise ``variables`` from ``path`` except those under an ``exclude`` scope
    (fine-tuning, ``--restore_path``; scopes in our names or the checkpoint's own).

    A variable absent from the checkpoint or of another shape is an error (so a typo in
    --restore_exclude does not silently train from scratch), and so is a scope that names
    nothing.  Returns the names restored.
    """
    contents = read_contents(path)
    given = [s for s in exclude if s != GLOBAL_STEP]
    scopes = [our_scope(s, contents) for s in given]
    for name, scope in zip(given, scopes):
        if not any(excluded(v.op.name, [scope]) for v in variables):
            # A misspelt scope would otherwise restore the layer it meant to leave out.
            raise UsageError(f"--restore_exclude {name}: the model has no such variable or scope")
    chosen = [v for v in variables if not excluded(v.op.name, scopes)]
    names = [stored_name(v.op.name, contents) for v in chosen]
    for v, name in zip(chosen, names):
        if name not in contents.shapes:
            raise UsageError(f"--restore_path {path}: has no variable {name}")
        if list(contents.shapes[name]) != v.shape.as_list():
            raise UsageError(
                f"--restore_path {path}: {name} is {contents.shapes[name]}, model needs "
                f"{v.shape.as_list()} (add its scope to --restore_exclude)"
            )
    assign(session, chosen, read_values(path, names))
    return names


def excluded(name: str, scopes) -> bool:
    """True when ``name`` is one of ``scopes`` or lies under one (``fc1`` covers ``fc1/kernel``)."""
    return any(name == s or name.startswith(s.rstrip("/") + "/") for s in scopes)


def assign(session, variables, values) -> None:
    """Set graph-mode ``variables`` to numpy ``values`` in one session call.

    Feeds each variable's initializer instead of building assign ops or a Saver: the graphs are
    finalized before their variables are set, so nothing may add ops then.  A mirrored variable
    is set through each of its per-device copies.
    """
    initializers, feeds = [], {}
    variables, values = list(variables), list(values)
    if len(variables) != len(values):
        raise ValueError(f"{len(variables)} variables but {len(values)} values")
    for variable, value in zip(variables, values):
        for part in getattr(variable, "values", None) or (variable,):
            initializers.append(part.initializer)
            feeds[part.initializer.inputs[1]] = value
    if initializers:
        session.run(initializers, feed_dict=feeds)
