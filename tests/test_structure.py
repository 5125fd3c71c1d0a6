"""The package's imports point one way, along the data flow, and never in a circle.

Every import of the package's own modules is read from the source (module level, inside
functions and under `TYPE_CHECKING` alike), so no import can hide a cycle. Modules belong to
layers, in data-flow order; a module may import its own layer and the layers before it only.
`mergekit_swarm.testing` builds test models: it may import anything, nothing may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mergekit_swarm"

# In data-flow order: each layer is one folder of the package (the interfaces are its top-level modules).
# A layer may import the layers above it in this list, never those below.
LAYERS: list[tuple[str, set[str]]] = [
    ("core", {"core"}),  # errors, names, schema, storage, console, extras, fingerprints, run options, packing
    ("engine, objectives, Hub", {"pso", "utilities", "hub"}),  # what a recipe refers to
    ("recipes", {"config"}),
    ("experts", {"experts"}),  # pools, parameter groups, the tokenizer
    ("weights", {"weights"}),  # coefficients to weights in the resident model
    ("search", {"search"}),  # setup, evaluation engines, run state, the loop
    ("output", {"output"}),  # model folder, mergekit_config.yml, card, plot, publishing
    ("commands", {"commands"}),  # run, apply, rescore, compare, multistage
    ("interfaces", {"cli", "mergekit_plugin", "__main__", "__init__"}),
]
TEST_BUILDERS = "testing"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports anywhere in its body (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import sub` imports the submodule when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a non-module attribute: its module
                name = name.rpartition(".")[0]
            if name.startswith("mergekit_swarm"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, known) - {name} for name, path in found.items()}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return next((i for i, (_, members) in enumerate(LAYERS) if top in members), None)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def test_the_import_graph_is_read_completely():
    edges = graph()
    assert "mergekit_swarm.search.setup" in edges["mergekit_swarm.search.evaluator"]  # module level
    assert "mergekit_swarm.commands.apply" in edges["mergekit_swarm.cli"]  # inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_every_module_has_a_layer_and_imports_point_one_way():
    edges = graph()
    unplaced = [m for m in edges if layer_of(m) is None and m.split(".")[1:2] != [TEST_BUILDERS]]
    assert unplaced == [], "add these modules to a layer in LAYERS"
    upward = []
    for module, targets in edges.items():
        if module.startswith(f"mergekit_swarm.{TEST_BUILDERS}"):
            continue
        for target in targets:
            assert not target.startswith(f"mergekit_swarm.{TEST_BUILDERS}"), f"{module} imports the test builders"
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})")
    assert upward == []


def test_the_layers_are_the_folders_and_few_modules_are_loose():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    layered = {member for _, members in LAYERS for member in members}
    assert folders - {TEST_BUILDERS} == layered - {"cli", "mergekit_plugin", "__main__", "__init__"}
    loose = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 6, loose
    for folder in folders:  # each says what it holds and what it may import
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{folder}/__init__.py has no docstring saying what it holds"


def test_no_module_name_is_used_twice():
    stems = [p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__" and TEST_BUILDERS not in p.parts]
    assert sorted({s for s in stems if stems.count(s) > 1}) == []


# Functions whose body (docstring excluded) may exceed MAX_BODY lines, each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}
MAX_BODY = 60


def test_functions_are_short_phases():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if TEST_BUILDERS in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = (body[-1].end_lineno - body[0].lineno + 1) if body else 0
                name = f"{module_name(path)}.{node.name}"
                if lines > MAX_BODY and name not in LONG_FUNCTIONS:
                    long.append(f"{name}: {lines} lines")
    assert long == [], "split these into named phases (or give a reason in LONG_FUNCTIONS)"
    assert len(LONG_FUNCTIONS) <= 2


def test_no_test_imports_another_test_module():
    tests = Path(__file__).resolve().parent
    crossing = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.")):
                continue
            if node.module.split(".")[1].startswith("test_") or node.module == "tests.conftest":
                crossing.append(f"{path.name} imports {node.module}")
    assert crossing == [], "share builders through tests/helpers.py or fixtures in conftest.py"
