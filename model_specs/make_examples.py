"""Make every shipped model's test example: model_specs/<model>/example/{in,expected}.h5.

    python model_specs/make_examples.py

Inputs: 20 rows of the demo's test split (scikit-learn's breast_cancer, seed 0). Expected:
each model's predictions on them, as computed here. `kmodel test` compares a model's
predictions with these within the spec's tolerance (another CPU's BLAS may differ in the
last bits). The stacker's example also needs trained weights (example/weights): it is
fitted on the base models' predictions of the test split, rows their shipped weights were
never trained on (as `stacking: holdout` does with blend rows).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import h5py

import kmodel

HERE = Path(__file__).parent
BASE = ["logreg", "gnb", "mlp"]
DEEP = ["torch-mlp", "keras-mlp", "lgbm"]  # workflows/deep.yaml's, not in the stacker's example
ROWS = 20


def main() -> None:
    model = {name: kmodel.get_model(name, specs=[HERE]) for name in [*BASE, *DEEP, "stacker"]}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        kmodel.example_data(t / "train.h5", t / "test.h5", seed=0, test_fraction=0.3)
        for name in [*BASE, *DEEP]:
            folder = HERE / name / "example"
            folder.mkdir(exist_ok=True)
            first_rows(t / "test.h5", folder / "in.h5")
            model[name].predict_file(folder / "in.h5", t / f"{name}.h5")
            copy_preds(t / f"{name}.h5", folder / "expected.h5")
            model[name].predict_file(t / "test.h5", t / f"{name}-blend.h5")
            print(f"{name}: example/in.h5, example/expected.h5")
        folder = HERE / "stacker" / "example"
        shutil.rmtree(folder / "weights", ignore_errors=True)
        folder.mkdir(exist_ok=True)
        kmodel.compose_train("stacker", [t / f"{n}-blend.h5" for n in BASE], t / "test.h5",
                             folder / "weights", stacking="holdout",
                             reg=model["stacker"].registry)
        (folder / "in.h5").unlink(missing_ok=True)  # this script's own file, made anew
        kmodel.stacked_input([t / f"{n}.h5" for n in BASE], folder / "in.h5")
        model["stacker"].predict_file(folder / "in.h5", t / "stacker.h5",
                                      weights=folder / "weights")
        copy_preds(t / "stacker.h5", folder / "expected.h5")
        print("stacker: example/in.h5, example/expected.h5, example/weights/")


def first_rows(source: Path, target: Path) -> None:
    """The first ROWS rows of an input file's /inputs and ids."""
    with h5py.File(source, "r") as f, h5py.File(target, "w") as out:
        for name, d in f["inputs"].items():
            out.create_dataset(f"inputs/{name}", data=d[:ROWS])
        out.create_dataset("metadata/id", data=f["metadata/id"][:ROWS])


def copy_preds(source: Path, target: Path) -> None:
    """Only the datasets: the expected values, not this run's provenance."""
    with h5py.File(source, "r") as f, h5py.File(target, "w") as out:
        for name, d in f["preds"].items():
            out.create_dataset(f"preds/{name}", data=d[()])
        out.create_dataset("metadata/id", data=f["metadata/id"][()])


if __name__ == "__main__":
    main()
