"""The HDF5 layout: the only module that imports h5py.

Input files:      /inputs/<name>  (N, *shape)   /metadata/id (N,)   [/targets/<name> (N, ...)]
Prediction files: /preds/<name>   (N, *shape)   /metadata/id (N,)   root attributes: provenance

Close to Kipoi's layout so its readers work. Datasets are chunked and resizable; ids are
fixed-length byte strings. Every dataset kmodel writes carries the sha256 of its values
(attribute ``kmodel_sha256``), computed as the values are written, and the file says so
(root attribute ``kmodel_values``): an edited value is found by reading the file again.
This module imports only numpy, h5py and the standard library, because the in-env runner
loads it by file path (nothing of kmodel is installed in model envs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SCHEMA_VERSION = 1
ROWS_DONE = "kmodel_rows_done"  # rows fully written; lets a partial file be resumed
COMPLETE = "kmodel_complete"
#: a dataset's attribute: sha256 of its values as stored (C order, little-endian numbers;
#: variable-length strings as 4-byte length + UTF-8 bytes each)
CHECKSUM = "kmodel_sha256"
#: a root attribute ("sha256"): every dataset of the file carries its CHECKSUM
VALUES = "kmodel_values"

# Chunks. A chunk is the unit HDF5 stores, indexes and reads: reading one row reads its whole
# chunk, and every chunk costs an index entry and a call into the I/O layer. Prediction files
# are written one batch at a time, so a chunk is one batch whenever that is between
# CHUNK_MIN and CHUNK_MAX bytes: each write then fills whole chunks, straight to disk. Larger
# batches are cut into CHUNK_MAX chunks (a 64 MB chunk wrote at half the speed of 1 MB ones
# here, and HDF5 refuses chunks over 4 GiB); smaller ones share CHUNK_MIN chunks, filled in
# the chunk cache (CHUNK_CACHE, which holds a few of them) before they are written (1,024-row
# batches of one float32 wrote 88 MB/s in 4 KB chunks). No compression: predictions are
# floats with little redundancy (gzip saves ~10% on them at a fraction of the write speed);
# h5repack can compress a finished file. tests/bench/bench_hdf5.py measures the choice.
CHUNK_MIN, CHUNK_MAX = 64 << 10, 1 << 20
CHUNK_CACHE = 4 * CHUNK_MAX


def chunk_len(batch: int, row_bytes: int, rows: int) -> int:
    """Rows per chunk for ``rows`` rows of ``row_bytes`` each, written ``batch`` at a time."""
    row_bytes = max(1, row_bytes)
    n = batch
    if batch * row_bytes > CHUNK_MAX:
        n = CHUNK_MAX // row_bytes
    elif batch * row_bytes < CHUNK_MIN:
        n = -(-CHUNK_MIN // row_bytes)
    return max(1, min(n, rows))


class LayoutError(ValueError):
    """The file is HDF5 but not laid out as kmodel (or Kipoi) files are; says what is wrong."""


class LengthError(LayoutError):
    """A dataset's rows and /metadata/id differ in number."""


class MissingIds(LayoutError):
    """The file has no /metadata/id (every kmodel file needs one id per row)."""


