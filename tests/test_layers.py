"""The package's floors, read from its own imports: the library never imports the factory or a command, the
factory never imports a command, and the import graph has no cycle.

Every ``import`` of every module counts, at the top and inside functions (a function-level import is how the
old loop cache -> cache_cli -> train -> cache hid). Floors: commands (``timm_deit_distill.commands``, and the
two entry points ``__main__`` and the ``train`` shim), the factory (the package ``timm_deit_distill.factory`` and
its modules), the library (everything else).
"""

from __future__ import annotations

import ast
from pathlib import Path

import timm_deit_distill

PACKAGE = "timm_deit_distill"
ROOT = Path(timm_deit_distill.__file__).parent
ENTRY_POINTS = {f"{PACKAGE}.__main__", f"{PACKAGE}.train"}
RANK = {"library": 0, "factory": 1, "commands": 2}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def floor(module: str) -> str:
    if module in ENTRY_POINTS or module == f"{PACKAGE}.commands" or module.startswith(f"{PACKAGE}.commands."):
        return "commands"
    if module == f"{PACKAGE}.factory" or module.startswith(f"{PACKAGE}.factory."):
        return "factory"
    return "library"


def _resolve(name: str) -> str | None:
    """The package module ``name`` denotes: itself, or the closest enclosing module (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """The package modules ``module`` imports, anywhere in its code."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from pkg.mod import name` imports pkg.mod
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix for alias in node.names]
        else:
            continue
        found |= {resolved for t in targets if t.split(".")[0] == PACKAGE and (resolved := _resolve(t))}
    found.discard(module)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_read_from_every_module():
    assert {f"{PACKAGE}.commands.train", f"{PACKAGE}.factory", f"{PACKAGE}.factory.builders",
            f"{PACKAGE}.data.loaders"} <= set(GRAPH)
    assert floor(f"{PACKAGE}.factory.builders") == floor(f"{PACKAGE}.factory") == "factory"
    # a function-level, relative, three-levels-up import is seen (commands.demo.runner imports ...factory.api inside
    # run_training)
    assert f"{PACKAGE}.factory.api" in GRAPH[f"{PACKAGE}.commands.demo.runner"]


def test_no_floor_imports_a_floor_above_it():
    upward = [f"{a} ({floor(a)}) imports {b} ({floor(b)})" for a, targets in sorted(GRAPH.items())
              for b in sorted(targets) if RANK[floor(b)] > RANK[floor(a)]]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# Where an options namespace may be taken below the commands: the options module, which makes and resolves it, and
# the one function per command that reads it into typed settings.
NAMESPACE_READERS = {f"{PACKAGE}.factory.options": None,
                     f"{PACKAGE}.factory.settings": {"settings_from_options", "eval_settings_from_options",
                                                     "teacher_settings"}}


def test_library_and_factory_functions_take_no_argparse_namespace():
    """Typed settings, never an options namespace, below the commands: only the options module and the one
    reader of each command's namespace take one."""
    found = []
    for module, path in MODULES.items():
        if floor(module) == "commands" or (module in NAMESPACE_READERS and NAMESPACE_READERS[module] is None):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name in (NAMESPACE_READERS.get(module) or ()):
                    continue
                for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                    if arg.annotation is not None and "Namespace" in ast.unparse(arg.annotation):
                        found.append(f"{module}.{node.name}({arg.arg}: {ast.unparse(arg.annotation)})")
    assert not found, found
