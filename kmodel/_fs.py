"""Small filesystem helpers: hashing, output guards, exclusive and atomic writes, KMODEL_HOME.

Every file kmodel writes appears under its final name only when complete: it is written
under a name unique to the run, created exclusively (``O_EXCL``: never through a symlink
or over a file that is already there), then renamed. Outputs are checked before anything
runs: an output that is one of the command's inputs, or a folder kmodel did not write, is
refused.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from kmodel.errors import (
    FileAccessError,
    HomeNotWritableError,
    InputMissingError,
    OutputNotWritableError,
    write_error,
)

log = logging.getLogger("kmodel")

#: the longest suffix kmodel appends to an output's name for its temporary files
#: (``.partial-<8 hex>``, ``.lock``, ``.<name>.tmp-<pid>-<6 hex>`` with a 7-digit pid)
TEMP_SUFFIX_LEN = 24


def kmodel_home() -> Path:
    """Where built envs and caches live: $KMODEL_HOME, else the user's cache dir."""
    if home := os.environ.get("KMODEL_HOME"):
        return Path(home).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kmodel"


def home_folder(*parts: str) -> Path:
    """A folder under KMODEL_HOME, created if needed (and shared with the home's group, see
    ``share``); a clear error names KMODEL_HOME and what to do."""
    home = kmodel_home()
    folder = home.joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise home_error(home, e) from None
    group = home_group(home)
    if group is not None:
        for depth in range(1, len(parts) + 1):
            share(home.joinpath(*parts[:depth]), group)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise home_error(home, None, folder)
    return folder


# --- a KMODEL_HOME shared by a group -------------------------------------------------
#
# A home whose folder is group-writable or setgid is a group's: every folder kmodel makes
# in it is made group-writable (setgid kept, the home's group), whatever the umask of the
# user who made it, so that the group's next user can build, extract, cache and collect
# garbage there too. Files only need to be readable by the group: they are replaced
# atomically (a rename needs the folder's write bit, not the file's).

Group = tuple[int, bool]  # the home's group id, and whether the home is setgid


def home_group(home: Path | None = None) -> Group | None:
    """The group a shared KMODEL_HOME belongs to (and its setgid bit); None for a home
    of one user (not group-writable, not setgid) or one that does not exist yet."""
    try:
        st = os.stat(home or kmodel_home())
    except OSError:
        return None
    if not st.st_mode & (stat.S_IWGRP | stat.S_ISGID):
        return None
    return st.st_gid, bool(st.st_mode & stat.S_ISGID)


def share(path: Path, group: Group | None = None, *, writable: bool = False) -> None:
    """Let the home's group use ``path``, which this user made under a shared KMODEL_HOME:
    a folder gets g+rwx (and setgid where the home has it), a file g+r (g+x where u+x;
    g+w with ``writable``), both the home's group. A no-op outside a shared home, for
    symlinks, and for what another user owns (only its owner may change it)."""
    if group is None and (group := _group_of(path)) is None:
        return
    try:
        st = os.lstat(path)
    except OSError:
        return
    _share(path, st, group, writable)


def share_tree(root: Path, group: Group | None = None) -> None:
    """``share`` for a folder and everything in it (an env build, an extracted bundle)."""
    if group is None and (group := _group_of(root)) is None:
        return
    share(root, group)
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                _share(Path(path), os.lstat(path), group, False)


def _group_of(path: Path) -> Group | None:
    """The group of the shared KMODEL_HOME that ``path`` lies in; None elsewhere."""
    home = kmodel_home()
    if not os.path.abspath(path).startswith(os.path.join(os.path.abspath(home), "")):
        return None
    return home_group(home)


def _share(path: Path, st: os.stat_result, group: Group, writable: bool) -> None:
    gid, setgid = group
    if st.st_uid != os.geteuid() or stat.S_ISLNK(st.st_mode):
        return
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        want = mode | stat.S_IRWXG | (stat.S_ISGID if setgid else 0)
    elif stat.S_ISREG(st.st_mode):
        want = mode | stat.S_IRGRP | (stat.S_IWGRP if writable else 0) \
            | (stat.S_IXGRP if mode & stat.S_IXUSR else 0)
    else:
        return
    with contextlib.suppress(OSError):
        if st.st_gid != gid:  # a member may give what it owns to the group (which clears
            os.chown(path, -1, gid)  # a file's setgid bit: the chmod below sets the mode)
        if want != mode or st.st_gid != gid:
            os.chmod(path, want)


