"""The package's import structure: no import circles, and no library module reaching up into the pipeline or CLI.

The graph is read from the source with ``ast`` (nothing is imported): every ``import emkit...`` and
``from emkit... import ...`` counts, at module level and inside functions alike, since a lazy import
that hides a circle is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
UPPER = ("emkit.pipeline", "emkit.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / "emkit").rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Modules of emkit that ``name`` imports, each with the first line that does."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t.startswith("emkit") and t != name:
                found.setdefault(t, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_graph_sees_module_and_function_level_imports():
    g = import_graph()
    assert "emkit.judge.base" in g["emkit.judge.api"]  # module level
    assert "emkit.pipeline.stages" in g["emkit.pipeline.runner"]
    assert any(t.startswith("emkit.models") for t in g["emkit.judge.factory"])  # inside make_judge
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_circles():
    g = import_graph()
    found = cycles(g)
    detail = ["; ".join(f"{m} -> {', '.join(f'{t} (line {g[m][t]})' for t in sorted(g[m]) if t in comp)}"
                        for m in comp) for comp in found]
    assert not found, "import circles:\n" + "\n".join(detail)


def test_library_modules_do_not_import_the_pipeline_or_cli():
    up = {m: [f"{t} (line {n})" for t, n in sorted(deps.items()) if t.startswith(UPPER)]
          for m, deps in import_graph().items() if not m.startswith(UPPER)}
    assert not {m: ts for m, ts in up.items() if ts}


def test_the_pipeline_does_not_import_the_cli():
    up = {m: [t for t in deps if t.startswith("emkit.cli")] for m, deps in import_graph().items()
          if m.startswith("emkit.pipeline")}
    assert not {m: ts for m, ts in up.items() if ts}
