"""Helpers for tests and for trying the package without the published modules.

`mmgrounding.testing.standins` writes small stand-in modules in the real file
formats (TF-slim checkpoints, Keras HDF5 weights, a TF1 Hub-format ELMo).
"""
