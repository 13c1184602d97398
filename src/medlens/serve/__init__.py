"""Serving runs to a hospital's systems: the REST server (``medlens serve``).

:func:`create_app` builds the FastAPI app over :func:`load_models`'s runs; every request goes
through the task platform's predictor, so every task is served the same way.
"""

from medlens.serve.app import ServedModel, ServeSettings, create_app, load_models

__all__ = ["ServeSettings", "ServedModel", "create_app", "load_models"]
