"""The layering the design promises, read from the source: every import counts, lazy ones too."""

import ast
import os

import pytest

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("backend", "autotune")


def modules(package: str) -> dict[str, str]:
    folder = os.path.join(ROOT, package)
    found = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            module = package if name == "__init__.py" else f"{package}.{name[:-3]}"
            found[module] = os.path.join(folder, name)
    return found


ALL = {**modules("backend"), **modules("autotune")}


def imports_of(module: str) -> set[str]:
    """Modules ``module`` imports anywhere in its file, resolved to full names."""
    path = ALL[module]
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from backend import compiler` imports the submodule backend.compiler; the package
            # itself counts only for names that are not submodules
            submodules = {f"{base}.{alias.name}" for alias in node.names} & ALL.keys()
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(base)
    return found


@pytest.mark.parametrize("forbidden", ["autotune", "optuna", "joblib"])
def test_the_backend_imports_nothing_of_the_tuner(forbidden):
    # the runtime a serving process loads stays small: the tuner's stack is not part of it
    offenders = {module: sorted(name for name in imports_of(module)
                                if name == forbidden or name.startswith(forbidden + "."))
                 for module in modules("backend")}
    assert not {m: names for m, names in offenders.items() if names}


def cycles() -> list[list[str]]:
    graph = {module: sorted(imports_of(module) & ALL.keys() - {module}) for module in ALL}
    found, done = [], set()

    def visit(module, stack):
        if module in stack:
            found.append(stack[stack.index(module):] + [module])
            return
        if module in done:
            return
        for target in graph[module]:
            visit(target, stack + [module])
        done.add(module)

    for module in graph:
        visit(module, [])
    return found


def test_no_import_cycle_in_either_package():
    # a package's __init__ re-exports its modules; a module importing its own package is the cycle
    assert not cycles(), "\n".join(" -> ".join(cycle) for cycle in cycles())


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    # the control: the lazy import of the dispatcher's warn_once that the lookup once needed
    original = imports_of
    monkeypatch.setitem(globals(), "imports_of", lambda module: original(module) | (
        {"backend.compiler"} if module == "backend.lookup" else set()))
    assert ["backend.compiler", "backend.lookup", "backend.compiler"] in cycles()


def test_every_path_value_is_a_registered_compile_path_whose_fallbacks_end():
    from backend import paths
    from backend.knobs import KNOBS

    registered = paths.registered()
    assert set(registered) == set(KNOBS["path"].choices)
    for name in registered:
        seen = [name]
        while registered[seen[-1]].fallback is not None:
            seen.append(registered[seen[-1]].fallback)
            assert seen[-1] in registered and len(seen) == len(set(seen)), seen
