"""Value checksums of the HDF5 files kmodel writes, checked before their values are used.

Every dataset kmodel writes carries the sha256 of its values, computed as they are written
(kmodel/io/hdf5.py). Checking a file reads it once; a file found intact is remembered in
KMODEL_HOME by its identity (size, mtime, ctime, inode: any rewrite changes it), so
``kmodel status`` and the composer read each output once, not at every call.
"""

from __future__ import annotations

from pathlib import Path

from kmodel._fs import atomic_write_text, file_signature, kmodel_home, sha256_bytes
from kmodel.errors import OutputNotWritableError, ValuesChangedError
from kmodel.io import hdf5


def _entry(path: Path) -> Path:
    ident = f"values|{path.resolve()}|{file_signature(path)}"
    return kmodel_home() / "hash-cache" / sha256_bytes(ident.encode())


def problems(path: Path) -> list[str]:
    """What is wrong with ``path``'s values (empty: each dataset matches its checksum, or the
    file is not kmodel's). OSError and ValueError (not HDF5) pass through."""
    entry = _entry(path)
    if entry.is_file():
        return []
    found = hdf5.values_problems(path)
    if not found:
        try:
            atomic_write_text(entry, "intact\n")
        except (OSError, OutputNotWritableError):
            pass  # a read-only home only costs speed
    return found


def check(path: Path) -> None:
    """Raise ValuesChangedError naming ``path`` and its first changed dataset."""
    if found := problems(path):
        raise ValuesChangedError(f"{path}: {found[0]}; make it again (kmodel run remakes "
                                 "the outputs of a composition), or restore the original")


__all__ = ["check", "problems"]
