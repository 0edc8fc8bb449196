"""Reproduce the base models' weights: seeded split of breast_cancer, each model fitted in its env.

    python model_specs/train_base_models.py [MODEL ...]

Writes model_specs/<model>/weights/ (params.json + one .npy per weight) and records the
files' sha256 in each model.yaml. The split is the one workflows/demo.yaml uses (seed 0,
30 % test), so the demo's base models never saw its test rows.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from kmodel.datasets import breast_cancer
from kmodel.hashes import write_hashes
from kmodel.predict import train
from kmodel.registry import Registry

BASE_MODELS = ["logreg", "gnb", "mlp"]


def main(models: list[str]) -> None:
    registry = Registry([Path(__file__).parent])
    with tempfile.TemporaryDirectory() as tmp:
        train_h5, test_h5 = Path(tmp) / "train.h5", Path(tmp) / "test.h5"
        breast_cancer(train_h5, test_h5, seed=0, test_fraction=0.3)
        for name in models:
            model = registry.model(name)
            train(registry, name, train_h5, "y", model.folder / "weights", manifest=False)
            for file, digest in write_hashes(registry.model(name)).items():
                print(f"{name}: {digest}  {file}")


if __name__ == "__main__":
    main(sys.argv[1:] or BASE_MODELS)
