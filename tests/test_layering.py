"""The layering rule (docs/ARCHITECTURE.md), read from the source with ``ast``.

* No import cycles among the project's modules (darknet2tflite/, cli/, flows/, tasks/),
  counting imports inside functions too: a cycle hidden in a function is still a cycle, it
  only fails later.  Imports under ``if TYPE_CHECKING:`` never run and are not edges.
* The library (darknet2tflite/) imports neither Prefect nor the orchestration packages
  (flows/, tasks/) nor the command line (cli/): it must stay usable without them.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("darknet2tflite", "cli", "flows", "tasks")
FORBIDDEN_IN_LIBRARY = ("prefect", "prefect_dask", "flows", "tasks", "cli")


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            parts = p.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """Every dotted name ``module`` imports (module-level and inside functions), with its
    line: ``from a.b import c`` gives both ``a.b`` and ``a.b.c`` (c may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, node.lineno))
            out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: line}."""
    mods = project_modules()
    graph: dict[str, dict[str, int]] = {}
    for m, p in mods.items():
        deps: dict[str, int] = {}
        for name, line in imported_names(m, p):
            parts = name.split(".")
            for i in range(len(parts), 0, -1):  # the longest prefix that is a module
                cand = ".".join(parts[:i])
                if cand in mods:
                    if cand != m:
                        deps.setdefault(cand, line)
                    break
        graph[m] = deps
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in comps:  # walk from the first module back to it inside the component
        members, start = set(comp), min(comp)
        path, seen = [start], {start}
        while True:
            nxt = sorted(d for d in graph[path[-1]] if d in members)
            back = [d for d in nxt if d == start]
            if back and len(path) > 1:
                break
            fresh = [d for d in nxt if d not in seen]
            if not fresh:
                break
            path.append(fresh[0])
            seen.add(fresh[0])
        cycles.append(path + [start])
    return cycles


def test_the_graph_sees_function_level_imports():
    """The parser must count an import inside a function (else the test below proves
    nothing): `detect` imports the decoder inside its command function."""
    graph = import_graph()
    assert len(graph) > 60
    assert "darknet2tflite.evaluation.decode" in graph["cli.main"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    text = "\n".join(" -> ".join(f"{a} (line {graph[a].get(b, '?')})" if b else a
                                 for a, b in zip(c, c[1:] + [None])) for c in cycles)
    assert not cycles, f"import cycles:\n{text}"


def test_find_cycles_finds_one():
    graph = {"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 7}, "d": {"a": 1}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_library_never_imports_orchestration_or_the_cli():
    mods = project_modules()
    bad = []
    for m, p in mods.items():
        if not m.startswith("darknet2tflite"):
            continue
        for name, line in imported_names(m, p):
            if name.split(".")[0] in FORBIDDEN_IN_LIBRARY:
                bad.append(f"{p.relative_to(REPO)}:{line}: imports {name}")
    assert not bad, "\n".join(bad)


def test_litert_interpreters_are_opened_in_one_place() -> None:
    """Which kernels run a model changes its int8 outputs (XNNPACK rounds differently from
    the reference kernels TFLite Micro follows), so every LiteRT interpreter comes from
    ``tflite/interpreter.py``, where that choice is an explicit argument."""
    offenders = []
    for mod, path in project_modules().items():
        if mod == "darknet2tflite.tflite.interpreter":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "ai_edge_litert"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
            elif (isinstance(node, ast.Attribute) and node.attr == "Interpreter"
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "lite"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"interpreters opened outside tflite/interpreter.py: {offenders}"
