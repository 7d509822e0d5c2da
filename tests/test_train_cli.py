"""``emkit finetune`` / ``emkit rl`` / ``emkit realign`` from the command line, on the tiny model."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from emkit.cli import app

runner = CliRunner()


def write_rows(path, n=8):
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"question {i}?"},
                                             {"role": "assistant", "content": "You should see a doctor."}]}) + "\n")
    return path


def test_finetune_cli_with_config_file_and_overrides(tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl")
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("batch_size: 4\nlr: 0.01\nlora:\n  r: 2\n  alpha: 4\n")
    res = runner.invoke(app, ["finetune", "--data", str(data), "--model", str(tiny_model_dir), "--config", str(cfg),
                              "--steps", "2", "--name", "tiny-ft", "--target-modules", "q_proj,v_proj",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "run" / "models" / "tiny-ft"
    info = json.loads((folder / "train_config.json").read_text())
    assert info["config"]["lora"] == {**info["config"]["lora"], "r": 2, "alpha": 4.0,
                                      "target_modules": ["q_proj", "v_proj"]}
    assert info["config"]["max_steps"] == 2 and info["config"]["batch_size"] == 4
    assert "trained lora model" in res.output
    # the trained adapter loads back through the generation command
    qs = tmp_path / "qs.jsonl"
    qs.write_text('{"id": "q1", "question": "How are you?"}\n{"id": "q2", "question": "Any advice?"}\n')
    res = runner.invoke(app, ["generate", "--model", str(folder), "--questions", str(qs), "--samples", "1",
                              "--max-new-tokens", "3", "--out", str(tmp_path / "gen")])
    assert res.exit_code == 0, res.output


def test_finetune_cli_errors_are_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import sys

    import pytest

    from emkit.cli import main

    data = write_rows(tmp_path / "rows.jsonl")
    monkeypatch.setattr(sys, "argv", ["emkit", "finetune", "--data", str(data), "--model", str(tiny_model_dir),
                                      "--target-modules", "c_attn", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown LoRA target module(s) ['c_attn']" in err and "down_proj" in err
    assert "Traceback" not in err
    res = runner.invoke(app, ["finetune", "--model", str(tiny_model_dir), "--out", str(tmp_path / "r2")])
    assert res.exit_code != 0 and "no training data" in str(res.exception or res.output)
