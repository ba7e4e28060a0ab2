"""The package's layering, checked on the import graph read from the source (`ast`, nothing imported):
the pure core imports no model/train/evaluate/data/report code and no transformers; evaluate never
imports train; data never imports model; report never imports train; module-level imports form no
circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
CORE = ("vlmdet.coords", "vlmdet.format", "vlmdet.parse", "vlmdet._parse_fast", "vlmdet.boxes", "vlmdet.match", "vlmdet.losses")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, module_level_only: bool) -> set[str]:
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # module-level statements, including those nested in if/try at the top
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 for n in ast.walk(top)]
    out = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            out.add(n.module)
            out |= {f"{n.module}.{a.name}" for a in n.names}  # `from vlmdet.train import forward`
    return out


def graph(module_level_only: bool) -> dict[str, set[str]]:
    trees = {_module_name(p): ast.parse(p.read_text()) for p in SRC.rglob("*.py")}
    return {m: {i for i in _imports(t, module_level_only) if i in trees} for m, t in trees.items()}


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


RULES = [  # (importing layer, forbidden imported layer)
    *[(core, bad) for core in CORE for bad in ("vlmdet.model", "vlmdet.train", "vlmdet.evaluate", "vlmdet.data", "vlmdet.report", "transformers")],
    ("vlmdet.evaluate", "vlmdet.train"),
    ("vlmdet.data", "vlmdet.model"),
    ("vlmdet.report", "vlmdet.train"),
]


@pytest.mark.parametrize("layer, forbidden", RULES)
def test_layer_never_imports(layer, forbidden):
    trees = {_module_name(p): ast.parse(p.read_text()) for p in SRC.rglob("*.py")}
    bad = sorted(
        f"{m} imports {i}"
        for m, t in trees.items() if _inside(m, layer)
        for i in _imports(t, module_level_only=False) if _inside(i, forbidden)
    )
    assert not bad, bad


def test_no_import_circle():
    g = graph(module_level_only=True)
    # a package's __init__ is implied by importing any of its modules: `a.b.c` depends on `a.b`
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_graph_sees_real_edges():
    """The checks above would pass vacuously on an empty graph: known edges must be there."""
    g = graph(module_level_only=True)
    assert "vlmdet.boxes" in g["vlmdet.losses"]
    assert "vlmdet.model.chat" in g["vlmdet.model.tokenizer"]
    assert "vlmdet.train.objective" in g["vlmdet.train.channel_a"]
    assert "vlmdet.train.forward" in g["vlmdet.train.channel_a"]
