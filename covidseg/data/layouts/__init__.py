"""Data layouts: where image/mask pairs and their cases are found in a data folder.

One module per layout family: ``folders`` (Kaggle ``frames/``+``masks/``, ``images/``+``masks/``,
and nnU-Net ``imagesTr/``+``labelsTr/``, matched by file name), ``manifest`` (``manifest.csv``),
``nnunet`` (its channel naming and ``dataset.json`` labels); ``find`` detects a folder's layout
and lists its pairs. Validation of what is found is ``covidseg.data.validate``.
"""
