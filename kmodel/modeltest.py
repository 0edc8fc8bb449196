"""`kmodel test`: a model's own example, run in its env and compared within tolerance.

The spec's ``test:`` names an example input and the expected output (files in the model's
folder) with rtol/atol. Floats computed on another CPU differ in their last bits (BLAS
kernels are chosen per processor), so results are compared as |got - expected| <= atol +
rtol * |expected|, never by hash.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmodel._fs import check_input_file
from kmodel.errors import InputSchemaError, KmodelError, SpecError, UsageError, of_exception
from kmodel.io import hdf5
from kmodel.predict import predict
from kmodel.registry import Registry
from kmodel.weights import Weights


@dataclass(frozen=True)
class Comparison:
    """One output of one model's test."""

    model: str
    output: str
    rows: int
    bad: int  # rows out of tolerance
    detail: str  # the worst row, when any is out of tolerance

    @property
    def ok(self) -> bool:
        return self.bad == 0

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "state": "ok" if self.ok else "FAIL",
                "output": self.output, "rows": self.rows, "bad": self.bad,
                "detail": self.detail}


def compare(name: str, output: str, got: np.ndarray, want: np.ndarray, ids: np.ndarray,
            rtol: float, atol: float) -> Comparison:
    """Rows of ``got`` against ``want`` (same order): how many are out of tolerance, and
    the worst one's id, values and absolute and relative differences."""
    g = np.asarray(got, np.float64).reshape(len(got), -1)
    w = np.asarray(want, np.float64).reshape(len(want), -1)
    if g.shape != w.shape:
        return Comparison(name, output, len(w), len(w), f"shape {got.shape}, expected "
                          f"{want.shape}")
    diff = np.abs(g - w)
    excess = diff - (atol + rtol * np.abs(w))
    excess[np.isnan(g) != np.isnan(w)] = np.inf  # NaN where a number was expected
    excess[np.isnan(g) & np.isnan(w)] = -1.0
    bad_rows = (excess > 0).any(axis=1)
    if not bad_rows.any():
        return Comparison(name, output, len(w), 0, "")
    row, col = np.unravel_index(int(np.argmax(excess)), excess.shape)
    rel = diff[row, col] / abs(w[row, col]) if w[row, col] else np.inf
    where = f"[{col}]" if w.shape[1] > 1 else ""
    detail = (f"worst row id {bytes(ids[row]).decode(errors='replace')!r}{where}: got "
              f"{g[row, col]:.9g}, expected {w[row, col]:.9g}, abs diff {diff[row, col]:.3g}, "
              f"rel diff {rel:.3g} (rtol {rtol:g}, atol {atol:g})")
    return Comparison(name, output, len(w), int(bad_rows.sum()), detail)


def run_test(registry: Registry, name: str) -> list[Comparison]:
    """Run model ``name`` on its example input and compare every output with the expected."""
    model = registry.model(name)
    test = model.spec.test
    if test is None:
        raise SpecError(model.path, "the model has no test", field="test",
                        fix="add `test: {inputs: example/in.h5, expected: example/expected.h5}`")
    weights = Weights.from_folder(model.folder / test.weights) if test.weights else None
    expected_path = model.folder / test.expected
    check_input_file(expected_path)  # a FIFO would block
    try:
        want, want_ids = hdf5.read_group(expected_path, "preds")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise InputSchemaError(f"{expected_path}: not an expected-output file ({e}); "
                               "regenerate it") from None
    with tempfile.TemporaryDirectory(prefix="kmodel-test-") as tmp:
        out = predict(registry, name, model.folder / test.inputs, Path(tmp) / "out.h5",
                      weights=weights)
        got, got_ids = hdf5.read_group(out, "preds")
    order = {bytes(i): k for k, i in enumerate(hdf5.as_ids(got_ids))}
    ids = hdf5.as_ids(want_ids)
    rows = np.array([order.get(bytes(i), -1) for i in ids])
    same_rows = len(ids) == len(order) == len(got_ids) and len(set(map(bytes, ids))) == len(ids)
    results = []
    for output in sorted(set(want) | set(got)):
        if output not in got or output not in want or (rows < 0).any() or not same_rows:
            results.append(Comparison(name, output, len(ids), len(ids),
                                      f"{expected_path} and the prediction differ in outputs "
                                      "or ids; regenerate the expected file"))
            continue
        results.append(compare(name, output, got[output][rows], want[output], ids,
                               test.rtol, test.atol))
    return results


def run_tests(registry: Registry, names: Sequence[str] = (), *, every: bool = False
              ) -> list[dict[str, object]]:
    """`kmodel test`: each named model's test (or with ``every``, each model that has one),
    as report rows: per output ``ok``/``FAIL`` with the worst row; ``ERROR`` (with the
    one-line error) for a model whose test could not run, the others still run; ``no
    test`` for a model without one (with ``every`` only)."""
    if every == bool(names):
        raise UsageError("give model names, or --all (not both)")
    models = registry.models() if every else [registry.model(n) for n in names]
    report: list[dict[str, object]] = []
    for m in models:
        if m.spec.test is None and every:
            report.append({"model": m.name, "state": "no test"})
            continue
        try:
            report += [c.as_dict() for c in run_test(registry, m.name)]
        except (KmodelError, OSError) as e:  # this model's test; the others still run
            error = of_exception(e)
            report.append({"model": m.name, "state": "ERROR",
                           "detail": f"[{error.code}] {' '.join(str(error).split())}"})
    return report


def failed(report: list[dict[str, object]]) -> bool:
    return any(r["state"] in ("FAIL", "ERROR") for r in report)
