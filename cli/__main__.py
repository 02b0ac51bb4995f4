"""``python -m cli``: the ``darknet2tflite`` command."""
import sys

from cli.main import main

sys.exit(main())
