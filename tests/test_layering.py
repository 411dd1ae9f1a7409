"""Imports inside ``src/atrous`` run one way: down the floors, and never in a circle.

Every module's imports are read with `ast` (top-level and function-local ones, absolute and
relative, ``from . import x`` included; ``if TYPE_CHECKING:`` blocks are skipped because they do
not run). An import is allowed when the imported module's (floor, rank) is not above the
importer's; within one package any direction is allowed, but the module graph must have no
cycle anywhere.

Floors and, within a floor, the rank of each package (a lower rank may not import a higher one):

* floor 0: ``utils`` < ``config`` < ``layers``
* floor 1: ``data`` < ``modeling`` < ``solver`` < ``checkpoint`` (``atrous.model_zoo`` is the
  facade of ``checkpoint`` and sits with it)
* floor 2: ``evaluation`` < ``deploy`` < ``inference``: the metrics know nothing of the fast path
  or the predictor; the deploy accuracy check scores with the evaluators; the predictor uses the
  deploy fast path.
* floor 3: ``engine``
* floor 4: ``cli``, then ``atrous.__main__``

``atrous/__init__.py`` only reads the version, so it sits with ``utils``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# package (or top-level module) -> (floor, rank within the floor)
LAYERS: dict[str, tuple[int, int]] = {
    "atrous": (0, 0),
    "atrous.utils": (0, 0),
    "atrous.config": (0, 1),
    "atrous.layers": (0, 2),
    "atrous.data": (1, 0),
    "atrous.modeling": (1, 1),
    "atrous.solver": (1, 2),
    "atrous.checkpoint": (1, 3),
    "atrous.model_zoo": (1, 3),
    "atrous.evaluation": (2, 0),
    "atrous.deploy": (2, 1),
    "atrous.inference": (2, 2),
    "atrous.engine": (3, 0),
    "atrous.cli": (4, 0),
    "atrous.__main__": (4, 1),
}


def _modules(src: Path) -> dict[str, Path]:
    out = {}
    for path in sorted((src / "atrous").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(tree: ast.AST):
    """`ast.walk` without the bodies of ``if TYPE_CHECKING:`` (their ``else`` still runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a module of the project."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    modules = _modules(src)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "atrous":
                        targets.add(_resolve(alias.name, modules))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != "atrous":
                    continue
                for alias in node.names:
                    # ``from pkg import sub`` imports the submodule when there is one.
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else _resolve(base, modules))
        targets.discard(None)
        targets.discard(name)
        graph[name] = targets
    return graph


def layer_of(module: str) -> tuple[str, tuple[int, int]]:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key, LAYERS[key]
    raise KeyError(module)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        src_pkg, src_layer = layer_of(src)
        for dst in sorted(targets):
            dst_pkg, dst_layer = layer_of(dst)
            if dst_pkg != src_pkg and dst_layer > src_layer:
                bad.append(f"{src} {src_layer} -> {dst} {dst_layer}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_layer():
    missing = sorted({m for m in import_graph() if _top(m) not in LAYERS})
    assert not missing, f"give these a floor in LAYERS: {missing}"


def _top(module: str) -> str:
    try:
        return layer_of(module)[0]
    except KeyError:
        return module


def test_no_upward_import():
    bad = upward_imports(import_graph())
    assert not bad, "imports that run up the layers:\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(
    ("files", "expect_up", "expect_cycle"),
    [
        # A function-local relative import of a higher floor is caught.
        ({"atrous/data/a.py": "def f():\n    from ..engine import b\n"}, True, False),
        # ``from . import x`` forms a cycle with x importing back.
        (
            {
                "atrous/data/a.py": "from . import b\n",
                "atrous/data/b.py": "from .a import thing\n",
            },
            False,
            True,
        ),
        # A typing-only import is not an import at run time.
        (
            {
                "atrous/engine/a.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from .b import T\n",
                "atrous/engine/b.py": "from .a import x\n",
            },
            False,
            False,
        ),
        # Within floor 2, evaluation may not import the predictor.
        ({"atrous/evaluation/a.py": "import atrous.inference.b\n"}, True, False),
    ],
)
def test_checker_sees_violations(tmp_path, files, expect_up, expect_cycle):
    """The checker itself finds what it is meant to find (so a green run means something)."""
    # Every file the cases import exists (empty unless the case gives its text).
    files = {"atrous/engine/b.py": "", "atrous/inference/b.py": "", **files}
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for folder in [path.parent, *path.parent.parents]:
            if folder == tmp_path:
                break
            (folder / "__init__.py").touch()
    graph = import_graph(tmp_path)
    assert bool(upward_imports(graph)) is expect_up
    assert bool(cycles(graph)) is expect_cycle


def test_commands_share_their_flag_declarations() -> None:
    # The trailing overrides and --device are declared once, in cli/common.py; a command that
    # declares its own drifts (defaults, choices, help) from the others.
    shared = {"opts": "add_overrides_argument", "--device": "add_device_flag"}
    for path in sorted((SRC / "atrous" / "cli").glob("*.py")):
        if path.name == "common.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in shared
            ):
                flag = node.args[0].value
                raise AssertionError(f"{path.name} declares {flag!r}: use common.{shared[flag]}")


def command_copies(source: str) -> list[str]:
    """What a command module does that belongs to `cli.main.dispatch`: lines of ``source``.

    `dispatch` turns every anticipated error into one ``error: ...`` line and its exit status
    (and logs the traceback, prints it with ``--verbose``). A command that prints such a line
    itself, or re-raises an error as ``SystemExit(str(error))`` or from an ``except`` clause, is
    a second copy of that table: its exit status and ``--verbose`` drift from the others'.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            first = node.args[0] if node.args else None
            if (
                node.func.id == "SystemExit"
                and isinstance(first, ast.Call)
                and isinstance(first.func, ast.Name)
                and first.func.id == "str"
            ):
                found.append(f"line {node.lineno}: SystemExit(str(...))")
            text = first.values[0] if isinstance(first, ast.JoinedStr) and first.values else first
            if (
                node.func.id == "print"
                and isinstance(text, ast.Constant)
                and str(text.value).startswith("error:")
            ):
                found.append(f"line {node.lineno}: print('error: ...')")
        elif isinstance(node, ast.ExceptHandler):
            for inner in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                exc = inner.exc if isinstance(inner, ast.Raise) else None
                call = exc.func if isinstance(exc, ast.Call) else exc
                if isinstance(call, ast.Name) and call.id == "SystemExit":
                    found.append(f"line {inner.lineno}: raise SystemExit in an except clause")
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise SystemExit(str(error)) from error\n", 1),
        ("try:\n    f()\nexcept ConfigError as e:\n    raise SystemExit(f'bad: {e}')\n", 1),
        ("print(f'error: {e}', file=sys.stderr)\n", 1),
        ("print('error: --workers must be 0 or more')\n", 1),
        # A usage check of the command's own flags is its job; dispatch prints it.
        ("if args.batch < 1:\n    raise SystemExit('--batch must be at least 1')\n", 0),
        ("try:\n    f()\nexcept ValueError as e:\n    raise ConfigError(str(e)) from None\n", 0),
    ],
)
def test_checker_sees_command_copies(source: str, expected: int) -> None:
    assert len(command_copies(source)) == expected


def test_commands_leave_error_messages_to_dispatch() -> None:
    bad = []
    for path in sorted((SRC / "atrous" / "cli").glob("*.py")):
        if path.name != "main.py":
            bad += [f"cli/{path.name} {line}" for line in command_copies(path.read_text("utf-8"))]
    assert not bad, "let the error reach cli.main.dispatch instead:\n" + "\n".join(bad)
