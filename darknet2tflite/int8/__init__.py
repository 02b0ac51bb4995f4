"""Full-integer int8 conversion: calibration, ranges, graph preparation (channel split, box rounding), backends."""
