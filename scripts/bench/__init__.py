"""Sections of ``scripts/benchmark.py``, one module each."""
