"""Data: files on disk -> validated, case-split samples -> tensors for training.

Readers for slices (``io``), volumes (``volumes``, ``dicom``) and the slice cache (``cache``);
the data layouts (``layouts``), their validation (``validate``), a sample and how its arrays
are read (``samples``), patient-level splits (``splits``), the ``Dataset`` and ``DataModule``
(``dataset``, ``datamodule``), augmentation (``transforms``), patches (``patches``), the
overlay drawing (``overlay``) and the synthetic demo set (``synthetic``). Nothing here imports
the model, the metrics or the commands.
"""
