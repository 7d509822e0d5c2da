"""The shape and provenance of a top-k SAE, shared by the model and its file format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emkit.errors import EmkitError


@dataclass
class SaeConfig:
    """Shape and provenance of a top-k SAE (written to ``cfg.json`` beside sparsify's own keys)."""

    d_in: int
    num_latents: int
    k: int
    hook: str = ""
    layer: int = -1
    model: str = ""
    corpus: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.num_latents < 1:
            raise EmkitError(f"d_in and num_latents must be positive, got {self.d_in}, {self.num_latents}")
        if not 1 <= self.k <= self.num_latents:
            raise EmkitError(f"k must be in 1..num_latents ({self.num_latents}), got {self.k}")
