"""The content-addressed artifact store and what it rests on: file digests, atomic writes, cache folders."""
