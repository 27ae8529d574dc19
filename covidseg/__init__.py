"""covidseg: COVID-19 CT lesion segmentation with a PyTorch Lightning U-Net.

Subpackages by job; imports run one way, from the commands down:

* the commands: ``cli`` (``covidseg``), ``fit``, ``evaluate``, ``predict``, ``export``, ``models``,
  with ``options`` (their shared flags);
* ``prediction``: what predict reads and writes (``jobs``) and the prediction of a list of
  inputs (``run``);
* ``evaluation``: a model scored on data at its operating point (scoring, runs, report, crossval);
* ``viewer``: the offline HTML case viewer;
* ``model``: the LightningModule, its losses and callbacks, the model card, checkpoints, the
  predictor, ONNX export and the built-in models;
* ``data``: readers, layouts, validation, samples, splits, dataset and DataModule, transforms;
* ``metrics``: every score, computed from masks and probabilities only;
* ``errors``: the errors a user can cause.
"""

__version__ = "0.1.0"
