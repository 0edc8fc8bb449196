"""The package's imports run one way: each module imports only modules on floors below its
own (so no import runs back up, and no two modules import each other). The floors follow
../shared/DESIGN.md: cli -> api/workflow/compose/predict -> registry/envs -> spec/_fs/_lock
-> io/errors/job. Imports inside functions count too: they are imports all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kmodel"

#: the floors, from the ground up; a module may import only modules of lower floors
FLOORS: list[set[str]] = [
    # what the in-env runner loads by file path: nothing of kmodel's core
    {"_version", "defaults", "job", "io", "io.hdf5", "runner", "_reaper", "metrics",
     "_signals"},
    {"errors"},
    {"_fs", "_subprocess", "spec", "weight_formats"},
    {"_lock", "formats", "_schema", "record", "envs.pip_sources", "datasets", "checksums"},
    {"loader"},
    {"registry"},
    {"weights", "envs.base", "scaffold"},
    {"envs.uv"},
    {"envs.conda"},
    {"envs", "provenance", "merge", "tables"},
    {"launch", "envs.gc", "plan"},
    {"predict", "validate"},
    {"train", "modeltest"},
    {"compose"},
    {"folds", "figure", "assemble"},
    {"scores"},
    {"status"},
    {"workflow", "bundle"},
    {"api"},
    {"cli", ""},  # "" is the package's face, kmodel/__init__.py (it hands on the API)
    {"__main__"},
]
FLOOR = {name: k for k, names in enumerate(FLOORS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The kmodel modules ``name`` imports (relative to the package; "" is its face)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: max(0, len(package.split(".")) - node.level + 1)]
                base = ".".join(["kmodel", *filter(None, up), *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}"[7:] in modules else base
                       for a in node.names]
        else:
            continue
        out |= {t[len("kmodel."):] if t != "kmodel" else "" for t in targets
                if t == "kmodel" or t.startswith("kmodel.")}
    return out - {name}


def test_every_module_has_a_floor() -> None:
    missing = sorted(set(_modules()) - set(FLOOR))
    assert not missing, f"put these modules on a floor in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_imports_run_one_way(name: str) -> None:
    modules = _modules()
    upward = sorted(t for t in _imports(name, modules[name], modules)
                    if FLOOR.get(t, len(FLOORS)) >= FLOOR.get(name, -1))
    assert not upward, f"kmodel.{name} (floor {FLOOR.get(name)}) imports {upward}, " \
        "which are not below it"


def test_the_runner_and_what_it_loads_import_nothing_of_kmodel() -> None:
    """runner.py runs in a model's env, where kmodel is not installed: it and the files it
    loads by path (job.py, io/hdf5.py) use only the standard library, numpy and h5py."""
    modules = _modules()
    for name in ("runner", "job", "io.hdf5"):
        assert _imports(name, modules[name], modules) == set(), name


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser finds imports inside functions and relative ones (or the test above
    would pass on anything)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from kmodel import cli\n    from .registry import Model\n")
    found = _imports("spec", probe, _modules())
    assert found == {"cli", "registry"}
