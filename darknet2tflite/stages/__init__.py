"""One body per pipeline stage: artifact paths in, artifact paths out (the Prefect tasks call these)."""
