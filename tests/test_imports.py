"""Imports run one way (docs/ARCHITECTURE.md, "Layers and imports").

Every module under pydl/ and kernels/ is parsed, not imported: an import inside a function counts as much as
one at the top, since it is the usual way a cycle gets hidden rather than removed. kernels/ is read as
``pydl.kernels`` (how it is installed). An edge goes to the module an import statement names; for
``from package import name`` it goes to ``package.name`` when that is a module, else to the package. Imports
under ``if TYPE_CHECKING:`` are left out: they never run.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# (top-level folder, the package name it is imported as)
TREES = (("pydl", "pydl"), ("kernels", "pydl.kernels"))


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the trees (the course's exercises included)."""
    found = {}
    for folder, package in TREES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom in the tree, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = node.orelse if isinstance(node, ast.If) and _is_type_checking(node.test) else \
            list(ast.iter_child_nodes(node))
        stack.extend(children)


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that the file ``path`` (module ``name``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from x import y`: y is a submodule when one of that name exists, else a name defined in x
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        for target in targets:
            # `import pydl.kernels.rnn` imports that module (its packages too, but they do not import it back)
            if target in known and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan's algorithm), each
    written as a path that returns to its start, so the message shows which imports close it."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(graph, component) for component in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle inside ``component`` from its first module (breadth-first back to the start)."""
    start = min(component)
    parent = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "modules that import each other (move the shared part to a lower layer):\n" + \
        "\n".join("  " + " -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_find_cycles_names_the_cycle(source, expected):
    assert find_cycles(source) == expected


def test_graph_sees_imports_inside_functions(tmp_path):
    """The cycle-hiding import of the kind this test exists for: inside a function, relative, two dots up."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "low.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "high.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from . import never\n"
        "def f():\n    from .. import low\n    from ..low import thing\n")
    known = {"pkg", "pkg.low", "pkg.sub", "pkg.sub.high", "pkg.sub.never"}
    assert imported_modules("pkg.sub.high", tmp_path / "pkg" / "sub" / "high.py", known) == {"pkg.low"}


# --------------------------------------------------------------------------------------------------
# A static, visible API: every name a package exports is written in its __init__.py
# --------------------------------------------------------------------------------------------------

def _parsed():
    for name, path in module_files().items():
        yield name, path, ast.parse(path.read_text(), filename=str(path))


def test_no_star_imports_or_generated_globals():
    """``from x import *`` and ``globals()[name] = ...`` hide what a module defines from readers and tools."""
    found = []
    for name, _, tree in _parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
                found.append(f"{name}:{node.lineno}: from {node.module or '.'} import *")
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Call)
                            and getattr(t.value.func, "id", None) == "globals"):
                        found.append(f"{name}:{node.lineno}: globals()[...] =")
    assert not found, "\n".join(found)


def test_no_private_names_across_modules():
    """A name with a leading underscore belongs to its module: another module neither imports it
    (``from x import _y``) nor reaches it (``x._y``). Modules named ``_x`` are pydl's internal modules, which
    any part of pydl may import; only their own private names are off limits."""
    known = set(module_files())
    found = []
    for name, path, tree in _parsed():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        modules = {}  # local name -> the pydl module it is bound to in this file
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base not in known:
                    continue
                for a in node.names:
                    full = f"{base}.{a.name}"
                    if full in known:
                        modules[a.asname or a.name] = full
                    elif a.name.startswith("_") and not a.name.startswith("__") and base != name:
                        found.append(f"{name}:{node.lineno}: from {base} import {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in known:
                        modules[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and f"{modules[node.value.id]}.{node.attr}" not in known):
                found.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def test_packages_export_what_their_modules_export():
    import pydl
    from pydl import nn, ops
    from pydl.nn import activation, batchnorm, conv, rnn, syncbatchnorm

    # (pydl.ops.conv2d etc. are the functions: the package exports them under their modules' names)
    op_modules = [sys.modules[f"pydl.ops.{m}"] for m in ("act_stats", "batch_norm", "conv2d", "rnn")]
    assert sorted(ops.__all__) == sorted(n for m in op_modules for n in m.__all__)
    assert set(ops.__all__) <= set(pydl.__all__)
    nn_names = {"GeneralRelu", "convert", "register", "SyncBatchNorm"}
    nn_names |= {n for m in (batchnorm, conv, rnn) for n in m.__all__}
    assert sorted(nn.__all__) == sorted(nn_names)
    assert activation.GeneralRelu is nn.GeneralRelu and syncbatchnorm.SyncBatchNorm is nn.SyncBatchNorm
    for package in (pydl, ops, nn):
        missing = [n for n in package.__all__ if not hasattr(package, n)]
        assert not missing, f"{package.__name__}.__all__ names what it does not define: {missing}"


# The layers of docs/ARCHITECTURE.md ("Layers and imports"), lowest first: a module may import from its own
# layer or a lower one. The package pydl itself sits above the modules it re-exports (ops, nn).
LAYERS = (
    ("pydl._env", "pydl._kinds", "pydl._paths", "pydl._version", "pydl._layout", "pydl._setting"),
    ("pydl._emu",),
    ("pydl._build",),
    ("pydl.backends",),
    ("pydl.kernels",),
    ("pydl.ops",),
    ("pydl.nn",),
    ("pydl",),
    ("pydl.debug", "pydl.transforms", "pydl.learn", "pydl.distributed", "pydl.integrations"),
    ("pydl.cli", "pydl.bench", "pydl.demo", "pydl.selftest"),
)


def layer_of(module: str) -> int:
    """The layer of a module: that of the longest LAYERS entry that is the module or a package above it."""
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, rank = len(n), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS (and docs/ARCHITECTURE.md)"
    return rank


def test_imports_go_down_the_layers():
    graph = import_graph()
    wrong = sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                   for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m))
    assert not wrong, "imports against the layering of docs/ARCHITECTURE.md:\n" + "\n".join(wrong)
