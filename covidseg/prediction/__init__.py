"""Prediction for ``covidseg predict``: ``jobs`` plans every input's outputs and refuses clashes
up front; ``run`` predicts them and writes masks, the summary, cases and the viewer."""

from covidseg.prediction.jobs import SUMMARY, Job, check_outputs, list_inputs, plan
from covidseg.prediction.run import CASES, SUMMARY_FIELDS, case_id_of, cases_of, extra_outputs, predict_paths

__all__ = ["CASES", "SUMMARY", "SUMMARY_FIELDS", "Job", "case_id_of", "cases_of", "check_outputs", "extra_outputs", "list_inputs", "plan", "predict_paths"]
