"""mrlearn: deep learning for MRI reconstruction and quantitative parameter estimation."""

__version__ = "0.1.0"
