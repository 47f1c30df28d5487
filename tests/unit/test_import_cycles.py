"""No import cycle inside ``src/pytorch_backend``: module-level imports, parsed with ``ast``.

Imports inside functions (deferred until called) and under ``if TYPE_CHECKING:`` (never run) do
not count. ``import a.b`` and ``from a import b`` (``b`` a module) are edges to ``a.b``; ``from
a import name`` is an edge to ``a``. A parent package's ``__init__``, which Python runs first
whatever is imported, is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "pytorch_backend"


def _modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under ``src``."""
    out: dict[str, Path] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is: its body's, also inside if/try/with, not in defs."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                pending.extend(handler.body)
        elif isinstance(node, ast.With):
            pending.extend(node.body)
    return found


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    if keep < 1:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    return ".".join(parts[:keep] + ([node.module] if node.module else []))


def _edges(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    targets: set[str] = set()
    for node in _module_level_imports(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = _base(module, path.name == "__init__.py", node)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if submodule in known else base)
    return {t for t in targets if t in known and t != module}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = _modules(src)
    known = set(modules)
    return {name: _edges(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, colouring the nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path: list[str] = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "pytorch_backend.config.model_config" in graph  # the scan found the package
    assert "pytorch_backend.errors" in graph["pytorch_backend.config.model_config"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        (  # relative imports, a name from a module, a module from a package
            {
                "__init__.py": "",
                "a.py": "from .b import thing\n",
                "sub/__init__.py": "",
                "sub/c.py": "from .. import a\n",
                "b.py": "try:\n    from .sub import c\nexcept ImportError:\n    pass\n",
            },
            ["pytorch_backend.a", "pytorch_backend.b", "pytorch_backend.sub.c"],
        ),
        (  # absolute imports; a package __init__ importing its own module
            {
                "__init__.py": "",
                "p/__init__.py": "from .m import x\n",
                "p/m.py": "import pytorch_backend.p\n",
            },
            ["pytorch_backend.p", "pytorch_backend.p.m"],
        ),
        (  # an import inside a function or under TYPE_CHECKING does not count
            {
                "__init__.py": "",
                "a.py": "from . import b\n",
                "b.py": (
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
                    "def f():\n    from . import a\n"
                ),
            },
            None,
        ),
    ],
)
def test_the_cycle_check_finds_cycles_and_only_cycles(tmp_path, files, cycle):
    found = find_cycle(import_graph(_write(tmp_path, files)))
    if cycle is None:
        assert found is None
    else:
        assert found is not None and sorted(set(found)) == cycle
        assert found[0] == found[-1]
