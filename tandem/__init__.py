"""Tandem: model serving for PyTorch behind a REST API."""

__version__ = "0.1.0"
