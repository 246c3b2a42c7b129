"""The package layout is the pipeline: each layer imports only the layers below it.

Every ``import``/``from ... import`` of an aibuild module is read from the source with
``ast``, including the ones inside functions (those are how an import cycle hides), and
checked against the layer order below; the whole graph must also be free of cycles.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import aibuild

PACKAGE = Path(aibuild.__file__).resolve().parent
ARCHITECTURE_DOC = PACKAGE.parent / "docs" / "architecture.md"

# Lowest first. A module may import modules of its own layer or of lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("aibuild", "aibuild.errors", "aibuild._resources", "aibuild.contract", "aibuild.kv",
     "aibuild.labels", "aibuild.logs", "aibuild.vcs"),
    ("aibuild.knowledge", "aibuild.engine", "aibuild.oci"),
    ("aibuild.profile",),
    ("aibuild.image",),
    ("aibuild.publish",),
    ("aibuild.run", "aibuild.doctor"),
    ("aibuild.export",),  # cluster jobs: they reuse run's container configuration
    ("aibuild.pipeline",),
    ("aibuild.cli", "aibuild.__main__"),
]  # fmt: skip
# The trainer runs inside images with only torch, click and pyyaml: it may import the
# lowest layer and itself, nothing else. Its config schema is plain data that the
# profile validator reads.
TRAIN = "aibuild.train"
SHARED_TRAIN_MODULES = ("aibuild.train.config",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every aibuild module ``path`` imports, at any depth, resolved to module names."""
    known = modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from aibuild.x import y`: y may be a module (aibuild.x.y) or a name in aibuild.x
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        else:
            continue
        found.update(n for n in names if n == "aibuild" or n.startswith("aibuild."))
    return found


def layer_of(name: str) -> int:
    """The layer of the longest prefix that names ``name`` (``aibuild`` itself is only
    the package: ``aibuild.run.x`` is in run's layer, not in the package's)."""
    matches = [
        (len(p), rank)
        for rank, prefixes in enumerate(LAYERS)
        for p in prefixes
        if name == p or name.startswith(p + ".")
    ]
    if not matches:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS in {__file__}")
    return max(matches)[1]


GRAPH = {name: imports(path) - {name} for name, path in modules().items()}


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if not n.startswith(TRAIN)))
def test_imports_go_down_the_layers(name: str) -> None:
    rank = layer_of(name)
    upward = sorted(
        f"{target} (layer {layer_of(target)})"
        for target in GRAPH[name]
        if not target.startswith(TRAIN) and layer_of(target) > rank
    )
    trainer = sorted(
        t for t in GRAPH[name] if t.startswith(TRAIN) and t not in SHARED_TRAIN_MODULES
    )
    if name.startswith("aibuild.cli"):
        trainer = [t for t in trainer if t != "aibuild.train.cli"]  # the `train` command
    assert not upward, f"{name} (layer {rank}) imports upward: {upward}"
    assert not trainer, f"{name} imports the trainer's internals: {trainer}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith(TRAIN)))
def test_trainer_imports_only_the_lowest_layer(name: str) -> None:
    outside = sorted(t for t in GRAPH[name] if not t.startswith(TRAIN) and layer_of(t) > 0)
    assert not outside, f"{name} imports {outside}: the trainer must run without them"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH.get(node, ())):
            if target == "aibuild" or target not in GRAPH:
                continue  # the package itself only holds __version__ and lazy names
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


ORDER = ("aibuild.run", "aibuild.export", "aibuild.cli")  # each may import only those before it
# The run modules a cluster export may import: the pure container configuration and what it
# reads. Never the container's life (lifecycle), sessions (interactive) or `aibuild run`.
RUN_FOR_EXPORTS = ("aibuild.run.config", "aibuild.run.gpus", "aibuild.run.rendezvous")
LIFECYCLE = (
    "aibuild.run.lifecycle",
    "aibuild.run.interactive",
    "aibuild.run.terminal",
    "aibuild.run.container",
    "aibuild.run.multinode",
)


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def reachable(name: str) -> set[str]:
    """Every aibuild module ``name`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen and target in GRAPH and target != "aibuild":
                seen.add(target)
                todo.append(target)
    return seen


def test_run_export_cli_are_ordered() -> None:
    """run -> export -> cli in LAYERS, so that test_imports_go_down_the_layers catches an
    arrow back up."""
    ranks = [layer_of(package) for package in ORDER]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks), dict(
        zip(ORDER, ranks, strict=True)
    )


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if any(_in(n, p) for p in ORDER[:2])))
def test_no_back_edge_from_run_or_export(name: str) -> None:
    """A run module imports no export or cli module (Rendezvous once ran back up, from
    run.multinode to export.job), an export module no cli module."""
    rank = next(i for i, package in enumerate(ORDER) if _in(name, package))
    later = ORDER[rank + 1 :]
    back = sorted(t for t in GRAPH[name] if any(_in(t, p) for p in later))
    assert not back, f"{name} imports {back}: a back-edge in run -> export -> cli"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if _in(n, "aibuild.export")))
def test_exports_import_only_the_container_configuration(name: str) -> None:
    """An export writes a job file from run's pure configuration: it imports no other run
    module, and nothing it reaches starts, attaches or stops a container."""
    direct = sorted(t for t in GRAPH[name] if _in(t, "aibuild.run") and t not in RUN_FOR_EXPORTS)
    assert not direct, f"{name} imports {direct}; of run, only {RUN_FOR_EXPORTS}"
    life = sorted(t for t in reachable(name) if t in LIFECYCLE)
    assert not life, f"{name} reaches {life}: the exports must not load a container's life"


def test_the_lifecycle_modules_exist() -> None:
    """The names above are modules (a rename must not leave the check empty)."""
    assert all(m in GRAPH for m in (*RUN_FOR_EXPORTS, *LIFECYCLE))
    assert {t for t in GRAPH["aibuild.export.slurm"] if _in(t, "aibuild.run")} >= {
        "aibuild.run.config"
    }


def private_imports(path: Path) -> list[str]:
    """``module._name`` for each private name ``path`` imports from another aibuild module
    (a private module itself, such as ``aibuild._resources``, is a module, not a name;
    ``__version__`` is public)."""
    known = modules()
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module != "aibuild" and not node.module.startswith("aibuild."):
                continue
            for alias in node.names:
                dunder = alias.name.startswith("__") and alias.name.endswith("__")
                module = f"{node.module}.{alias.name}" in known
                if alias.name.startswith("_") and not dunder and not module:
                    found.append(f"{node.module}.{alias.name}")
    return found


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_module_imports_private_names_of_another(name: str) -> None:
    """What another module needs has a public name (run.multinode once took seven private
    names of run.container)."""
    taken = private_imports(modules()[name])
    assert not taken, f"{name} imports private names {taken}: give them public names"


def test_the_checker_sees_private_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from aibuild.run.lifecycle import Pump, _run\n"
        "from aibuild import _resources, __version__\n",
        encoding="utf-8",
    )
    assert private_imports(source) == ["aibuild.run.lifecycle._run"]


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from aibuild.cli import main\n", encoding="utf-8")
    assert imports(source) == {"aibuild.cli"}


def test_readme_names_every_folder() -> None:
    """docs/architecture.md gives each package folder its one line."""
    section = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [f for f in folders if not re.search(rf"`aibuild/{f}/`", section)]
    assert not missing, f"docs/architecture.md does not name {missing}"


def test_public_api_resolves() -> None:
    for name in aibuild.__all__:
        assert getattr(aibuild, name) is not None, name
