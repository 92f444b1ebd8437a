"""The import graph of the package: floors, no upward imports, no circles, no private names.

Every ``import`` and ``from ... import`` of a ``tunedlens`` module is read from the source with
``ast`` (lazy imports inside functions count too). A module may import its own package and any
package on a lower floor; never a package on its own floor or above. The graph of modules must
have no cycle, and no module may import a private name (``_x``) from another package.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tunedlens"

FLOORS = {
    # 0: pure helpers
    "errors": 0,
    "metrics": 0,
    "provenance": 0,
    "serialize": 0,
    # 1: models, data, architecture knowledge, outputs and the processes of a job
    "arch": 1,
    "data": 1,
    "models": 1,
    "outputs": 1,
    "distributed": 1,
    # 2: lenses and their files; a model sharded across the processes of a job (it needs the
    # architecture, the loader and the process group of floor 1)
    "lenses": 2,
    "sharding": 2,
    # 3: the numerics floor: the one readout engine
    "engine": 3,
    # 4: figures (they draw grids the readout defines)
    "plot": 4,
    # 5: jobs built on the readout: training tuned lenses, fitting J-lenses, evaluating, ...
    "train": 5,
    "jacobian": 5,
    "evaluation": 5,
    "predict": 5,
    "hub": 5,
    # 6: using lenses: early exit, pruning, anomaly detection, lens-decoded generation
    "analyze": 6,
    # 7: looking through lenses: trajectories and the notebook facade (which runs the analyses)
    "view": 7,
    # 8: front ends: the web explorer
    "serve": 8,
    # 9: one room per command: argument checks, shared start-up, library calls
    "commands": 9,
    # 10: the command line: maps commands to functions, prints and renders
    "cli": 10,
}
TOP = {"__init__", "__main__"}  # the package's own entry points may import anything


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(("tunedlens", *parts)).removesuffix(".__init__")
        modules[name] = path
    return modules


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every tunedlens import in ``path``."""
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [
                (a.name, [], node.lineno) for a in node.names if a.name.startswith("tunedlens")
            ]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module]) if module else ".".join(base)
            if module.startswith("tunedlens"):
                found.append((module, [a.name for a in node.names], node.lineno))
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_floor():
    packages = {_package(name) for name in _modules()} - TOP
    assert packages <= set(FLOORS), f"give these a floor: {sorted(packages - set(FLOORS))}"


def test_no_module_imports_its_floor_or_above():
    problems = []
    for name, path in _modules().items():
        source = _package(name)
        if source in TOP:
            continue
        for module, _, line in _imports(name, path):
            target = _package(module)
            if target == source or target == "__init__":
                if target == "__init__" and module == "tunedlens":
                    problems.append(f"{name}:{line} imports the top-level package")
                continue
            if FLOORS[target] >= FLOORS[source]:
                problems.append(
                    f"{name}:{line} ({source}, floor {FLOORS[source]}) imports {module} "
                    f"({target}, floor {FLOORS[target]})"
                )
    assert not problems, "\n".join(problems)


def test_no_private_names_across_packages():
    problems = []
    for name, path in _modules().items():
        for module, names, line in _imports(name, path):
            if _package(module) != _package(name):
                problems += [
                    f"{name}:{line} imports {module}.{n}" for n in names if n.startswith("_")
                ]
    assert not problems, "\n".join(problems)


def test_the_module_graph_has_no_cycles():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(name, path):
            for candidate in [f"{module}.{n}" for n in names] + [module]:
                if candidate in modules and candidate != name:
                    graph[name].add(candidate)
                    break
    cycles = _strongly_connected(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(sorted(c)) for c in cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm; components of more than one module."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                result.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return result


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_floor_table_names_real_packages(package):
    assert (SRC / package).is_dir() or (SRC / f"{package}.py").exists()
