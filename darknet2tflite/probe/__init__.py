"""The per-layer TFLite op probe: target profiles, tiny one-layer models, the probe report, rewrite-rule choice."""
