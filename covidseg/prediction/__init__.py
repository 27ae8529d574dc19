"""Prediction for ``covidseg predict``: ``jobs`` plans every input's outputs and refuses clashes
up front; ``run`` predicts them (``images``, ``volumes``) and writes masks, the summary
(``summary``), cases (``cases``) and the viewer (``viewing``)."""

from covidseg.prediction.cases import CASES, cases_of
from covidseg.prediction.jobs import SUMMARY, Job, case_id_of, check_outputs, list_inputs, plan
from covidseg.prediction.run import extra_outputs, predict_paths
from covidseg.prediction.summary import SUMMARY_FIELDS

__all__ = ["CASES", "SUMMARY", "SUMMARY_FIELDS", "Job", "case_id_of", "cases_of", "check_outputs", "extra_outputs", "list_inputs", "plan", "predict_paths"]