def as_ids(ids: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Ids as fixed-length bytes (fast to copy and compare), from bytes, str or integers
    (Kipoi writes int64 ids; h5py reads variable-length strings as objects)."""
    arr = np.asarray(ids)
    if arr.dtype.kind == "S":
        return arr
    if arr.size == 0:  # no rows: no dtype to go by
        return np.zeros(arr.shape, "S1")
    if arr.dtype.kind == "O":
        items = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in arr.ravel()]
        return np.array(items, dtype="S") if items else np.zeros(arr.shape, "S1")
    if arr.dtype.kind in "iub":
        arr = arr.astype(str)
    if arr.dtype.kind != "U":
        raise LayoutError(f"ids must be strings or integers, not {arr.dtype}")
    return np.char.encode(arr, "utf-8")


def id_hashes(ids: np.ndarray) -> np.ndarray:
    """A 64-bit hash (FNV-1a) of each id's bytes, vectorised: how a trained folder records
    its training rows (8 bytes a row; two different ids collide with odds of 2^-64)."""
    raw = np.ascontiguousarray(ids)
    if raw.dtype.kind != "S" or not len(raw):
        return np.zeros(0, np.uint64)
    width = raw.dtype.itemsize
    data = raw.view(np.uint8).reshape(len(raw), width)
    lengths = np.char.str_len(raw)
    h = np.full(len(raw), 0xCBF29CE484222325, np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(width):
            mixed = (h ^ data[:, j].astype(np.uint64)) * prime
            h = np.where(j < lengths, mixed, h)
    return h


def _value_bytes(values: np.ndarray) -> bytes | memoryview:
    """The bytes a checksum covers: the same however the rows are cut into batches."""
    if values.dtype.kind == "O":
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.ravel()]
        return b"".join(len(b).to_bytes(4, "little") + b for b in items)
    arr = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    return arr.reshape(-1).view(np.uint8).data if arr.size else b""


class Digests:
    """Running sha256 of datasets written front to back, a batch at a time."""

    def __init__(self) -> None:
        self.running: dict[str, Any] = {}

    def update(self, name: str, values: np.ndarray) -> None:
        self.running.setdefault(name, hashlib.sha256()).update(_value_bytes(values))

    def rehash(self, d: h5py.Dataset, rows: int) -> None:
        """Start ``d``'s digest from its first ``rows`` rows, read back (a resumed write)."""
        for lo, hi in _blocks(d, rows):
            self.update(d.name.lstrip("/"), d[lo:hi])

    def stamp(self, f: h5py.File) -> None:
        """Record every digest on its dataset (an empty one for datasets without rows) and
        say so on the file."""
        for name, d in _stored(f):
            d.attrs[CHECKSUM] = self.running.get(name, hashlib.sha256()).hexdigest()
        f.attrs[VALUES] = "sha256"


def _blocks(d: h5py.Dataset, rows: int | None = None, nbytes: int = 16 << 20
            ) -> Iterator[tuple[int, int]]:
    """Row ranges of about ``nbytes`` over the first ``rows`` rows (all) of ``d``."""
    n = int(d.shape[0]) if rows is None else rows
    row = max(1, d.dtype.itemsize * int(np.prod(d.shape[1:], dtype=np.int64)))
    step = max(1, nbytes // row)
    for lo in range(0, n, step):
        yield lo, min(lo + step, n)


def _stored(f: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    """Every dataset of the file that holds its own values (virtual ones do not)."""
    found: list[tuple[str, h5py.Dataset]] = []
    f.visititems(lambda name, obj: found.append((name, obj))
                 if isinstance(obj, h5py.Dataset) and not obj.is_virtual else None)
    return found


def values_problems(path: Path) -> list[str]:
    """Datasets of ``path`` whose values differ from the checksum recorded when kmodel wrote
    them (each read once, front to back); a finished kmodel prediction file without
    checksums (an older kmodel's) is one problem too. Files kmodel did not write, and
    unfinished ones, have nothing to check."""
    problems = []
    with h5py.File(path, "r", rdcc_nbytes=0) as f:
        if VALUES not in f.attrs:  # (an unfinished file has none yet: it is not done)
            return ["no value checksums (written by an older kmodel)"] if COMPLETE in f.attrs \
                else []
        for name, d in _stored(f):
            want = d.attrs.get(CHECKSUM)
            if want is None:
                problems.append(f"/{name} has no value checksum")
                continue
            digests = Digests()
            digests.update(name, np.empty(0, d.dtype))  # an empty dataset's digest too
            if d.ndim == 0:
                digests.update(name, np.asarray(d[()]))
            for lo, hi in _blocks(d) if d.ndim else ():
                digests.update(name, d[lo:hi])
            if digests.running[name].hexdigest() != (want.decode() if isinstance(want, bytes)
                                                     else str(want)):
                problems.append(f"/{name} holds other values than kmodel wrote (its checksum "
                                "differs)")
    return problems


#: files whose write failed: never closed or freed (HDF5 may crash doing either); the
#: process is expected to exit without cleanup (kmodel's CLI uses os._exit then)
_FAILED: list[h5py.File] = []


def check_room(path: Path, nbytes: int) -> None:
    """Raise OSError (ENOSPC or EFBIG, naming ``path``) if a file of about ``nbytes`` cannot
    be written there: HDF5 reports a failed write only when the file is closed, and then
    may crash, so kmodel checks before writing what it can."""
    import errno
    import os
    import resource

    need = int(nbytes * 1.05) + (1 << 16)  # chunk index and metadata
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and need > limit:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(path))
    st = os.statvfs(path.parent)
    if need > st.f_bavail * st.f_frsize:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@contextlib.contextmanager
def _writing(path: Path, mode: str) -> Iterator[h5py.File]:
    """h5py.File for writing, flushed before it is closed so that a failed write (a full
    disk, ulimit -f) raises OSError; the file is then left open rather than closed, because
    HDF5 can crash closing it."""
    f = h5py.File(path, mode)
    try:
        yield f
        f.flush()
    except OSError:
        _FAILED.append(f)
        raise
    f.close()


def write_table(path: Path, groups: Mapping[str, Mapping[str, np.ndarray]],
                ids: Sequence[Any] | np.ndarray, attrs: Mapping[str, Any] | None = None,
                chunk_rows: int = 8192) -> None:
    """Write whole arrays, e.g. ``{"inputs": {"x": X}, "targets": {"y": y}}``, plus ids.

    The file is built in memory and written with plain file I/O, so a full disk or a file
    size limit is an OSError here, never a crash inside HDF5 (which reports failed writes
    only when it closes a file, and may crash doing so)."""
    ids = as_ids(ids)
    with h5py.File(f"in-memory-{id(groups)}", "w", driver="core", backing_store=False) as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for group, arrays in groups.items():
            for name, arr in arrays.items():
                if len(arr) != len(ids):
                    raise ValueError(f"{group}/{name} has {len(arr)} rows, ids have {len(ids)}")
                f.create_dataset(f"{group}/{name}", data=arr, maxshape=(None, *arr.shape[1:]),
                                 chunks=(min(chunk_rows, max(len(arr), 1)), *arr.shape[1:]))
        f.create_dataset("metadata/id", data=ids, maxshape=(None,),
                         chunks=(min(chunk_rows, max(len(ids), 1)),))
        digests = Digests()
        for name, d in _stored(f):
            digests.update(name, d[()])  # as stored, from memory
        digests.stamp(f)
        f.flush()
        image = f.id.get_file_image()
    with open(path, "wb") as out:
        out.write(image)


class TableWriter:
    """Writes an input file front to back (e.g. from a table read in batches): each
    dataset, made with ``create``, takes its rows in order and is hashed as it goes."""

    def __init__(self, path: Path, rows: int, attrs: Mapping[str, Any]) -> None:
        self.rows, self.digests = rows, Digests()
        self.done: dict[str, int] = {}
        self.f = h5py.File(path, "w")
        self.f.attrs["schema_version"] = SCHEMA_VERSION
        self.f.attrs.update(dict(attrs))

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.digests.stamp(self.f)
        self.f.close()

    def create(self, name: str, dtype: Any, shape: tuple[int, ...] = ()) -> None:
        self.f.create_dataset(name, shape=(self.rows, *shape), dtype=dtype,
                              chunks=(max(1, min(self.rows, 8192)), *shape))
        self.done[name] = 0

    def __contains__(self, name: str) -> bool:
        return name in self.done

    def write(self, name: str, values: np.ndarray) -> None:
        """The next ``len(values)`` rows of dataset ``name``."""
        d, lo = self.f[name], self.done[name]
        values = np.asarray(values, dtype=d.dtype)
        d[lo:lo + len(values)] = values
        self.digests.update(name, values)
        self.done[name] = lo + len(values)


Schema = dict[str, tuple[str, tuple[int, ...]]]


def _ids(f: h5py.File) -> h5py.Dataset:
    ids = f.get("metadata/id")
    if not isinstance(ids, h5py.Dataset):
        raise MissingIds("no /metadata/id")
    if ids.ndim != 1:
        raise LayoutError(f"/metadata/id has shape {ids.shape}; write one id per row (N,)")
    if ids.dtype.kind not in "SUOiu":
        raise LayoutError(f"/metadata/id has dtype {ids.dtype}; write strings or integers")
    return ids


def _datasets(f: h5py.File, group: str, numeric: bool = True) -> dict[str, h5py.Dataset]:
    """The datasets of ``/group``, each checked to hold rows of numbers."""
    g = f.get(group)
    if g is None:
        return {}
    if isinstance(g, h5py.Dataset):
        if group == "preds":  # Kipoi writes a single /preds dataset
            g = {"preds": g}
        else:
            raise LayoutError(f"/{group} is a dataset; write a group /{group}/<name>")
    out = {}
    for name, d in g.items():
        if not isinstance(d, h5py.Dataset):
            continue
        if d.ndim == 0:
            raise LayoutError(f"/{group}/{name} is a scalar; write one row per id")
        if d.dtype.fields is not None or d.dtype.kind in "OV" or (
                numeric and d.dtype.kind not in "biuf"):
            kind = "a compound dtype" if d.dtype.fields else f"dtype {d.dtype}"
            raise LayoutError(f"/{group}/{name} has {kind}; write plain arrays of numbers")
        out[name] = d
    return out


#: on a 2-D dataset stored columns first, (columns, rows): the composer's virtual input,
#: whose columns are 1-D datasets of separate files, listed (JSON [[file, dataset], ...])
COLUMNS_FIRST = "kmodel_columns_first"
COLUMNS = "kmodel_columns"


def _rows(d: h5py.Dataset) -> int:
    return int(d.shape[1] if d.attrs.get(COLUMNS_FIRST) else d.shape[0])


def _row_shape(d: h5py.Dataset) -> tuple[int, ...]:
    return (int(d.shape[0]),) if d.attrs.get(COLUMNS_FIRST) else tuple(d.shape[1:])


class _Columns:
    """Reads rows of a columns-first virtual dataset from its source files directly: one
    slab per file per batch. Each file is read once, front to back, so without a chunk
    cache: 20 open files' caches fragment the heap until it holds every byte read (160 MB
    for 2M rows x 20 columns, through HDF5's virtual-dataset reads too)."""

    def __init__(self, d: h5py.Dataset) -> None:
        self.dtype = d.dtype
        self.files: dict[str, h5py.File] = {}
        self.sources = []
        for file, name in json.loads(d.attrs[COLUMNS]):
            if file not in self.files:
                self.files[file] = h5py.File(file, "r", rdcc_nbytes=0)
            self.sources.append(self.files[file][name])

    def __getitem__(self, rows: slice) -> np.ndarray:
        out = np.empty((len(range(*rows.indices(self.sources[0].shape[0]))),
                        len(self.sources)), self.dtype)
        for k, source in enumerate(self.sources):
            out[:, k] = source[rows]
        return out

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _reader(d: h5py.Dataset) -> Any:
    """Something to slice rows [lo:hi] of, (rows, ...), whichever way ``d`` is stored."""
    return _Columns(d) if d.attrs.get(COLUMNS_FIRST) and COLUMNS in d.attrs else d


def describe(path: Path, group: str = "inputs") -> tuple[Schema, int]:
    """``({name: (dtype, per-row shape)}, rows)`` of one group; raises LayoutError."""
    with h5py.File(path, "r") as f:
        n_ids = len(_ids(f))
        datasets = _datasets(f, group, numeric=False)  # the caller names the dtype it wants
        out = {n: (str(d.dtype), _row_shape(d)) for n, d in datasets.items()}
        rows = {n: _rows(d) for n, d in datasets.items()}
    if set(rows.values()) - {n_ids}:
        raise LengthError(f"/{group} datasets and /metadata/id differ in length: "
                          f"{dict(rows, **{'metadata/id': n_ids})}")
    return out, n_ids


def id_dtype(path: Path) -> np.dtype:
    with h5py.File(path, "r") as f:
        dtype: np.dtype = f["metadata/id"].dtype
        return dtype


def read_group(path: Path, group: str, names: Sequence[str] | None = None,
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Whole datasets of a group, and the ids (raw, as stored); LayoutError if malformed."""
    with h5py.File(path, "r") as f:
        ids = _ids(f)[()]
        datasets = _datasets(f, group)
        if group not in f:
            raise LayoutError(f"no /{group} group")
        missing = [n for n in names or () if n not in datasets]
        if missing:
            raise LayoutError(f"no /{group}/{missing[0]} (found {sorted(datasets) or 'none'})")
        arrays = {n: datasets[n][()] for n in (names or list(datasets))}
    for n, a in arrays.items():
        if len(a) != len(ids):
            raise LengthError(f"/{group}/{n} has {len(a)} rows but /metadata/id has {len(ids)}")
    return arrays, ids


def is_prediction(path: Path) -> bool:
    """A prediction file kmodel wrote (it may be replaced by a new prediction)."""
    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return "model" in f.attrs and "preds" in f and "inputs" not in f


def is_example_data(path: Path) -> bool:
    """An input file `kmodel data` wrote."""
    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return "dataset" in f.attrs and "model" not in f.attrs


def read_attrs(path: Path) -> dict[str, Any]:
    """Root attributes as Python values (scalars unwrapped, arrays as lists)."""
    with h5py.File(path, "r") as f:
        return {k: (v.item() if getattr(v, "size", 0) == 1 and hasattr(v, "item") else
                    v.tolist() if hasattr(v, "tolist") else v) for k, v in f.attrs.items()}


def dataset_attrs(path: Path, name: str) -> dict[str, Any]:
    """A dataset's attributes (e.g. the classes of a prediction's columns)."""
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f[name].attrs.items()}


def set_attrs(path: Path, attrs: Mapping[str, Any], dataset: str | None = None) -> None:
    """Root attributes (or a dataset's)."""
    with _writing(path, "r+") as f:
        target = f if dataset is None else f[dataset]
        for k, v in attrs.items():
            target.attrs[k] = v


def iter_batches(path: Path, names: Sequence[str], batch_size: int, start: int = 0,
                 stop: int | None = None, group: str = "inputs",
                 ) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(offset, ids, {name: rows})`` for consecutive batches of /<group>, rows
    [start, stop)."""
    with h5py.File(path, "r") as f:
        ids = f["metadata/id"]
        datasets = {n: _reader(f[f"{group}/{n}"]) for n in names}
        n = len(ids) if stop is None else min(stop, len(ids))
        try:
            for lo in range(start, n, batch_size):
                hi = min(lo + batch_size, n)
                yield lo, ids[lo:hi], {k: d[lo:hi] for k, d in datasets.items()}
        finally:
            for d in datasets.values():
                if isinstance(d, _Columns):
                    d.close()


class PredictionWriter:
    """Streams prediction batches into /preds/<name> and /metadata/id.

    Datasets are created at full length up front (resizable). Every ``checkpoint_every``
    seconds the root attribute ``kmodel_rows_done`` is updated and the file flushed, so a
    killed run can resume from its last checkpoint (a flush per batch would cost ~0.5 ms
    each, doubling the per-row cost of cheap models).
    """

    def __init__(self, path: Path, outputs: Mapping[str, tuple[str, tuple[int, ...] | None]],
                 rows: int, id_dtype: np.dtype, batch: int,
                 attrs: Mapping[str, Any] | None = None, resume: bool = False,
                 checkpoint_every: float = 0.5) -> None:
        self.path, self.rows, self.batch = path, rows, batch
        self.dtypes = {name: dtype for name, (dtype, _) in outputs.items()}
        self.digests = Digests()
        if resume:
            self.f = h5py.File(path, "r+", rdcc_nbytes=CHUNK_CACHE)
            self.rows_done = int(self.f.attrs.get(ROWS_DONE, 0))
            for _, d in _stored(self.f):  # the rows kept, read back once
                self.digests.rehash(d, self.rows_done)
        else:
            row = np.dtype(id_dtype).itemsize + sum(
                np.dtype(dtype).itemsize * int(np.prod(shape or (1,), dtype=np.int64))
                for dtype, shape in outputs.values())
            check_room(path, rows * row)  # a full disk: a clear error now, not a crash later
            # exclusive: never over a file or through a link
            self.f = h5py.File(path, "x", rdcc_nbytes=CHUNK_CACHE)
            self.rows_done = 0
            self.f.attrs["schema_version"] = SCHEMA_VERSION
            for k, v in (attrs or {}).items():
                self.f.attrs[k] = v
            self.f.attrs[ROWS_DONE] = 0
            self.f.require_group("preds")
            for name, (dtype, shape) in outputs.items():
                if shape is not None:  # a free shape: made with the first batch
                    self._create(name, dtype, shape)
            self.f.create_dataset("metadata/id", shape=(rows,), dtype=id_dtype,
                                  maxshape=(None,),
                                  chunks=(chunk_len(batch, id_dtype.itemsize, rows),))
        self.checkpoint_every, self.checkpointed = checkpoint_every, time.monotonic()
        self.preds = {name: self.f[f"preds/{name}"] for name in self.f["preds"]}
        self.ids = self.f["metadata/id"]

    def _create(self, name: str, dtype: str, shape: tuple[int, ...]) -> h5py.Dataset:
        row = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
        return self.f.create_dataset(f"preds/{name}", shape=(self.rows, *shape), dtype=dtype,
                                     maxshape=(None, *shape),
                                     chunks=(chunk_len(self.batch, row, self.rows), *shape))

    def write(self, offset: int, ids: np.ndarray, preds: Mapping[str, np.ndarray]) -> None:
        """Rows ``offset`` on, straight after the rows written so far (each dataset's
        checksum runs over its rows in order)."""
        if offset != self.rows_done:
            raise ValueError(f"rows are written in order: {offset} after {self.rows_done}")
        hi = offset + len(ids)
        for name, values in preds.items():
            if name not in self.preds:
                self.preds[name] = self._create(name, self.dtypes[name], values.shape[1:])
            d = self.preds[name]
            values = np.asarray(values, dtype=d.dtype)  # what is stored is what is hashed
            d[offset:hi] = values
            self.digests.update(f"preds/{name}", values)
        ids = np.asarray(ids, dtype=self.ids.dtype)
        self.ids[offset:hi] = ids
        self.digests.update("metadata/id", ids)
        self.rows_done = hi
        if time.monotonic() - self.checkpointed >= self.checkpoint_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Record the rows written so far and flush: a killed run resumes from here."""
        self.f.attrs[ROWS_DONE] = self.rows_done
        self.f.flush()
        self.checkpointed = time.monotonic()

    def close(self, complete: bool) -> None:
        self.f.attrs[ROWS_DONE] = self.rows_done
        if complete:
            for name, dtype in self.dtypes.items():  # no rows: a free shape is no shape
                if name not in self.preds:
                    self.preds[name] = self._create(name, dtype, ())
            self.digests.stamp(self.f)
            self.f.attrs[COMPLETE] = True
        self.f.close()


def concat(sources: Sequence[Path], path: Path, attrs: Mapping[str, Any],
           batch: int, block: int = 1 << 20) -> None:
    """Write ``path`` (which must not exist) with /preds/* and /metadata/id of ``sources``
    one after the other, streamed ``block`` rows at a time, and the root ``attrs``; chunked
    as a run with ``batch`` would have written it."""
    with h5py.File(sources[0], "r") as first:
        layout = {name: (d.dtype, d.shape[1:]) for name, d in first["preds"].items()}
        id_dtype = first["metadata/id"].dtype
    rows = size = 0
    for src in sources:
        with h5py.File(src, "r") as f:
            rows += len(f["metadata/id"])
            size += f["metadata/id"].nbytes + sum(d.nbytes for d in f["preds"].values())
    check_room(path, size)
    with _writing(path, "x") as out:
        out.attrs["schema_version"] = SCHEMA_VERSION
        for k, v in attrs.items():
            out.attrs[k] = v
        targets = {}
        for name, (dtype, shape) in layout.items():
            chunk = chunk_len(batch, dtype.itemsize * int(np.prod(shape, dtype=np.int64)), rows)
            targets[name] = out.create_dataset(f"preds/{name}", shape=(rows, *shape),
                                               dtype=dtype, maxshape=(None, *shape),
                                               chunks=(chunk, *shape))
        ids = out.create_dataset("metadata/id", shape=(rows,), dtype=id_dtype, maxshape=(None,),
                                 chunks=(chunk_len(batch, id_dtype.itemsize, rows),))
        offset, digests = 0, Digests()
        for src in sources:
            with h5py.File(src, "r") as f:
                n = len(f["metadata/id"])
                for lo in range(0, n, block):
                    hi = min(lo + block, n)
                    for name, ds in targets.items():
                        values = np.asarray(f[f"preds/{name}"][lo:hi], dtype=ds.dtype)
                        ds[offset + lo:offset + hi] = values
                        digests.update(f"preds/{name}", values)
                    values = np.asarray(f["metadata/id"][lo:hi], dtype=ids.dtype)
                    ids[offset + lo:offset + hi] = values
                    digests.update("metadata/id", values)
                offset += n
        digests.stamp(out)
        out.attrs[ROWS_DONE] = rows
        out.attrs[COMPLETE] = True


def read_ids(path: Path) -> np.ndarray:
    """All ids of a file, as bytes."""
    with h5py.File(path, "r") as f:
        return as_ids(_ids(f)[()])


def read_column(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        values: np.ndarray = f[name][()]
    return values


def count_ids(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return len(_ids(f))


def same_ids(a: Path, b: Path, *, trusted: bool = False, block: int = 1 << 20,
             probe: int = 4096) -> bool:
    """True if both files hold the same ids in the same order.

    ``trusted``: the caller knows both hold one input's ids in its order (whole predictions
    of the same rows of one input): then three probes of ``probe`` ids (start, middle, end)
    confirm it. Other files are compared whole, ``block`` ids at a time, so memory stays
    bounded."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        ia, ib = _ids(fa), _ids(fb)
        n = len(ia)
        if n != len(ib):
            return False
        spans = ([(0, probe), (max(0, n // 2 - probe // 2), n // 2 + probe // 2),
                  (max(0, n - probe), n)] if trusted else
                 [(lo, lo + block) for lo in range(0, n, block)])
        return all(np.array_equal(as_ids(ia[lo:hi]), as_ids(ib[lo:hi])) for lo, hi in spans)


def preds_layout(path: Path) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """The prediction datasets of ``path`` (sorted by name; Kipoi's single /preds too):
    (dataset path, shape, dtype), each checked to hold numbers, one row per id."""
    with h5py.File(path, "r") as f:
        n = len(_ids(f))
        found = _datasets(f, "preds")
        out = []
        for name in sorted(found):
            d = found[name]
            if d.shape[0] != n:
                raise LengthError(f"/preds/{name} has {d.shape[0]} rows but /metadata/id has "
                                  f"{n}")
            out.append((d.name.lstrip("/"), tuple(d.shape), d.dtype))
    return out


def write_virtual(path: Path, rows: int, columns: Sequence[tuple[Path, str]], dtype: Any,
                  ids_from: Path, extra: Mapping[str, tuple[Path, str]] | None = None) -> None:
    """A small file whose /inputs/x is a virtual dataset: the 1-D ``columns`` (file,
    dataset), each read from its own file when read (nothing is copied); stored columns
    first, so that a batch of rows is one slab of each file. /metadata/id and ``extra``
    datasets (e.g. ``{"targets/y": (file, "targets/y")}``) are mapped from their files too.
    All sources must have ``rows`` rows, in the same order."""
    def source(file: Path, name: str) -> tuple[Any, tuple[int, ...], np.dtype]:
        with h5py.File(file, "r") as f:
            d = f[name]
            return (h5py.VirtualSource(str(Path(file).resolve()), name, shape=d.shape,
                                       dtype=d.dtype), tuple(d.shape), d.dtype)

    layout = h5py.VirtualLayout(shape=(len(columns), rows), dtype=dtype)
    for k, (file, name) in enumerate(columns):
        vs, shape, _ = source(file, name)
        if shape != (rows,):
            raise LayoutError(f"{file}: /{name} has shape {shape}, not ({rows},)")
        layout[k, :] = vs
    with _writing(path, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.create_virtual_dataset("inputs/x", layout)
        f["inputs/x"].attrs[COLUMNS_FIRST] = True
        f["inputs/x"].attrs[COLUMNS] = json.dumps(
            [[str(Path(file).resolve()), name] for file, name in columns])
        for target, (file, name) in {"metadata/id": (ids_from, "metadata/id"),
                                     **(extra or {})}.items():
            vs, shape, sdtype = source(file, name)
            one = h5py.VirtualLayout(shape=shape, dtype=sdtype)
            one[...] = vs
            f.create_virtual_dataset(target, one)


def columns_of(path: Path, group: str = "preds") -> list[tuple[str, str, int | None]]:
    """Every column of the datasets of ``/group``: (dataset key, dataset path, column index
    or None for a 1-D dataset), datasets sorted by key (Kipoi's single /preds: key preds)."""
    with h5py.File(path, "r") as f:
        found = []
        for key, d in sorted(_datasets(f, group).items()):
            width = int(np.prod(d.shape[1:]))
            found += [(key, d.name.lstrip("/"), None if d.ndim == 1 else j)
                      for j in range(width)]
    return found


def write_aligned(source: Path, target: Path, rows: np.ndarray | None,
                  columns: Sequence[tuple[str, int | None]], block: int = 1 << 20
                  ) -> list[str]:
    """``target``: the ``columns`` of ``source`` (dataset path, column index or None) as
    1-D datasets ``c0``, ``c1``, ... with rows in the order ``rows`` (indices into
    ``source``; None: as stored). For a file whose ids are not in the reference's order, or
    whose rows have more than one value. Each column is read front to back, ``block`` rows
    at a time, and placed in memory by the inverse permutation (computed once): one
    contiguous read and one write per column, never a scattered read. Returns the new
    datasets' names, in the order of ``columns``."""
    with h5py.File(source, "r", rdcc_nbytes=0) as f, _writing(target, "x") as out:
        n = len(f["metadata/id"]) if rows is None else len(rows)
        if rows is not None:
            inverse = np.full(len(f["metadata/id"]), -1, np.int64)
            inverse[rows] = np.arange(n)
        names = []
        for k, (name, col) in enumerate(columns):
            d = f[name]
            values = np.empty(n, d.dtype)
            for lo in range(0, d.shape[0], block):
                part = d[lo:lo + block]
                part = part.reshape(len(part), -1)[:, col] if col is not None else part
                if rows is None:
                    values[lo:lo + len(part)] = part
                else:
                    where = inverse[lo:lo + len(part)]
                    keep = where >= 0  # rows the reference does not hold are dropped
                    values[where[keep]] = part[keep]
            out.create_dataset(f"c{k}", data=values, chunks=(max(1, min(1 << 18, n)),))
            names.append(f"c{k}")
    return names