def home_error(home: Path, e: OSError | None, folder: Path | None = None
               ) -> HomeNotWritableError:
    """KM207 naming the true cause (the home, or a folder in it or on the way to it, that
    this user may not write: its mode and owner; or a read-only filesystem) and the fix."""
    if e is not None and e.errno == errno.EROFS:
        return HomeNotWritableError(home, "it is on a read-only filesystem",
                                    "set KMODEL_HOME to a folder on a writable one")
    if e is not None and e.errno in (errno.ENOTDIR, errno.EEXIST):
        named = Path(e.filename or home)
        blocker = next((f for f in (named, *named.parents)
                        if os.path.lexists(f) and not os.path.isdir(f)), named)
        return HomeNotWritableError(home, f"{blocker} is a file, not a folder",
                                    "set KMODEL_HOME to a folder")
    if e is not None and e.errno not in (errno.EACCES, errno.EPERM):
        return HomeNotWritableError(home, e.strerror or str(e))
    where = folder or _nearest_folder(Path(e.filename) if e and e.filename else home)
    try:
        st = os.stat(where)
    except OSError:
        return HomeNotWritableError(home, f"{where}: permission denied")
    owner = _user_name(st.st_uid)
    reason = f"you cannot write {where}: mode {stat.S_IMODE(st.st_mode):o}, owner {owner}"
    elsewhere = "set KMODEL_HOME to a folder you can write"
    if st.st_uid == os.geteuid():
        fix = f"run `chmod u+w {where}`, or {elsewhere}"
    elif where == home:
        fix = (f"{owner} can share it with a group of yours (`chgrp GROUP {home}; chmod "
               f"g+ws {home}`), or {elsewhere}")
    elif where.is_relative_to(home):
        fix = (f"{owner} can run `chmod -R g+w {where}` (kmodel shares what it makes in a "
               f"group's home), or {elsewhere}")
    else:
        fix = f"{elsewhere} (built envs and caches live there)"
    return HomeNotWritableError(home, reason, fix)


def _nearest_folder(path: Path) -> Path:
    """``path`` if it is a folder this user can see, else its nearest such parent."""
    for folder in (path, *path.parents):
        if os.path.isdir(folder):
            return folder
    return path


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tmp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique temporary name next to ``path`` (same filesystem, so rename is atomic)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{os.urandom(3).hex()}")


# --- inputs ------------------------------------------------------------------------


def _utf8(path: Path) -> bool:
    """HDF5 and the runner's job (JSON) take UTF-8 paths (a name in another encoding is not)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_input_file(path: Path) -> None:
    """A regular, readable file, or KM400 saying what it is instead (never blocks on a
    FIFO); KM405 if it is one that cannot be read (its permissions, even for root)."""
    if not _utf8(path):
        raise InputMissingError(path, "has a name that is not valid UTF-8 (rename it)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputMissingError(path) from None
    except OSError as e:
        raise InputMissingError(path, e.strerror or str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputMissingError(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputMissingError(path, "is not a regular file (a FIFO, socket or device?)")
    try:  # opened, not asked (os.access says yes to root for files no one can read)
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as e:
        raise FileAccessError(f"{path}: cannot be read ({e.strerror or e}); check its "
                              "permissions") from None


def file_signature(path: Path) -> str:
    """Size, mtime, ctime and inode: any rewrite of the file changes it (ctime cannot be set
    back by a user), so provenance checks do not depend on a file's mtime alone."""
    st = os.stat(path)
    return f"{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_dev}|{st.st_ino}"


# --- outputs -----------------------------------------------------------------------


