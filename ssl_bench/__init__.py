"""ssl-bench: one honest, reproducible harness for semi-supervised medical image segmentation."""

__version__ = "0.1.0"
