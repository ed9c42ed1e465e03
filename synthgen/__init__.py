"""synthgen: synthetic multimodal training data for Japanese VLMs."""

__version__ = "0.1.0"