def _name_max(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _same(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file (also through symlinks, '..' or hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(child: Path, folder: Path) -> bool:
    return Path(os.path.realpath(child)).is_relative_to(os.path.realpath(folder))


def _check_name(output: Path, folder: bool) -> None:
    """The output's name: a file's or folder's (as asked), in UTF-8, leaving room for
    kmodel's temporary suffixes; not a device or FIFO."""
    if output.name in ("", ".", ".."):
        raise OutputNotWritableError(output, "it names a folder that holds other files",
                                     "give a new folder's name")
    if not _utf8(output):
        raise OutputNotWritableError(output, "its name is not valid UTF-8", "rename it")
    with contextlib.suppress(OSError):
        mode = os.lstat(output).st_mode
        if stat.S_ISDIR(mode) and not folder:
            raise OutputNotWritableError(output, "it is a folder", "give a file name")
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
            raise OutputNotWritableError(output, "it exists and is not a regular file (a "
                                         "device, FIFO or socket)", "choose a file name")
    name_max = _name_max(output.parent)
    if len(os.fsencode(output.name)) + TEMP_SUFFIX_LEN > name_max:
        raise OutputNotWritableError(
            output, f"the file name is {len(os.fsencode(output.name))} bytes; with kmodel's "
            f"temporary suffix it must fit in {name_max}", "choose a shorter name")


def _check_not_input(output: Path, inp: Path, folder: bool, siblings: Iterable[str]) -> None:
    """Writing ``output`` (or a sibling of it) would not destroy ``inp``."""
    if _same(output, inp) or (folder and _inside(inp, output)):
        what = "is" if _same(output, inp) else "contains"
        raise OutputNotWritableError(output, f"it {what} the input {inp} of this command, "
                                     "which would be destroyed", "choose another output")
    for suffix in siblings:
        if _same(output.with_name(output.name + suffix), inp):
            raise OutputNotWritableError(output, f"kmodel would write {inp}, an input of "
                                         "this command, next to it", "choose another output")


def guard_output(output: Path, inputs: Iterable[Path] = (), *, folder: bool = False,
                 siblings: Iterable[str] = (),
                 replaceable: Callable[[Path], bool] | None = None) -> None:
    """Refuse an output that would destroy one of the command's inputs, or cannot be written.

    For a file output: it may not be (or link to) an input, nor be a folder; nor may the
    ``siblings`` kmodel writes next to it (``OUT.partial``...); an existing file is replaced
    only if ``replaceable`` says it is one kmodel wrote, of the same kind (a user's file
    given by mistake is never lost). For a folder output: it may not be, or contain, an
    input or the working directory. The name must leave room for kmodel's temporary
    suffixes. The parent folder is created.
    """
    _check_name(output, folder)
    for inp in inputs:
        _check_not_input(output, inp, folder, siblings)
    if folder and _inside(Path.cwd(), output):
        raise OutputNotWritableError(output, "it is (or contains) the working directory",
                                     "give a new folder's name")
    if not folder and output.is_dir():
        raise OutputNotWritableError(output, "it is a folder", "give a file name")
    if replaceable is not None and output.is_file() and not _replaceable(output, replaceable):
        raise OutputNotWritableError(output, "it exists and is not a file kmodel wrote of "
                                     "this kind (one of yours?)",
                                     "remove it or choose another name")
    ensure_parent(output)


def guard_log(log: Path, keep: Iterable[Path]) -> None:
    """Refuse a log file (a model's own output, ``--log``) that is, or lies inside, one of
    ``keep``: the command's inputs and outputs, a model's folder, a spec, an env or a lock.
    A log is emptied before it is written: it must never be a file kmodel reads or writes.
    The parent folder is created."""
    _check_name(log, False)
    if log.is_dir():
        raise OutputNotWritableError(log, "it is a folder", "give a file name for the log")
    for path in keep:
        if _same(log, path) or _inside(log, path):
            what = "is" if _same(log, path) else "lies inside"
            raise OutputNotWritableError(log, f"as the log it would be emptied, and it {what} "
                                         f"{path}, which this command reads or writes",
                                         "give the log a file of its own")
    ensure_parent(log)


def _replaceable(path: Path, check: Callable[[Path], bool]) -> bool:
    try:
        return check(path)
    except Exception:  # unreadable as the kind kmodel writes: not kmodel's
        return False


def ensure_parent(path: Path) -> None:
    for folder in path.parents:  # mkdir would only say "File exists" / "Not a directory"
        if folder.exists():
            if not folder.is_dir():
                raise OutputNotWritableError(path, f"{folder} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputNotWritableError(path, e.strerror or str(e)) from None
    if not os.access(path.parent, os.W_OK):
        raise OutputNotWritableError(path, f"folder {path.parent} is not writable")


def create_exclusive(path: Path) -> None:
    """Create an empty file; fail if anything (a symlink too) already has that name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    os.close(os.open(path, flags, 0o666))


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary siblings of ``path`` that killed runs left (``.NAME.tmp-*``,
    ``.NAME.old-*``). Call it only while holding ``path``'s lock: then no live run owns them."""
    for tag in ("tmp", "old"):
        for p in path.parent.glob(f".{glob.escape(path.name)}.{tag}-*"):
            if re.fullmatch(rf"\.{re.escape(path.name)}\.{tag}-\d+-[0-9a-f]{{6}}", p.name):
                log.info("removing %s, left by a killed run", p)
                _remove(p)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a new, empty temporary file; on success rename it to ``path``, else remove it."""
    ensure_parent(path)
    tmp = tmp_sibling(path)
    try:
        create_exclusive(tmp)
        yield tmp
        share(tmp)  # a cache entry in a group's KMODEL_HOME: readable by the group
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise write_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: Path, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``path`` (whole) when the block succeeds.

    An existing ``path`` is replaced only if it is empty or ``replaceable(path)`` says kmodel
    wrote it; a user's folder is refused before anything runs. The new folder gets the
    usual permissions (as mkdir makes them under the umask).
    """
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputNotWritableError(path, "it exists and is not a folder",
                                     "remove it or choose another name")
    if path.is_dir() and any(path.iterdir()) and not replaceable(path):
        raise OutputNotWritableError(
            path, "the folder exists and holds files kmodel did not write",
            "choose a new folder (kmodel replaces only folders it wrote)")
    ensure_parent(path)
    tmp = tmp_sibling(path)
    try:
        os.mkdir(tmp, 0o777)  # exclusive; mode as the umask allows, like any new folder
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp
        old = None
        if path.exists():
            old = tmp_sibling(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(path, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_sha256(path: Path) -> str:
    """sha256 of a (large) file, cached in KMODEL_HOME by the file's identity.

    Many models predict on the same input; hashing it once (1.1 GB/s here) instead of once
    per model keeps provenance cheap. The cache key (size, mtime, ctime, inode) changes
    whenever the file is rewritten.
    """
    ident = f"{os.path.realpath(path)}|{file_signature(path)}"
    name = sha256_bytes(ident.encode())
    try:
        cached = (kmodel_home() / "hash-cache" / name).read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    digest = sha256_file(path)
    try:
        atomic_write_text(home_folder("hash-cache") / name, digest)
    except (OSError, OutputNotWritableError, HomeNotWritableError):
        pass  # a read-only home only costs speed
    return digest
