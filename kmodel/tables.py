"""`kmodel data import`: a user's table (CSV, Parquet, .npy, .npz) as a kmodel input file.

    /inputs/x (N, features)   /targets/<name> (N,)   /metadata/id (N,)

Tables are read in batches (pyarrow's streaming CSV reader, Parquet row groups, a memory-
mapped .npy), so memory stays bounded whatever the table's size: a first pass reads the id
column alone (its widest id, and duplicates: refused), the second writes the file. Feature
columns must be numbers; a column that is not is named, with how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kmodel._fs import atomic_path, check_input_file, guard_output
from kmodel.errors import IdAlignmentError, InputSchemaError, ToolMissingError, UsageError

BATCH_ROWS = 1 << 16
FORMATS = (".csv", ".tsv", ".parquet", ".npy", ".npz")


@dataclass(frozen=True)
class Imported:
    path: Path
    rows: int
    features: list[str]
    targets: list[str]


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError:
        raise ToolMissingError("importing CSV or Parquet tables needs pyarrow; pip install "
                               "pyarrow") from None
    return pyarrow


def _batches(table: Path, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """The table's rows in batches: {column: numpy array} (only ``columns`` when given)."""
    suffix = table.suffix.lower()
    if suffix in (".npy", ".npz"):
        yield from _numpy_batches(table, columns)
        return
    pa = _pyarrow()
    try:
        if suffix == ".parquet":
            reader = pa.parquet.ParquetFile(table).iter_batches(BATCH_ROWS, columns=columns)
        else:
            opts = pa.csv.ConvertOptions(include_columns=list(columns) if columns else None)
            parse = pa.csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            reader = pa.csv.open_csv(table, parse_options=parse, convert_options=opts,
                                     read_options=pa.csv.ReadOptions(block_size=1 << 24))
        for batch in reader:
            yield {name: batch.column(i).to_numpy(zero_copy_only=False)
                   for i, name in enumerate(batch.schema.names)}
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        first = str(e).splitlines()[0]
        raise InputSchemaError(f"{table}: not a readable {suffix[1:]} table ({first})") from None


