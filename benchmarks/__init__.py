"""Benchmarks for stabilizer_asgi against a bare server and the seed package.

Each module is runnable on its own (``python -m benchmarks.echo --help``);
``python -m benchmarks.run`` runs them all and writes ``benchmarks/results/``.
"""
