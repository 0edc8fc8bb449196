"""`kmodel data import`: users' tables (CSV, TSV, Parquet, .npy, .npz) as input files, and
their mistakes refused by name (a missing column, a column that is not numbers, duplicated
ids, missing values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from kmodel.cli import cli
from kmodel.io import hdf5

RNG = np.random.default_rng(0)
N = 1000


def table() -> dict[str, np.ndarray]:
    return {"sample": np.array([f"s{i:05d}" for i in range(N)]),
            "a": RNG.normal(size=N), "b": RNG.integers(0, 9, N),
            "label": RNG.integers(0, 2, N), "dose": RNG.normal(size=N) * 10}


def write(path: Path, cols: dict[str, np.ndarray]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.table(cols), path, row_group_size=128)
    elif path.suffix == ".npz":
        np.savez(path, **cols)
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        lines = [sep.join(cols)] + [sep.join(str(cols[c][i]) for c in cols) for i in range(N)]
        path.write_text("\n".join(lines) + "\n")
    return path


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["data", "import", *args])
    return r.exit_code, r.output + r.stderr


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".npz"])
def test_a_table_becomes_an_input_file(tmp_path: Path, suffix: str) -> None:
    cols = table()
    source = write(tmp_path / f"t{suffix}", cols)
    code, out = run(str(source), "-o", str(tmp_path / "in.h5"), "--id", "sample",
                    "--target", "label", "--target", "dose")
    assert code == 0, out
    assert "1,000 rows, 2 features, targets label, dose" in out
    inputs, ids = hdf5.read_group(tmp_path / "in.h5", "inputs")
    targets, _ = hdf5.read_group(tmp_path / "in.h5", "targets")
    assert list(hdf5.as_ids(ids)) == [s.encode() for s in cols["sample"]]
    np.testing.assert_allclose(inputs["x"], np.column_stack([cols["a"], cols["b"]]),
                               rtol=1e-6)
    assert inputs["x"].dtype == np.float32 and targets["label"].dtype == np.int64
    np.testing.assert_array_equal(targets["label"], cols["label"])
    np.testing.assert_allclose(targets["dose"], cols["dose"])


def test_a_matrix_without_ids_is_numbered(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", RNG.normal(size=(50, 4)))
    code, out = run(str(tmp_path / "m.npy"), "-o", str(tmp_path / "m.h5"), "--features",
                    "0,2")
    assert code == 0, out
    inputs, ids = hdf5.read_group(tmp_path / "m.h5", "inputs")
    assert inputs["x"].shape == (50, 2) and bytes(hdf5.as_ids(ids)[49]) == b"row-49"


@pytest.mark.parametrize(("change", "args", "message"), [
    (lambda c: c, ["--id", "nope"], "no id column 'nope' (columns: sample, a, b"),
    (lambda c: c, ["--id", "sample", "--target", "y"], "no target column 'y'"),
    (lambda c: {**c, "a": np.where(np.arange(N) == 3, "high", c["a"].astype(str))},
     ["--id", "sample"], "feature column 'a' is not numeric (e.g. 'high')"),
    (lambda c: {**c, "sample": np.where(np.arange(N) == 7, "s00001", c["sample"])},
     ["--id", "sample"], "column 'sample' holds duplicated ids"),
    (lambda c: {**c, "dose": np.where(np.arange(N) == 5, np.nan, c["dose"])},
     ["--id", "sample"], "feature column 'dose' has missing values"),
])
def test_mistakes_in_a_table_are_named(tmp_path: Path, change: object, args: list[str],
                                       message: str) -> None:
    source = write(tmp_path / "t.csv", change(table()))  # type: ignore[operator]
    code, out = run(str(source), "-o", str(tmp_path / "in.h5"), *args)
    assert code == 1 and message in out, out
    assert "Traceback" not in out and not (tmp_path / "in.h5").exists()


def test_a_file_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.parquet").write_bytes(b"not parquet at all")
    code, out = run(str(tmp_path / "t.parquet"), "-o", str(tmp_path / "in.h5"))
    assert code == 1 and "Error [KM401]" in out and "not a readable parquet table" in out
    (tmp_path / "t.xlsx").write_bytes(b"x")
    code, out = run(str(tmp_path / "t.xlsx"), "-o", str(tmp_path / "in.h5"))
    assert code == 2 and "a table is one of .csv" in out
