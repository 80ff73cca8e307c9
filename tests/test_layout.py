"""The package's shape, read from its source: the layer order docs/design.md states (a module
imports only its own layer and the layers above it), no import cycles, no function over 80
lines."""

from __future__ import annotations

import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "vgg_keras"
DESIGN = PACKAGE.parent / "docs" / "design.md"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its body (late imports included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # ``from vgg_keras import training`` imports the module vgg_keras.training.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name and m.startswith("vgg_keras.")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as a list of modules, or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle_among_package_modules():
    modules = _modules()
    graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
    assert graph["vgg_keras.training"], "the import graph was read"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _last_line(node: ast.AST) -> int:
    """The node's last line (``end_lineno`` needs Python 3.8: else its last statement's start)."""
    end = getattr(node, "end_lineno", None)
    return end or max(getattr(n, "lineno", 0) for n in ast.walk(node))


def test_no_function_over_80_lines():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _last_line(node) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long


def _layers() -> list[list[str]]:
    """The modules of each layer, in the order docs/design.md's ```layers block lists them."""
    block = re.search(r"```layers\n(.*?)```", DESIGN.read_text(), re.S)
    assert block, f"no ```layers block in {DESIGN}"
    return [
        [f"vgg_keras.{name}" for name in line.split(":", 1)[1].split()]
        for line in block.group(1).splitlines()
        if line.strip()
    ]


def test_every_module_is_in_one_layer_of_the_design():
    listed = [name for layer in _layers() for name in layer]
    assert len(listed) == len(set(listed)), "a module in two layers"
    modules = {name for name in _modules() if name not in ("vgg_keras", "vgg_keras.data")}
    assert set(listed) == modules


def _from_below(graph: dict[str, set[str]], layer_of: dict[str, int]) -> list[str]:
    """``a imports b`` for every import of a module from a later (lower) layer."""
    return [
        f"{name} imports {imported}"
        for name, imports in sorted(graph.items())
        for imported in sorted(imports)
        if name in layer_of and imported in layer_of and layer_of[imported] > layer_of[name]
    ]


# The one import from below, named: storage.py reaches a store's URL through TensorFlow, imported
# (the project's way, compat) inside the function that first needs it, never for a local path.
DEFERRED_FROM_BELOW = {"vgg_keras.storage": {"vgg_keras.compat"}}


def test_modules_import_only_their_own_layer_or_the_layers_above():
    modules = _modules()
    graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
    for name, deferred in DEFERRED_FROM_BELOW.items():
        assert not deferred & _top_level_imports(modules[name]), f"{name}: import it late"
        graph[name] -= deferred
    layer_of = {name: i for i, layer in enumerate(_layers()) for name in layer}
    assert not _from_below(graph, layer_of)


def _top_level_imports(tree: ast.Module) -> set[str]:
    """The package modules imported by the module's own statements (not inside a function)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_layer_check_finds_an_import_from_below():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set()}
    assert _from_below(graph, {"a": 0, "b": 1, "c": 1}) == ["a imports b"]
