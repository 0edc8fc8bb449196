"""Make every shipped model's test example: model_specs/<model>/example/{in,expected}.h5.

    python model_specs/make_examples.py

Inputs: 20 rows of the demo's test split (scikit-learn's breast_cancer, seed 0). Expected:
each model's predictions on them, as computed here. `kmodel test` compares a model's
predictions with these within the spec's tolerance (another CPU's BLAS may differ in the
last bits). The stacker's example also needs trained weights: it is trained, as the demo
does, on the base models' train-split predictions (example/weights).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kmodel.compose import stack
from kmodel.compose import train as compose_train
from kmodel.datasets import breast_cancer
from kmodel.io import hdf5
from kmodel.predict import predict
from kmodel.registry import Registry
from kmodel.weights import Weights

HERE = Path(__file__).parent
BASE = ["logreg", "gnb", "mlp"]
ROWS = 20


def main() -> None:
    registry = Registry([HERE])
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        breast_cancer(t / "train.h5", t / "test.h5", seed=0, test_fraction=0.3)
        inputs, ids = hdf5.read_group(t / "test.h5", "inputs")
        example = {"inputs": {k: v[:ROWS] for k, v in inputs.items()}}
        for name in BASE:
            folder = HERE / name / "example"
            folder.mkdir(exist_ok=True)
            hdf5.write_table(folder / "in.h5", example, ids[:ROWS])
            predict(registry, name, folder / "in.h5", t / f"{name}.h5")
            copy_preds(t / f"{name}.h5", folder / "expected.h5")
            predict(registry, name, t / "train.h5", t / f"{name}-train.h5")
            print(f"{name}: example/in.h5, example/expected.h5")
        folder = HERE / "stacker" / "example"
        shutil.rmtree(folder / "weights", ignore_errors=True)
        folder.mkdir(exist_ok=True)
        compose_train(registry, "stacker", [t / f"{n}-train.h5" for n in BASE],
                      t / "train.h5", folder / "weights")
        x, ids, _ = stack([t / f"{n}.h5" for n in BASE])
        hdf5.write_table(folder / "in.h5", {"inputs": {"x": x}}, ids)
        predict(registry, "stacker", folder / "in.h5", t / "stacker.h5",
                weights=Weights.from_folder(folder / "weights"))
        copy_preds(t / "stacker.h5", folder / "expected.h5")
        print("stacker: example/in.h5, example/expected.h5, example/weights/")


def copy_preds(source: Path, target: Path) -> None:
    """Only the datasets: the expected values, not this run's provenance."""
    preds, ids = hdf5.read_group(source, "preds")
    hdf5.write_table(target, {"preds": preds}, ids)


if __name__ == "__main__":
    main()
