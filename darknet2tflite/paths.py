"""Default locations: the source checkout (its sample photos) and the artifact store.

The store default does not depend on where the package is installed: ``--store`` if given,
else ``$DARKNET2TFLITE_STORE``, else ``.store`` in the current folder (a package installed
into site-packages must not write there).
"""
from __future__ import annotations

import os
from pathlib import Path

#: the source checkout this package runs from (data/samples, weights/ live there)
REPO_ROOT = Path(__file__).resolve().parents[1]
#: photos for the float parity check and the probe when none are given
DEFAULT_IMAGES = REPO_ROOT / "data" / "samples"
STORE_ENV = "DARKNET2TFLITE_STORE"


def store_root(store: str | os.PathLike[str] | None = None) -> Path:
    """The artifact store folder: ``store``, else $DARKNET2TFLITE_STORE, else ./.store."""
    if store:
        return Path(store).expanduser().resolve()
    env = os.environ.get(STORE_ENV)
    return Path(env).expanduser().resolve() if env else (Path.cwd() / ".store").resolve()


def images_or_default(images: str | os.PathLike[str] | None) -> str:
    """The parity / probe photos: ``images``, else the shipped samples."""
    return str(images) if images else str(DEFAULT_IMAGES)
