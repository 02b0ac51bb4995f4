"""Scoring converted models: decoding, COCO AP, drawings, the report."""
