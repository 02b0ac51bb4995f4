"""Import TensorFlow without its native start-up lines on the terminal.

TensorFlow's C++ libraries log while they load ("All log messages before
absl::InitializeLog() ...", oneDNN, cudart), before ``TF_CPP_MIN_LOG_LEVEL`` can apply, and
straight to file descriptor 2; a one-line error that follows them is no longer one line.
Pointing fd 2 at /dev/null for the duration of the import drops exactly those lines; Python's
own ``sys.stderr`` object is untouched, and a failing import still raises normally.
"""
from __future__ import annotations

import os
import sys
from types import ModuleType


def import_tensorflow(debug: bool = False) -> ModuleType:
    if debug or "tensorflow" in sys.modules:
        import tensorflow
        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tensorflow
