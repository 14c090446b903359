"""Every third-party module the package imports is a declared dependency, or an extra its module may need.

A module that only arrives through another package (httpx2 through huggingface_hub, numpy through torchvision)
works until that package changes what it requires; then ``pip install timm-deit-distill`` gives an
ImportError. The imports are read from the code (every ``import``, top level and inside functions), each
module is mapped to the distribution that installs it with ``importlib.metadata.packages_distributions()``,
and compared with ``pyproject.toml``. An extra's import must sit inside a function: importing the package
without the extra installed must still work.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import timm_deit_distill

try:
    import tomllib
except ImportError:  # Python 3.10: huggingface_hub requires tomli there
    import tomli as tomllib

ROOT = Path(timm_deit_distill.__file__).parent
PYPROJECT = ROOT.parent / "pyproject.toml"

# The extras a module may import from (module path relative to the package -> extras). Everything else
# may import only the declared dependencies.
EXTRAS_ALLOWED = {
    "commands/demo/__init__.py": {"demo"},  # refuses in one line, before any work, when scikit-learn is missing
    "data/digits.py": {"demo"},  # scikit-learn's bundled digits
    "data/sources/_hf.py": {"hf"},  # what hfds/ and hfids/ share
    "data/sources/source_hfds.py": {"hf"},
    "data/sources/source_hfids.py": {"hf"},
    "data/sources/source_wds.py": {"wds"},
}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    core = {_normalize(Requirement(r).name) for r in project["dependencies"]}
    extras = {extra: {_normalize(Requirement(r).name) for r in reqs}
              for extra, reqs in project.get("optional-dependencies", {}).items()}
    return core, extras


class _Imports(ast.NodeVisitor):
    """Third-party top-level module names, each with whether some import of it runs at module import time."""

    def __init__(self) -> None:
        self.found: dict[str, bool] = {}
        self._depth = 0

    def _add(self, name: str) -> None:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "timm_deit_distill":
            return
        self.found[top] = self.found.get(top, False) or self._depth == 0

    def _nested(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _nested

    def visit_If(self, node: ast.If) -> None:  # `if TYPE_CHECKING:` imports never run
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self._nested(node)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module)


def _imports_by_file() -> dict[str, dict[str, bool]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        out[path.relative_to(ROOT).as_posix()] = visitor.found
    return out


IMPORTS = _imports_by_file()


def test_the_scan_sees_the_packages_imports():
    """The reader itself: it finds the imports that are known to be there, top level and lazy."""
    assert IMPORTS["checkpoint/reader.py"]["torch"] is True
    assert IMPORTS["data/digits.py"]["sklearn"] is False  # inside a function
    assert "argparse" not in IMPORTS["commands/args.py"]  # the standard library is not a dependency


def test_every_imported_module_is_a_declared_dependency():
    core, extras = _requirements()
    providers = packages_distributions()
    problems = []
    for file, modules in IMPORTS.items():
        allowed_extras = EXTRAS_ALLOWED.get(file, set())
        allowed = core.union(*(extras[e] for e in allowed_extras))
        for module, at_import in sorted(modules.items()):
            dists = {_normalize(d) for d in providers.get(module, [])}
            if not dists:
                problems.append(f"{file}: `{module}` is installed by no distribution here; install the package with "
                                "every extra ([dev,demo,hf,wds], as `make test` does) to check it")
                continue
            if not dists & allowed:
                where = " or ".join(sorted(dists))
                extra = next((e for e, names in extras.items() if dists & names), None)
                fix = (f"the [{extra}] extra, which {file} may not need (EXTRAS_ALLOWED)" if extra
                       else "no dependency or extra in pyproject.toml")
                problems.append(f"{file}: `{module}` comes from {where}: {fix}")
            elif not dists & core and at_import:
                problems.append(f"{file}: `{module}` (an extra) is imported when the module is: import it inside the "
                                "function that needs it, so the package imports without the extra")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("extra", sorted({e for extras in EXTRAS_ALLOWED.values() for e in extras}))
def test_the_extras_a_module_may_need_exist(extra):
    _, extras = _requirements()
    assert extra in extras
