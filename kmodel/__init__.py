"""kmodel: many models, each in its own locked environment, predictions in HDF5, ensembled."""

__version__ = "0.1.0"
