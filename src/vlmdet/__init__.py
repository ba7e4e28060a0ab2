"""vlmdet: train and diagnose vision-language models that detect objects by writing them."""

__version__ = "0.1.0"
