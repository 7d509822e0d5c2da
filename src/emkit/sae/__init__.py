"""Top-k sparse autoencoders: model, trainer, and sparsify-compatible save/load."""

from emkit.sae.io import load_sae, save_sae
from emkit.sae.model import SaeConfig, TopKSAE, fvu, geometric_median

__all__ = ["SaeConfig", "TopKSAE", "fvu", "geometric_median", "load_sae", "save_sae"]
