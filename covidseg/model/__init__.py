"""Model: the network, how it is trained, what it carries, and how it is run.

The LightningModule (``unet``), its losses (``losses``), training callbacks (``callbacks``), the
model card (``card``: what a model carries and needs at inference), checkpoint files
(``checkpoint``), the predictor for checkpoints, ONNX files and ensembles (``predictor``), ONNX
export (``onnx``) and the built-in models (``pretrained``).
"""
