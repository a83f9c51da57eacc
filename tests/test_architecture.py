"""The architecture's rules, checked: no import cycle between harness modules, rooms of a readable size.

Imports inside functions count too: a cycle hidden in a function body still ties two rooms together.
"""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "harness"
MAX_LINES = 500
COHESIVE = "one cohesive"  # a longer module says why in its docstring, with these words


def _modules() -> dict[str, Path]:
    mods = {}
    for path in HARNESS.rglob("*.py"):
        parts = path.relative_to(HARNESS.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imported(module: str, node, mods: dict[str, Path]) -> list[str]:
    """The harness modules one import statement names (``from . import x`` counts as ``pkg.x``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    package = module if mods[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names
            if f"{target}.{a.name}" in mods or target in mods]


def import_graph() -> dict[str, set[str]]:
    """Module → the harness modules it imports; a submodule importing its own package is not an edge."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= {t for t in _imported(module, node, mods)
                                  if t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_harness_modules():
    assert cycles(import_graph()) == []


def test_the_report_and_the_renderer_do_not_reach_into_the_runner():
    graph = import_graph()
    offenders = {m for m, targets in graph.items() if "harness.runner" in targets
                 and any(m == room or m.startswith(room + ".") for room in ("harness.report", "harness.render"))}
    assert not offenders


def test_modules_are_small_unless_they_say_why():
    long = {}
    for path in HARNESS.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        doc = (ast.get_docstring(ast.parse(text)) or "").lower()
        if lines > MAX_LINES and COHESIVE not in doc:
            long[str(path.relative_to(HARNESS))] = lines
    assert not long, f"over {MAX_LINES} lines without saying why ('{COHESIVE}' in the docstring): {long}"


def test_every_room_is_named_in_the_architecture_doc():
    """docs/ARCHITECTURE.md stays true: each harness module (file or package) appears there by its name."""
    doc = (HARNESS.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    unnamed = sorted(str(p.relative_to(HARNESS.parent)) for name, p in _modules().items()
                     if p.name != "__init__.py" and p.stem not in doc)
    assert not unnamed, f"modules docs/ARCHITECTURE.md does not name: {unnamed}"
