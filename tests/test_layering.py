"""The package's layering, checked on the import graph read from the source (`ast`; of vlmdet only the
light `vlmdet.cli` is imported, for its command table): the pure core imports no
model/train/evaluate/data/report code and no transformers; evaluate never imports train; data never
imports model; report never imports train; module-level imports form no circle; vlmdet's own modules
are imported at module top, except in a command module a vlmdet module that pulls in a heavy
third-party package (so `vlmdet <command> --help` and light commands start fast)."""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

from vlmdet.cli import COMMANDS

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


def _body_imports(tree: ast.Module, module: str, modules: set[str]) -> set[str]:
    """vlmdet modules (of `modules`) imported inside function (or class) bodies: `import vlmdet.x`,
    `from vlmdet.x import y` (-> vlmdet.x, or vlmdet.x.y when that is a module), relative imports resolved
    against `module`."""
    top = {id(n) for t in tree.body if not isinstance(t, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
           for n in ast.walk(t)}
    out = set()
    for n in ast.walk(tree):
        if id(n) in top:
            continue
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:  # `from .x import y` in p.q.m (or in p.q's __init__) -> p.q.x; each extra dot one up
                package = module.split(".") if _is_package(module) else module.split(".")[:-1]
                base = ".".join(package[: len(package) - n.level + 1] + ([base] if base else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in n.names}
    return {_owner(i, modules) for i in out if i == "vlmdet" or i.startswith("vlmdet.")}


def _owner(name: str, modules) -> str:
    """The module of an imported name: `vlmdet.io.atomic_write_json` -> `vlmdet.io`."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_package(module: str) -> bool:
    return (SRC / module.replace(".", "/") / "__init__.py").is_file()


@functools.cache
def _parsed(src: Path) -> dict[str, ast.Module]:
    """module name -> syntax tree of every source file under `src`, parsed once per run (the trees are only read)."""
    return {_module_name(p): ast.parse(p.read_text()) for p in src.rglob("*.py")}


@functools.cache
def _all_imports(src: Path) -> dict[str, set[str]]:
    """module name -> every name it imports anywhere (`_imports(..., module_level_only=False)`)."""
    return {m: _imports(t, module_level_only=False) for m, t in _parsed(src).items()}


def graph(module_level_only: bool) -> dict[str, set[str]]:
    trees = _parsed(SRC)
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
    bad = sorted(
        f"{m} imports {i}"
        for m, imported in _all_imports(SRC).items() if _inside(m, layer)
        for i in imported if _inside(i, forbidden)
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


#: what a command module may import lazily (docs/ARCHITECTURE.md: heavy imports only inside CLI functions)
HEAVY = ("torch", "transformers", "peft", "vllm", "matplotlib")
#: the modules `vlmdet <command>` imports: `vlmdet.cli` and each command's module
COMMAND_MODULES = {"vlmdet.cli", *(module for module, _ in COMMANDS.values())}
#: (importing module, imported module) pairs that stay inside a function body although light: none
LAZY_ALLOWED: set[tuple[str, str]] = set()


def _pulls_heavy(module: str, trees: dict[str, ast.Module], seen: set[str] | None = None) -> bool:
    """Whether importing `module` imports a HEAVY package at module level, directly or through vlmdet modules
    (the parent packages' `__init__` included)."""
    seen = set() if seen is None else seen
    if module in seen or module not in trees:
        return False
    seen.add(module)
    imported = _imports(trees[module], module_level_only=True)
    if any(i.split(".")[0] in HEAVY for i in imported):
        return True
    parents = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)}
    return any(_pulls_heavy(i, trees, seen) for i in (imported | parents) if i in trees)


def function_body_imports() -> list[str]:
    trees = _parsed(SRC)
    bad = []
    for m, t in sorted(trees.items()):
        for i in sorted(_body_imports(t, m, set(trees))):
            lazy_ok = m in COMMAND_MODULES and _pulls_heavy(i, trees)
            if not lazy_ok and (m, i) not in LAZY_ALLOWED:
                bad.append(f"{m} imports {i} inside a function")
    return bad


def test_vlmdet_imports_at_module_top():
    bad = function_body_imports()
    assert not bad, "\n".join(bad)


def test_function_body_import_check_sees_one(tmp_path, monkeypatch):
    """The check above is not vacuous: a light vlmdet import inside a library function is found, a heavy
    one inside a command module's function is not."""
    pkg = tmp_path / "vlmdet"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "io.py").write_text("import json\n")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "trainer.py").write_text("import torch\n")
    (pkg / "train" / "cli.py").write_text("def run():\n    from vlmdet.train.trainer import x\n")
    (pkg / "rundir.py").write_text("def save():\n    from .io import atomic_write_bytes\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "COMMAND_MODULES", {"vlmdet.train.cli"})
    assert function_body_imports() == ["vlmdet.rundir imports vlmdet.io inside a function"]
