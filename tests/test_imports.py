"""The house is layered and has no circle: walking every ``blocktune`` import (module level,
inside functions and in ``TYPE_CHECKING`` blocks alike), no module imports from a subpackage of a
higher layer, and there is no cycle."""

import ast
from pathlib import Path

import blocktune

ROOT = Path(blocktune.__file__).parent


def _module(path: Path) -> str:
    name = ".".join(("blocktune", *path.relative_to(ROOT).with_suffix("").parts))
    return name.removesuffix(".__init__")


def _imports(tree: ast.AST) -> set[str]:
    found, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("blocktune"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("blocktune")}
        stack.extend(ast.iter_child_nodes(node))
    return found


def graph() -> dict[str, set[str]]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = _module(path)
        out[name] = {m for m in _imports(ast.parse(path.read_text())) if m != name}
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt in edges and state.get(nxt) is None:
                if (cycle := visit(nxt, [*path, nxt])) is not None:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if state.get(start) is None and (cycle := visit(start, [start])) is not None:
            return cycle
    return None


def test_no_import_cycle_among_blocktunes_modules():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_walk_finds_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# bottom to top; a module may import its own layer and those below it
LAYERS = {"core": 0, "data": 1, "loggers": 1, "models": 2, "training": 3, "executors": 4,
          "protocol": 5, "results": 6, "runner": 7, "api": 8, "cli": 8, "": 8}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if layer(b) > layer(a))


def test_every_module_belongs_to_a_layer_and_every_subpackage_says_what_it_owns():
    for name in graph():
        layer(name)  # a KeyError names a module outside the layers
    for package in ROOT.iterdir():
        if (package / "__init__.py").exists():
            doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
            assert doc and len(doc.split()) >= 20, f"{package.name} has no docstring"


def test_no_import_runs_back_up_the_layers():
    assert upward_imports(graph()) == []


def test_the_layer_check_sees_an_upward_import():
    edges = {"blocktune.core.config": {"blocktune.protocol.select"},
             "blocktune.runner.search": {"blocktune.core.config"}}
    assert upward_imports(edges) == ["blocktune.core.config -> blocktune.protocol.select"]


def test_product_code_never_imports_the_benchmarks_decision_code():
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        for name in ("protocol_small", "sizes_decide", "benchmarks"):
            assert f"import {name}" not in text and f"from {name}" not in text, path
