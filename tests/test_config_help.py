"""Every setting carries its help in its dataclass field, and the CLI reads it from there."""

from __future__ import annotations

import dataclasses

import pytest
import typer
import typer.main

from emkit.cli._options import FROM_OPTIONS, config_options
from emkit.judge.factory import JudgeConfig
from emkit.sae.train import SaeTrainConfig
from emkit.sampling import SamplingConfig
from emkit.train.config import LoRAConfig, RealignConfig, RLConfig, SFTConfig

CONFIGS = (SamplingConfig, LoRAConfig, SFTConfig, RLConfig, RealignConfig, SaeTrainConfig, JudgeConfig)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_one_line_help(cls):
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help")
        assert isinstance(text, str) and text.strip() and "\n" not in text, f"{cls.__name__}.{f.name}"


def _option_help(fn) -> dict[str, str | None]:
    app = typer.Typer(add_completion=False)
    app.command()(fn)
    return {p.name: p.help for p in typer.main.get_command(app).params}


def test_config_options_reads_help_from_the_field_unless_a_command_overrides_it():
    meta = {f.name: f.metadata["help"] for f in dataclasses.fields(SamplingConfig)}

    @config_options(SamplingConfig, "sampling", fields=("temperature", "seed"), help={"seed": "Own words."})
    def cmd(sampling: SamplingConfig = FROM_OPTIONS) -> None:
        pass

    assert _option_help(cmd) == {"temperature": meta["temperature"], "seed": "Own words."}
