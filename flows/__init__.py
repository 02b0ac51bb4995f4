"""Prefect flows (convert, batch). Importing this package applies the Prefect environment
defaults of :mod:`flows._settings` before prefect itself is imported."""
from . import _settings  # noqa: F401  (must run before any `import prefect`)
