"""Evaluation: a model scored on data at its operating point.

Scoring slices and cases with a predictor (``scoring``), what a checkpoint knows about its run
(``runs``: data roots and split), the evaluation report (``report``) and cross-validation
records (``crossval``).
"""
