"""Metrics: every score, computed once from masks and probabilities (no model, no files).

Pixel counts, curves and thresholds (``scores``), per-image, per-case and per-source summaries
(``summary``), the torchmetrics objects training logs (``epoch``), per-case 3D metrics
(``volume``) and the lesion burden in the lungs (``severity``).
"""
