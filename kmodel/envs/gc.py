"""`kmodel env gc`: remove env builds that no current lockfile refers to.

Every build records the lockfile it was made from (in its completion marker). A build is
kept while that lockfile still gives the build's key (it exists, with its env spec beside
it), or while a lockfile of the current env folder gives it (envs are keyed by content, so
several projects may share one build); otherwise it is garbage. Build folders that no env
links to (left by killed builds) are garbage too, unless a build holds their lock now.

In a KMODEL_HOME shared by a group, a build may be named by a lockfile in another user's
private folder: a lockfile (or marker) this user cannot read is never taken for a lockfile
that is gone; its build is kept, with the reason.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodel._fs import home_error, kmodel_home
from kmodel.envs import backend_for
from kmodel.envs.base import MARKER, prefix_of_build, read_marker
from kmodel.errors import KmodelError
from kmodel.loader import load_env_spec
from kmodel.registry import EnvRef, Registry


@dataclass(frozen=True)
class Garbage:
    path: Path
    reason: str
    size: int


@dataclass(frozen=True)
class Kept:
    """A build no lockfile here names, kept because this user cannot tell whether another
    user's lockfile still names it (it cannot read that lockfile, or the build's marker)."""

    path: Path
    reason: str


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


def _why_unused(marker: dict[str, Any]) -> tuple[str | None, str | None]:
    """(None, None) if a lockfile that used the build still gives its key; else (why it
    is garbage, None), or (None, why it is kept) when a lockfile that used it cannot be
    read by this user (another user's private folder): never deleted on a doubt."""
    users = [marker.get("lockfile"), *marker.get("lockfiles", [])]
    why, unreadable = "it records no lockfile", None
    name = str(marker.get("name", ""))
    for lockfile in (Path(str(u)) for u in users if u):
        spec = lockfile.with_name(f"{name}.yaml")
        states = [_gone(lockfile), _gone(spec)]
        if None in states:
            why = f"its lockfile {lockfile} is gone"
            continue
        if denied := next((s for s in states if s), None):
            unreadable = f"its lockfile {lockfile} cannot be read by this user ({denied})"
            continue
        try:
            ref = EnvRef(name, spec, load_env_spec(spec))
            if ref.lockfile != lockfile:
                why = f"{lockfile} is not the lockfile of {spec} any more"
                continue
            if backend_for(ref).key(ref, fresh=False) == marker.get("key"):
                return None, None
            why = f"{lockfile} changed since it was built"
        except (FileNotFoundError, NotADirectoryError):  # removed since the checks above
            why = f"its lockfile {lockfile} is gone"
        except OSError as e:
            unreadable = f"its lockfile {lockfile} cannot be read by this user " \
                f"({e.strerror or e})"
        except KmodelError as e:
            why = f"its env spec or lock no longer loads ({e.code})"
    if unreadable is not None:
        return None, f"{unreadable}: another user's project may use it; gc as that user " \
            "to collect it"
    return why, None


def _gone(path: Path) -> str | None:
    """None if ``path`` does not exist (it, or a folder on the way, is gone); "" if this
    user can read it; else why it cannot (a folder on the way it may not search, or a
    file it may not read: another user's)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        return e.strerror or str(e)
    if not os.access(path, os.R_OK):
        return "permission denied"
    return ""


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
    return survey(registry)[0]


def survey(registry: Registry) -> tuple[list[Garbage], list[Kept]]:
    """Env builds in KMODEL_HOME that nothing current refers to, each with why; and the
    builds kept only because this user cannot tell (see ``Kept``)."""
    envs = kmodel_home() / "envs"
    if not envs.is_dir():
        return [], []
    current = _current_keys(registry)
    found, kept, linked = [], [], set()
    for link in sorted(envs.iterdir()):
        target = _build_of(link) if link.is_symlink() else None
        if target is None:
            continue  # not a link kmodel made: never followed, never removed
        linked.add(target)
        garbage_why, kept_why = _unused_link(target, current)
        if garbage_why:
            found.append(Garbage(link, garbage_why, _size(target)))
        elif kept_why:
            kept.append(Kept(link, kept_why))
    builds = envs / ".builds"
    for build in sorted(builds.iterdir()) if builds.is_dir() else []:
        if _abandoned(build, linked):
            found.append(Garbage(build, "left by an interrupted build", _size(build)))
    return found, kept


def _unused_link(build: Path, current: set[str]) -> tuple[str | None, str | None]:
    """(why the build an env's name links to is garbage, None), (None, why it is kept
    though no lock here names it), or (None, None): still used."""
    marker = read_marker(build)
    if marker is None:
        unreadable = _gone(build / MARKER)
        if unreadable:
            return None, f"its marker {build / MARKER} cannot be read by this user " \
                f"({unreadable})"
        return "its build is damaged (no marker)", None
    if marker.get("key") in current or _in_use(build):
        return None, None
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
    ever inside KMODEL_HOME/envs. A build this user may not delete (another user's, in a
    home not shared with the group) is left whole, its name too: KM207 says why."""
    if item.path.is_symlink():
        target = _build_of(item.path)
        if target is not None:
            _check_removable(target)
        try:
            item.path.unlink()
        except PermissionError as e:
            raise home_error(kmodel_home(), e) from None
        if target is not None:
            _rmtree(target)
    elif item.path.is_dir():
        _check_removable(item.path)
        _rmtree(item.path)


def _check_removable(build: Path) -> None:
    for folder in (build.parent, build):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise home_error(kmodel_home(), None, folder)


def _rmtree(path: Path) -> None:
    """Delete ``path``; KM207 naming the first folder that kept something."""
    failed: list[BaseException] = []
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda func, p, e: failed.append(e))
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: failed.append(info[1]))
    denied = [e for e in failed if isinstance(e, PermissionError)]
    if denied:
        raise home_error(kmodel_home(), denied[0]) from None
