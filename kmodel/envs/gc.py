"""`kmodel env gc`: remove env builds that no current lockfile refers to.

Every build records the lockfile it was made from (in its completion marker). A build is
kept while that lockfile still gives the build's key (it exists, with its env spec beside
it), or while a lockfile of the current env folder gives it (envs are keyed by content, so
several projects may share one build); otherwise it is garbage. Build folders that no env
links to (left by killed builds) are garbage too, unless a build holds their lock now.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kmodel._fs import kmodel_home
from kmodel.envs import backend_for
from kmodel.envs.base import MARKER
from kmodel.errors import KmodelError
from kmodel.registry import EnvRef, Registry
from kmodel.spec import load_env_spec


@dataclass(frozen=True)
class Garbage:
    path: Path
    reason: str
    size: int


def _size(path: Path) -> int:
    """Bytes that deleting ``path`` frees: files linked from elsewhere too (uv links a
    build's files from its cache) are not counted."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if st.st_nlink == 1:
                total += st.st_size
    return total


def _in_use(build: Path) -> bool:
    """A live process was started with this build's python (Linux: /proc; elsewhere
    assumed not). A venv's python links to its base interpreter, so the folder of the
    command's first word is what tells."""
    root = str(build.resolve()) + os.sep
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv0 = cmdline.read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if argv0.startswith("/") and os.path.realpath(os.path.dirname(argv0)).startswith(root):
            return True
    return False


def _why_unused(marker: dict[str, object]) -> str | None:
    """None if the build's lockfile still gives its key; else why it is garbage."""
    lockfile = Path(str(marker.get("lockfile", "")))
    name = str(marker.get("name", ""))
    spec = lockfile.with_name(f"{name}.yaml")
    if not lockfile.is_file() or not spec.is_file():
        return f"its lockfile {lockfile} is gone"
    try:
        ref = EnvRef(name, spec, load_env_spec(spec))
        if ref.lockfile != lockfile:
            return f"{lockfile} is not the lockfile of {spec} any more"
        key = backend_for(ref).key(ref)
    except KmodelError as e:
        return f"its env spec or lock no longer loads ({e.code})"
    return None if key == marker.get("key") else f"{lockfile} changed since it was built"


def _current_keys(registry: Registry) -> set[str]:
    keys = set()
    for name in registry.env_names():
        try:
            ref = registry.env(name)
            keys.add(backend_for(ref).key(ref))
        except KmodelError:
            continue  # not locked, or stale: refers to no build
    return keys


def garbage(registry: Registry) -> list[Garbage]:
    envs = kmodel_home() / "envs"
    if not envs.is_dir():
        return []
    current = _current_keys(registry)
    found, linked = [], set()
    for link in sorted(envs.iterdir()):
        if not link.is_symlink():
            continue
        target = link.resolve()
        linked.add(target)
        try:
            marker = json.loads((target / MARKER).read_text())
        except (OSError, ValueError):
            found.append(Garbage(link, "its build is damaged (no marker)", _size(target)))
            continue
        if marker.get("key") not in current and (why := _why_unused(marker)) \
                and not _in_use(target):
            found.append(Garbage(link, why, _size(target)))
    builds = envs / ".builds"
    for build in sorted(builds.iterdir()) if builds.is_dir() else []:
        prefix = build.name.rsplit("-", 2)[0]
        if build.resolve() in linked or (envs / f"{prefix}.lock").exists() or _in_use(build):
            continue  # linked, being built right now, or running
        found.append(Garbage(build, "left by an interrupted build", _size(build)))
    return found


def remove(item: Garbage) -> None:
    """Unlink the env's name first (it stops being found), then delete its build."""
    if item.path.is_symlink():
        target = item.path.resolve()
        item.path.unlink()
        shutil.rmtree(target, ignore_errors=True)
    else:
        shutil.rmtree(item.path, ignore_errors=True)
