"""The house has no circle: walking every ``blocktune`` import (module level and inside
functions; ``TYPE_CHECKING`` blocks are types only) finds no cycle."""

import ast
from pathlib import Path

import blocktune

ROOT = Path(blocktune.__file__).parent


def _module(path: Path) -> str:
    name = ".".join(("blocktune", *path.relative_to(ROOT).with_suffix("").parts))
    return name.removesuffix(".__init__")


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> set[str]:
    found, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            continue
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
