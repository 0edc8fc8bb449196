"""Reproduce the base models' weights: seeded split of breast_cancer, each model fitted in its env.

    python model_specs/train_base_models.py [MODEL ...]

Writes model_specs/<model>/weights/ (params.json + one .npy per weight, or the model's own
native files for the deep workflow's models: safetensors, .weights.h5, LightGBM text) and
records the files' sha256 in each model.yaml. The split is the one workflows/demo.yaml and
deep.yaml use (seed 0, 30 % test), so their base models never saw its test rows.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import kmodel

HERE = Path(__file__).parent
BASE_MODELS = ["logreg", "gnb", "mlp"]
#: the deep workflow's models: native weight files (safetensors, .weights.h5, LightGBM text)
DEEP_MODELS = ["torch-mlp", "keras-mlp", "lgbm"]


def main(models: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        train_h5, test_h5 = Path(tmp) / "train.h5", Path(tmp) / "test.h5"
        kmodel.example_data(train_h5, test_h5, seed=0, test_fraction=0.3)
        for name in models:
            model = kmodel.get_model(name, specs=[HERE])
            model.train(train_h5, HERE / name / "weights")  # records the hashes in the spec
            for file, digest in model.info["weights"]["sha256"].items():
                print(f"{name}: {digest}  {file}")


if __name__ == "__main__":
    main(sys.argv[1:] or BASE_MODELS + DEEP_MODELS)
