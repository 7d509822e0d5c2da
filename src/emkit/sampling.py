"""How answers are sampled: :class:`SamplingConfig` (torch-free, so the CLI builds its options from it cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field

from emkit.errors import EmkitError


@dataclass
class SamplingConfig:
    """How answers are sampled. ``temperature=0`` means greedy decoding.

    ``end="sentence"`` cuts an answer that hit ``max_new_tokens`` back to its last complete
    sentence (it stays flagged ``truncated``), so a reader or judge does not see a word cut in two.
    """

    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=200, metadata={"help": "Answer length limit in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per batch."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    # left out of the config hash at its default, so answers stored before the field existed resume
    end: str = field(default="eos", metadata={
        "omit_if_default": True,
        "help": "eos, or sentence: cut an answer that hit the limit to its last full sentence."})

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise EmkitError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EmkitError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise EmkitError("max_new_tokens and batch_size must be >= 1")
        if self.end not in ("eos", "sentence"):
            raise EmkitError(f"end must be 'eos' or 'sentence', got {self.end!r}")
