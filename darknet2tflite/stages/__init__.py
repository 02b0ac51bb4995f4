"""One body per pipeline stage: artifact paths in, artifact paths out (the Prefect tasks call these)."""

#: Pipeline order (``--from-stage`` invalidates a stage and every one after it).
STAGES = ("parse", "build", "parity", "probe", "rewrite", "quantize", "evaluate", "report")
