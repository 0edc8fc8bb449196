"""`kmodel env gc`: remove env builds that no current lockfile refers to.

Every build records the lockfile it was made from (in its completion marker). A build is
kept while that lockfile still gives the build's key (it exists, with its env spec beside
it), or while a lockfile of the current env folder gives it (envs are keyed by content, so
several projects may share one build); otherwise it is garbage. Build folders that no env
links to (left by killed builds) are garbage too, unless a build holds their lock now.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodel._fs import kmodel_home
from kmodel.envs import backend_for
from kmodel.envs.base import prefix_of_build, read_marker
from kmodel.errors import KmodelError
from kmodel.loader import load_env_spec
from kmodel.registry import EnvRef, Registry


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


def _why_unused(marker: dict[str, Any]) -> str | None:
    """None if a lockfile that used the build still gives its key; else why it is garbage."""
    users = [marker.get("lockfile"), *marker.get("lockfiles", [])]
    why = "it records no lockfile"
    for lockfile in (Path(str(u)) for u in users if u):
        name = str(marker.get("name", ""))
        spec = lockfile.with_name(f"{name}.yaml")
        if not lockfile.is_file() or not spec.is_file():
            why = f"its lockfile {lockfile} is gone"
            continue
        try:
            ref = EnvRef(name, spec, load_env_spec(spec))
            if ref.lockfile != lockfile:
                why = f"{lockfile} is not the lockfile of {spec} any more"
                continue
            if backend_for(ref).key(ref, fresh=False) == marker.get("key"):
                return None
            why = f"{lockfile} changed since it was built"
        except KmodelError as e:
            why = f"its env spec or lock no longer loads ({e.code})"
    return why


def _current_keys(registry: Registry) -> set[str]:
    keys = set()
    for name in registry.env_names():
        try:
            ref = registry.env(name)
            if ref.lockfile.is_file():  # a lock older than its spec still names its build
                keys.add(backend_for(ref).key(ref, fresh=False))
        except KmodelError:
            continue  # the env spec does not load: refers to no build
    return keys


def garbage(registry: Registry) -> list[Garbage]:
    """Env builds in KMODEL_HOME that nothing current refers to, each with why."""
    envs = kmodel_home() / "envs"
    if not envs.is_dir():
        return []
    current = _current_keys(registry)
    found, linked = [], set()
    for link in sorted(envs.iterdir()):
        target = _build_of(link) if link.is_symlink() else None
        if target is None:
            continue  # not a link kmodel made: never followed, never removed
        linked.add(target)
        if why := _unused_link(target, current):
            found.append(Garbage(link, why, _size(target)))
    builds = envs / ".builds"
    for build in sorted(builds.iterdir()) if builds.is_dir() else []:
        if _abandoned(build, linked):
            found.append(Garbage(build, "left by an interrupted build", _size(build)))
    return found


def _unused_link(build: Path, current: set[str]) -> str | None:
    """Why the build an env's name links to is garbage, or None if it is still used."""
    marker = read_marker(build)
    if marker is None:
        return "its build is damaged (no marker)"
    if marker.get("key") in current or _in_use(build):
        return None
    return _why_unused(marker)


def _abandoned(build: Path, linked: set[Path]) -> bool:
    """A build folder no env links to, that no build holds the lock of and no process
    uses: left by a killed build."""
    if build.is_symlink() or not build.is_dir() or build in linked:
        return False  # not kmodel's, or linked
    return not Path(f"{prefix_of_build(build)}.lock").exists() and not _in_use(build)


def _build_of(link: Path) -> Path | None:
    """The build folder an env's name links to, if it is one kmodel made: a folder right
    inside KMODEL_HOME/envs/.builds (anything else, e.g. a link a user put there, is not
    kmodel's to delete)."""
    builds = link.parent / ".builds"
    target = Path(os.path.realpath(link))
    if target.parent != Path(os.path.realpath(builds)) or target.is_symlink() \
            or not target.is_dir():
        return None
    return builds / target.name


def remove(item: Garbage) -> None:
    """Unlink the env's name first (it stops being found), then delete its build; only
    ever inside KMODEL_HOME/envs."""
    if item.path.is_symlink():
        target = _build_of(item.path)
        item.path.unlink()
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)
    elif item.path.is_dir():
        shutil.rmtree(item.path, ignore_errors=True)
