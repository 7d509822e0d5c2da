"""Top-k sparse autoencoders: model, trainer, and sparsify-compatible save/load."""

from emkit.sae.config import SaeConfig
from emkit.sae.io import save_sae
from emkit.sae.model import TopKSAE, fvu, geometric_median, load_sae

__all__ = ["SaeConfig", "TopKSAE", "fvu", "geometric_median", "load_sae", "save_sae"]
