"""The package's import graph: no circle (module-level or inside functions), no reach into another module's privates."""

from __future__ import annotations

import ast
from pathlib import Path

import fersnet_ray

ROOT = Path(fersnet_ray.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["fersnet_ray", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, tree: ast.Module, known: set[str]):
    """(imported module, imported names) for every fersnet_ray import anywhere in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fersnet_ray"):
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fersnet_ray"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:  # `from fersnet_ray.model import fersnet`: a module, not a name
                    yield sub, []
                else:
                    yield node.module, [alias.name]


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, tree in modules.items():
        for target, names in _imports(name, tree, known):
            if target != name and target in known:
                # A package's __init__ re-exporting its submodules is not an edge back into the package.
                if not (name.startswith(target + ".") and target == name.rsplit(".", 1)[0]):
                    graph[name].add(target)
            private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and not n.endswith("__")]
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_no_module_imports_another_modules_private_names():
    _, private = _graph()
    assert private == []


def test_the_library_never_imports_its_cli():
    graph, _ = _graph()
    assert [m for m, deps in graph.items() if "fersnet_ray.cli" in deps] == []
