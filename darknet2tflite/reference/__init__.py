"""The independent float reference (OpenCV DNN's Darknet importer) and the parity comparison."""
