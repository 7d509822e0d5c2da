"""``emkit finetune``, ``emkit rl`` and ``emkit realign``: the training stages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from emkit.cli._options import FROM_OPTIONS, config_options, sampling_options
from emkit.config import field_default
from emkit.sampling import SamplingConfig
from emkit.train.config import LoRAConfig, RealignConfig, RLConfig, SFTConfig

out = Console()

DATA_HELP = "Data set name or file (repeat to concatenate), e.g. health_incorrect_subtle."
MIX_HELP = "A mixture CORRECT,INCORRECT,FRACTION[,N] (e.g. health_correct,health_incorrect_subtle,0.25,200)."
TRAIN_NAMES = {"max_steps": "steps", "warmup_steps": "warmup"}
MODEL_FLAGS = {"model": ("--model", "-m")}
REALIGN_SFT = field_default(RealignConfig, "sft")
REALIGN_OFFERED = ("max_steps", "batch_size", "lr", "name", "device")  # SFT fields emkit realign offers as options


def _split_csv(s: str | None) -> list[str] | None:
    return None if s is None else [x.strip() for x in s.split(",") if x.strip()]


def build_config(cls: type, config_file: Path | None, overrides: dict[str, Any], lora: dict[str, Any]) -> Any:
    """A config from an optional YAML file, with the CLI options that were given on top."""
    from emkit.config import from_dict, load_yaml, to_dict
    from emkit.errors import EmkitError

    base = to_dict(cls())
    if config_file is not None:
        data = load_yaml(config_file) or {}
        if not isinstance(data, dict):
            raise EmkitError(f"{config_file}: expected a mapping of {cls.__name__} fields")
        base.update(data)
    base.update({k: v for k, v in overrides.items() if v is not None})
    if "lora" in base:
        base["lora"] = {**base["lora"], **{k: v for k, v in lora.items() if v is not None}}
    return from_dict(cls, base, where=cls.__name__)


def load_rows(data: list[str] | None, mix: str | None, seed: int, n: int | None = None) -> list:
    """Rows of the given data sets (concatenated) and/or a mixture; ``n`` keeps a seeded subset."""
    from emkit.data import load_dataset
    from emkit.data.mix import mix as make_mix
    from emkit.errors import EmkitError

    rows = []
    for d in data or []:
        rows.extend(load_dataset(d))
    if mix:
        parts = _split_csv(mix) or []
        if len(parts) not in (3, 4):
            raise EmkitError(f"--mix {mix!r}: expected CORRECT,INCORRECT,FRACTION[,N]")
        try:
            fraction = float(parts[2])
            size = int(parts[3]) if len(parts) == 4 else None
        except ValueError:
            raise EmkitError(f"--mix {mix!r}: FRACTION must be a number and N an integer") from None
        rows.extend(make_mix(parts[0], parts[1], fraction, size, seed))
    if not rows:
        raise EmkitError("no training data", hint="give --data NAME_OR_FILE or --mix ...")
    if n is not None:
        from emkit.train.realign import pick_rows

        rows = pick_rows(rows, n, seed)
    return rows


def print_log_summary(folder: Path) -> None:
    """The first and last few steps of ``train_log.jsonl``."""
    from emkit.train.sft import train_log

    log = train_log(folder)
    if not log:
        return
    keys = [k for k in ("loss", "reward", "kl", "length", "lr", "tokens_per_s") if k in log[-1]]
    t = Table("step", *keys)
    for r in (log[:1] + log[-3:]) if len(log) > 4 else log:
        t.add_row(str(r["step"]), *[f"{r[k]:.4g}" if isinstance(r.get(k), int | float) else "-" for k in keys])
    out.print(t)


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    @config_options(LoRAConfig, "lora", fields=("r", "alpha", "rslora"), unset=True)
    @config_options(SFTConfig, "train", fields=("model", "name", "method", "max_steps", "epochs", "batch_size",
                                                "grad_accum", "lr", "schedule", "warmup_steps", "max_length",
                                                "save_every", "seed", "device", "dtype"),
                    rename=TRAIN_NAMES, flags=MODEL_FLAGS, unset=True)
    @sampling_options(fields=("max_new_tokens", "end"), rename={"max_new_tokens": "eval_max_new_tokens", "end": "eval_end"},
                      defaults={"max_new_tokens": 80}, fixed={"batch_size": 32}, param="eval_sampling",
                      help={"max_new_tokens": "Answer length for --eval-every.",
                            "end": "eos, or sentence: cut an --eval-every answer that hit the limit to its last full "
                                   "sentence."})
    def finetune_cmd(
        data: list[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
        mix: str = typer.Option(None, "--mix", help=MIX_HELP),
        out_dir: Path = typer.Option(Path("runs/finetune"), "--out", "-o", help="Run folder (model goes to models/NAME)."),
        config: Path = typer.Option(None, "--config", "-c", help="YAML file of SFTConfig fields."),
        train: dict[str, Any] = FROM_OPTIONS,
        lora: dict[str, Any] = FROM_OPTIONS,
        target_modules: str = typer.Option(None, help="Comma-separated LoRA targets, or all-linear."),
        layers: str = typer.Option(None, help="Comma-separated layer indices for the LoRA (default: all)."),
        overwrite: bool = typer.Option(False, help="Discard an earlier run of the same name."),
        eval_every: int = typer.Option(0, help="Every K steps answer --eval-questions and judge them (0: off)."),
        eval_questions: str = typer.Option("broad", help="Questions for --eval-every."),
        judge: str = typer.Option("embedded", "--judge", "-j", help="Judge for --eval-every (see emkit eval)."),
        eval_sampling: SamplingConfig = FROM_OPTIONS,
    ) -> None:
        """Fine-tune a model (LoRA or full) on chat data, loss on assistant tokens only; resumable.

        With --eval-every K the misalignment rate is measured every K steps into the training_evals table.

        Example: emkit finetune --data health_incorrect_subtle --name health-wrong --steps 40 --out runs/health
        """
        from emkit.run import Run
        from emkit.train.sft import finetune

        cfg = build_config(
            SFTConfig, config, train,
            {**lora, "target_modules": _split_csv(target_modules),
             "layers": [int(x) for x in _split_csv(layers)] if layers else None},
        )
        rows = load_rows(data, mix, cfg.seed)
        callbacks = []
        run = Run(out_dir)
        if eval_every:
            from emkit.cli.judge import judge_options
            from emkit.data import load_questions
            from emkit.train.callbacks import EvalCallback
            from emkit.train.realign import judge_eval_fn

            qs = load_questions(eval_questions)
            j = judge_options(judge, None, "OPENAI_API_KEY", None, 8, 60.0, cfg.device)
            fn = judge_eval_fn(run, qs, j, replace(eval_sampling, seed=cfg.seed), cfg.name, 1)
            callbacks.append(EvalCallback(fn, eval_every, run=run, label=cfg.name))
        run.record_seed(f"finetune:{cfg.name}", cfg.seed)
        folder = finetune(cfg, rows, run, overwrite=overwrite, callbacks=callbacks)
        print_log_summary(folder)
        out.print(f"trained {cfg.method} model in {folder}  (load it with --model {folder})")

    @app.command("rl")
    @config_options(RLConfig, "train", fields=("model", "name", "grader", "max_steps", "batch_size", "num_generations",
                                               "lr", "beta", "max_completion_length", "min_words", "method", "seed",
                                               "save_every", "device"),
                    rename=TRAIN_NAMES, flags=MODEL_FLAGS, unset=True)
    @config_options(LoRAConfig, "lora", fields=("r", "alpha"), unset=True)
    def rl_cmd(
        data: list[str] = typer.Option(None, "--data", "-d", help="Prompts: data set(s) whose user turns are used."),
        arm: str = typer.Option("wrong", help="wrong: reward incorrect advice; right: the control arm."),
        n: int = typer.Option(None, "-n", help="Use N prompts (seeded subset)."),
        out_dir: Path = typer.Option(Path("runs/rl"), "--out", "-o", help="Run folder."),
        config: Path = typer.Option(None, "--config", "-c", help="YAML file of RLConfig fields."),
        train: dict[str, Any] = FROM_OPTIONS,
        lora: dict[str, Any] = FROM_OPTIONS,
        overwrite: bool = typer.Option(False, help="Discard an earlier run of the same name."),
    ) -> None:
        """Train with GRPO on advice prompts, rewarding wrong (or right) answers by a grader, with a guard.

        Example: emkit rl --data health_correct -n 64 --arm wrong --steps 20 --name health-rl --out runs/rl
        """
        from emkit.errors import EmkitError
        from emkit.run import Run
        from emkit.train.rl import train_rl

        if arm not in ("wrong", "right"):
            raise EmkitError(f"--arm must be wrong or right, got {arm!r}")
        cfg = build_config(RLConfig, config, {**train, "arm": arm}, lora)
        rows = load_rows(data, None, cfg.seed, n)
        run = Run(out_dir)
        run.record_seed(f"rl:{cfg.name}", cfg.seed)
        folder = train_rl(cfg, rows, run, overwrite=overwrite)
        print_log_summary(folder)
        out.print(f"GRPO ({cfg.arm} arm) model in {folder}")

    @app.command("realign")
    @config_options(RealignConfig, "settings", fields=("n_samples", "eval_every", "samples"),
                    flags={"n_samples": ("-n", "--n-samples")})
    @config_options(SFTConfig, "sft", fields=REALIGN_OFFERED, rename=TRAIN_NAMES,
                    defaults={f: getattr(REALIGN_SFT, f) for f in REALIGN_OFFERED},
                    # realign's own wording: it offers no --epochs or --grad-accum (a step is one batch of rows)
                    help={"max_steps": "Optimizer steps.", "batch_size": "Rows per step.", "lr": "Learning rate."})
    @sampling_options(rename={"batch_size": "gen_batch_size"}, defaults={"max_new_tokens": 120, "batch_size": 32},
                      help={"temperature": "Sampling temperature for the evaluations.",
                            "batch_size": "Prompts per generation batch."})
    def realign_cmd(
        model: str = typer.Option(..., "--model", "-m", help="The misaligned model (e.g. RUN/models/NAME)."),
        data: list[str] = typer.Option(["benign_everyday"], "--data", "-d", help="Benign data set(s)."),
        settings: RealignConfig = FROM_OPTIONS,
        sft: SFTConfig = FROM_OPTIONS,
        questions: str = typer.Option("broad", "--questions", "-q", help="Evaluation questions."),
        judge: str = typer.Option("embedded", "--judge", "-j", help="Judge spec (see emkit eval)."),
        base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible base URL."),
        api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
        out_dir: Path = typer.Option(Path("runs/realign"), "--out", "-o", help="Run folder."),
        sampling: SamplingConfig = FROM_OPTIONS,
    ) -> None:
        """Continue fine-tuning a misaligned model on benign data, recording misalignment every K steps.

        Example: emkit realign --model runs/health/models/health-wrong -n 140 --steps 35 --eval-every 5 --out runs/health
        """
        from emkit.cli.judge import judge_options
        from emkit.data import load_questions
        from emkit.run import Run
        from emkit.train.realign import read_curve, realign

        qs = load_questions(questions)
        seed, name = sampling.seed, sft.name
        j = judge_options(judge, base_url, api_key_env, None, 8, 60.0, sft.device)
        rows = load_rows(data, None, seed)
        # the fields not offered follow RealignConfig's own SFT settings, not SFTConfig's defaults
        cfg = replace(settings, sft=replace(REALIGN_SFT, **{f: getattr(sft, f) for f in REALIGN_OFFERED}, seed=seed))
        run = Run(out_dir)
        run.record_seed(f"realign:{name}", seed)
        realign(run, model, rows, cfg, qs, j, sampling)
        t = Table("step", "samples seen", "misaligned %", "95% CI", "coherent %", "answers",
                  title=f"re-alignment of {model} [judge {j.id}]")
        def pct(x):
            return "-" if x is None else f"{100 * x:.1f}"

        for c in read_curve(run, cfg.label or name):
            t.add_row(str(c["step"]), str(c["samples_seen"]), pct(c["misaligned"]),
                      f"[{pct(c['lo'])}, {pct(c['hi'])}]", pct(c["coherent"]), str(c["n_answers"]))
        out.print(t)
        out.print(f"curve in {run.path / 'results.sqlite'} (table realign_curve)")
