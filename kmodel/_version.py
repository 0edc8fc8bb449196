"""kmodel's version: a module of its own, so that any module can name it without loading
the package's face (kmodel/__init__.py, which hands on the Python API)."""

__version__ = "0.1.0"