def _numpy_batches(table: Path, columns: Sequence[str] | None) -> Iterator[dict[str, Any]]:
    """A .npy matrix (columns named by their index) or a .npz of 1-D arrays by name."""
    try:
        if table.suffix.lower() == ".npy":
            arr = np.load(table, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 2:
                raise InputSchemaError(f"{table}: an array of shape {arr.shape}; a .npy table "
                                       "is a matrix (rows, columns)")
            names = [str(j) for j in range(arr.shape[1])]
            for lo in range(0, len(arr), BATCH_ROWS):
                yield {n: np.asarray(arr[lo:lo + BATCH_ROWS, j]) for j, n in enumerate(names)
                       if columns is None or n in columns}
            return
        with np.load(table, allow_pickle=False) as npz:
            arrays = {n: npz[n] for n in npz.files if columns is None or n in columns}
    except ValueError as e:
        raise InputSchemaError(f"{table}: not a numpy table ({e}); give arrays of numbers "
                               "(no pickles)") from None
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        raise InputSchemaError(f"{table}: its arrays differ in length ({sorted(lengths)})")
    for lo in range(0, lengths.pop() if lengths else 0, BATCH_ROWS):
        yield {n: a[lo:lo + BATCH_ROWS] for n, a in arrays.items()}


def _columns(table: Path) -> list[str]:
    """The table's column names."""
    suffix = table.suffix.lower()
    if suffix == ".npz":
        with np.load(table, allow_pickle=False) as npz:
            return list(npz.files)
    if suffix == ".npy":
        return [str(j) for j in range(np.load(table, mmap_mode="r").shape[1])]
    pa = _pyarrow()
    try:
        if suffix == ".parquet":
            return list(pa.parquet.ParquetFile(table).schema_arrow.names)
        parse = pa.csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        return list(pa.csv.open_csv(table, parse_options=parse).schema.names)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputSchemaError(f"{table}: not a readable {suffix[1:]} table "
                               f"({str(e).splitlines()[0]})") from None


def _ids(values: np.ndarray) -> np.ndarray:
    """Ids as bytes (numbers written as text)."""
    if values.dtype.kind in "iu":
        return np.char.encode(values.astype(str), "utf-8")
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        return np.char.encode(values.astype(np.int64).astype(str), "utf-8")
    return np.char.encode(np.asarray(values, dtype=str), "utf-8")


def _scan_ids(table: Path, id_column: str | None) -> tuple[int, int]:
    """Rows and the widest id, after checking the ids are unique."""
    from kmodel.io.hdf5 import id_hashes

    hashes, rows, width = [], 0, 1
    for batch in _batches(table, [id_column] if id_column else None):
        n = len(next(iter(batch.values()))) if batch else 0
        if id_column is not None:
            ids = _ids(batch[id_column])
            if len(ids) and (np.char.str_len(ids) == 0).any():
                raise InputSchemaError(f"{table}: column {id_column!r} has an empty id; give "
                                       "every row an id")
            width = max(width, ids.dtype.itemsize)
            hashes.append(id_hashes(ids))
        rows += n
    if id_column is not None and hashes:
        every = np.sort(np.concatenate(hashes))
        if (every[1:] == every[:-1]).any():
            raise IdAlignmentError(f"{table}: column {id_column!r} holds duplicated ids; each "
                                   "row needs a unique id (--id names the id column)")
    return rows, width


def _check_columns(table: Path, found: list[str], id_column: str | None,
                   targets: Sequence[str], features: Sequence[str] | None) -> list[str]:
    """The feature columns, after checking every named column exists."""
    for what, names in (("id", [id_column] if id_column else []), ("target", targets),
                        ("feature", features or [])):
        if missing := [n for n in names if n not in found]:
            raise InputSchemaError(f"{table}: no {what} column {missing[0]!r} (columns: "
                                   f"{', '.join(found[:20])}{'…' if len(found) > 20 else ''})")
    chosen = list(features) if features else [
        c for c in found if c != id_column and c not in targets]
    if not chosen:
        raise InputSchemaError(f"{table}: no feature columns left besides the id and targets")
    return chosen


def import_table(table: Path, output: Path, *, id_column: str | None = None,
                 targets: Sequence[str] = (), features: Sequence[str] | None = None,
                 dtype: str = "float32", input_name: str = "x") -> Imported:
    """Write ``output`` from ``table``: its feature columns as /inputs/<input_name>, its
    ``targets`` columns as /targets/<name>, ``id_column`` as /metadata/id (without one,
    rows are numbered: row-0, row-1, ...)."""
    from kmodel.io import hdf5

    check_input_file(table)
    if table.suffix.lower() not in FORMATS:
        raise UsageError(f"{table}: a table is one of {', '.join(FORMATS)} (by its name)")
    guard_output(output, [table], replaceable=hdf5.is_example_data)
    found = _columns(table)
    chosen = _check_columns(table, found, id_column, targets, features)
    rows, width = _scan_ids(table, id_column)
    if rows == 0:
        raise InputSchemaError(f"{table}: no rows")
    width = max(width, len(f"row-{rows}")) if id_column is None else width
    attrs = {"dataset": "imported", "source": table.name, "features": ",".join(chosen)}
    with atomic_path(output) as tmp, hdf5.TableWriter(tmp, rows, attrs) as out:
        out.create(f"inputs/{input_name}", dtype, (len(chosen),))
        out.create("metadata/id", f"S{width}")
        at = 0
        wanted = [*chosen, *targets, *([id_column] if id_column else [])]
        for batch in _batches(table, wanted):
            n = len(next(iter(batch.values())))
            out.write(f"inputs/{input_name}", _features(table, batch, chosen, dtype))
            for name in targets:
                values = _numbers(table, batch[name], name, "target")
                if f"targets/{name}" not in out:
                    out.create(f"targets/{name}",
                               np.int64 if values.dtype.kind in "iub" else np.float64)
                out.write(f"targets/{name}", values)
            out.write("metadata/id", _ids(batch[id_column]) if id_column else np.char.encode(
                np.char.add("row-", np.arange(at, at + n).astype(str)), "ascii"))
            at += n
    return Imported(output, rows, chosen, list(targets))


def _numbers(table: Path, values: np.ndarray, name: str, what: str) -> np.ndarray:
    if values.dtype.kind not in "biuf":
        example = next((v for v in values[:100] if not _is_number(v)), values[0])
        raise InputSchemaError(f"{table}: {what} column {name!r} is not numeric (e.g. "
                               f"{str(example)[:40]!r}); encode it as numbers, or leave it out "
                               "(--features)")
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise InputSchemaError(f"{table}: {what} column {name!r} has missing values (row "
                               f"{int(np.argmax(np.isnan(values)))} of a batch); fill or drop "
                               "those rows")
    return values


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _features(table: Path, batch: dict[str, np.ndarray], chosen: list[str], dtype: str
              ) -> np.ndarray:
    return np.column_stack([_numbers(table, batch[c], c, "feature").astype(dtype)
                            for c in chosen])


__all__ = ["FORMATS", "Imported", "import_table"]
