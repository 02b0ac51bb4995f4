"""model.keras back into a Keras model, with this package's custom layers (and every rewrite
rule's) registered first: the one loader every stage and backend uses."""
from __future__ import annotations

import os
from typing import Any


def load_keras(model_or_path: Any) -> Any:
    """``model_or_path`` if it already is a model, else the model.keras file it names."""
    if not isinstance(model_or_path, (str, os.PathLike)):
        return model_or_path
    import keras
    from darknet2tflite.model import layers as _layers  # noqa: F401  (registers custom layers)
    from darknet2tflite.rewrites import load_rules
    load_rules()
    return keras.models.load_model(model_or_path, compile=False)
