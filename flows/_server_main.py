"""Process entry of the embedded Prefect server (started by flows/_embedded.py).

Does what ``python -m uvicorn --factory prefect.server.api.server:create_app --fd N`` does,
with one difference: the cyclic garbage collector is paused while Prefect's server package is
imported and its app built.  That import allocates millions of objects (pydantic models,
SQLAlchemy tables, FastAPI routes) and leaves no cycles worth collecting, yet the collector
kept walking them: pausing it cuts the server's start from ~3.1 s to ~2.6 s here, and the
server start is most of a fully cached conversion.  ``gc.freeze()`` then parks those
start-up objects for the process's life so later collections skip them, and collection
resumes as normal.

Usage (internal): ``python -m flows._server_main FD``.
"""
from __future__ import annotations

import gc
import sys


def main(argv: list[str]) -> None:
    fd = int(argv[0])
    gc.disable()
    import uvicorn
    from prefect.server.api.server import create_app
    app = create_app()
    gc.freeze()
    gc.enable()
    uvicorn.run(app, fd=fd, log_level="error", lifespan="on")


if __name__ == "__main__":
    main(sys.argv[1:])
