"""Benchmarks: ``python -m bench <name>`` runs ``bench/<name>.py``.

Each benchmark measures Sluice's path and a baseline (the raw client doing the
same work) in the same run and prints both with their ratio; the last line ends
with the headline figure (``ratio <r>`` where a ratio applies).
"""
