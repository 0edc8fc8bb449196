"""The HDF5 layout: property tests for the streaming writer and the readers."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kmodel.io import hdf5

dtypes = st.sampled_from(["float32", "float64", "int32", "int64", "uint8", "bool"])


@st.composite
def tables(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], np.ndarray, list[int]]:
    rows = draw(st.integers(1, 60))
    n_out = draw(st.integers(1, 3))
    arrays = {}
    for i in range(n_out):
        shape = draw(st.lists(st.integers(1, 4), max_size=2))
        arrays[f"out{i}"] = draw(hnp.arrays(draw(dtypes), (rows, *shape)))
    ids = draw(st.lists(st.text(min_size=1, max_size=6), min_size=rows, max_size=rows,
                        unique=True))
    cuts = sorted(draw(st.sets(st.integers(1, rows - 1), max_size=5))) if rows > 1 else []
    return arrays, hdf5.as_ids(ids), cuts


@settings(max_examples=60, deadline=None)
@given(table=tables(), chunk=st.integers(1, 70))
def test_streamed_writes_read_back_exactly(table: tuple, chunk: int) -> None:  # type: ignore[type-arg]
    arrays, ids, cuts = table
    rows = len(ids)
    schema = {k: (str(v.dtype), v.shape[1:]) for k, v in arrays.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.h5"
        writer = hdf5.PredictionWriter(path, schema, rows, ids.dtype, chunk, {"model": "m"})
        bounds = [0, *cuts, rows]
        for lo, hi in itertools.pairwise(bounds):
            writer.write(lo, ids[lo:hi], {k: v[lo:hi] for k, v in arrays.items()})
        writer.close(complete=True)
        back, back_ids = hdf5.read_group(path, "preds")
        attrs = hdf5.read_attrs(path)
        found, n = hdf5.describe(path, "preds")
    assert np.array_equal(back_ids, ids)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype
        assert np.array_equal(back[k], v, equal_nan=v.dtype.kind == "f")
    assert found == {k: (d, tuple(s)) for k, (d, s) in schema.items()} and n == rows
    assert attrs[hdf5.ROWS_DONE] == rows and attrs[hdf5.COMPLETE] and attrs["model"] == "m"


def test_resumed_writer_continues_where_it_stopped(tmp_path: Path) -> None:
    ids = hdf5.as_ids([f"r{i}" for i in range(10)])
    y = np.arange(10, dtype=np.float32)
    w = hdf5.PredictionWriter(tmp_path / "p.h5", {"y": ("float32", ())}, 10, ids.dtype, 4)
    w.write(0, ids[:4], {"y": y[:4]})
    w.close(complete=False)
    w = hdf5.PredictionWriter(tmp_path / "p.h5", {}, 10, ids.dtype, 4, resume=True)
    assert w.rows_done == 4
    w.write(4, ids[4:], {"y": y[4:]})
    w.close(complete=True)
    with h5py.File(tmp_path / "p.h5") as f:
        assert np.array_equal(f["preds/y"][()], y) and f["preds/y"].maxshape == (None,)


def test_as_ids_accepts_ints_and_text() -> None:
    assert list(hdf5.as_ids([1, 22])) == [b"1", b"22"]
    assert list(hdf5.as_ids(["é", "b"])) == ["é".encode(), b"b"]


@given(batch=st.integers(1, 1 << 22), row_bytes=st.integers(0, 1 << 24),
       rows=st.integers(1, 1 << 40))
def test_chunks_are_one_batch_when_that_is_neither_tiny_nor_huge(batch: int, row_bytes: int,
                                                                 rows: int) -> None:
    n = hdf5.chunk_len(batch, row_bytes, rows)
    size = n * max(1, row_bytes)
    assert 1 <= n <= rows
    assert size <= max(hdf5.CHUNK_MAX, row_bytes)  # never more than one row over the cap
    if hdf5.CHUNK_MIN <= batch * max(1, row_bytes) <= hdf5.CHUNK_MAX:
        assert n == min(batch, rows)  # each batch write fills whole chunks
    elif n < rows and size < hdf5.CHUNK_MIN:
        raise AssertionError(f"{n} rows of {row_bytes} B: a tiny chunk")
