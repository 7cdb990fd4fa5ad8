"""optimlab: PyTorch optimizers written once, checked against their references, and fast."""

from .optimizers.adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
__version__ = "0.1.0"
