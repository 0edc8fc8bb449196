"""kmodel: many models, each in its own locked environment, predictions in HDF5, ensembled.

The Python API (kmodel/api.py), loaded on first use so that the CLI starts fast:
``kmodel.get_model(name)``, ``kmodel.compose_train``, ``kmodel.compose_apply``,
``kmodel.status_of``, ``kmodel.run``, ``kmodel.example_data``, ``kmodel.validate_specs``,
``kmodel.test_models``, ``kmodel.check_hashes``, ``kmodel.envs``. (Names chosen not to clash
with kmodel's submodules, which Python binds on the package when they are imported.)
"""

from typing import Any

from kmodel._version import __version__

__all__ = ["ModelHandle", "__version__", "check_hashes", "compose_apply", "compose_train",
           "envs", "example_data", "get_model", "run", "search_path", "stacked_input",
           "status_of", "test_models", "validate_specs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kmodel import api

        return getattr(api, name)
    raise AttributeError(f"module 'kmodel' has no attribute {name!r}")
