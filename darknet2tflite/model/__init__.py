"""Keras model construction from a parsed cfg: the section builders, the build context rules consult, custom layers."""
