"""ablate: a bag-of-tricks ablation harness for object detection."""

__version__ = "0.1.0"
