"""Small filesystem helpers: hashing, atomic writes, the kmodel home folder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kmodel.errors import OutputNotWritableError


def kmodel_home() -> Path:
    """Where built envs and caches live: $KMODEL_HOME, else the user's cache dir."""
    if home := os.environ.get("KMODEL_HOME"):
        return Path(home).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kmodel"


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


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on failure remove it."""
    ensure_parent(path)
    tmp = tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``path`` (whole) when the block succeeds."""
    ensure_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = tmp_sibling(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_sha256(path: Path) -> str:
    """sha256 of a (large) file, cached in KMODEL_HOME by the file's identity and mtime.

    Many models predict on the same input; hashing it once (1.1 GB/s here) instead of once
    per model keeps provenance cheap. The cache key changes whenever the file is rewritten.
    """
    st = path.stat()
    ident = "|".join(map(str, (path.resolve(), st.st_dev, st.st_ino, st.st_size,
                               st.st_mtime_ns, st.st_ctime_ns)))
    entry = kmodel_home() / "hash-cache" / sha256_bytes(ident.encode())
    try:
        cached = entry.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    digest = sha256_file(path)
    try:
        atomic_write_text(entry, digest)
    except (OSError, OutputNotWritableError):
        pass  # a read-only home only costs speed
    return digest
