"""covidseg: COVID-19 CT lesion segmentation with a PyTorch Lightning U-Net."""

__version__ = "0.1.0"
