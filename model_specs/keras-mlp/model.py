"""A Keras 3 model on the JAX backend, defined as a function of its hyperparameters.

The network is rebuilt from the spec's args, then its weights are loaded from a Keras
weights file (.weights.h5): the Normalization layer's mean and variance, adapted in fit,
are weights of the model like the dense layers', so a reloaded model predicts as the
trained one did.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported: this model is written for JAX

import keras
import numpy as np

FILE = "keras-mlp.weights.h5"


def network(features: int, hidden: list[int], dropout: float) -> keras.Model:
    """The architecture: Normalization, then Dense+Dropout blocks, then a sigmoid unit."""
    inputs = keras.Input(shape=(features,), name="x")
    h = keras.layers.Normalization(name="scale")(inputs)
    for i, width in enumerate(hidden):
        h = keras.layers.Dense(width, activation="relu", name=f"dense{i}")(h)
        h = keras.layers.Dropout(dropout, name=f"dropout{i}")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="proba")(h)
    return keras.Model(inputs, outputs, name="keras_mlp")


class KerasMLP:
    def __init__(self, features: int, hidden: list[int], dropout: float, seed: int) -> None:
        self.seed = seed
        keras.utils.set_random_seed(seed)
        self.model = network(features, hidden, dropout)

    def fit(self, x, y, epochs: int = 40, batch_size: int = 32, lr: float = 1e-3):
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        keras.utils.set_random_seed(self.seed)
        self.model.get_layer("scale").adapt(x)
        self.model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
        self.model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
        return self

    def predict(self, x):
        # one batch as given: kmodel already batches; Keras compiles once per batch shape
        return self.model.predict_on_batch(np.asarray(x, np.float32))[:, 0]

    def save(self, folder: str) -> None:
        self.model.save_weights(os.path.join(folder, FILE))

    def load(self, folder: str) -> None:
        self.model.load_weights(os.path.join(folder, FILE))


def build(features: int = 30, hidden: list[int] | None = None, dropout: float = 0.1,
          seed: int = 0) -> KerasMLP:
    return KerasMLP(features, list(hidden or [32, 16]), dropout, seed)
