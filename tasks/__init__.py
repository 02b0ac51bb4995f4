"""Prefect tasks, one thin module per pipeline stage (see tasks/_common.py)."""
import flows._settings  # noqa: F401  (Prefect env defaults before `import prefect`)
