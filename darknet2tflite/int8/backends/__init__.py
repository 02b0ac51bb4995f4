"""The int8 backends: direct (TFLiteConverter, in int8/quantize.py), onnx2tf (Keras -> ONNX -> onnx2tf), their comparison, and the dispatch between them."""
