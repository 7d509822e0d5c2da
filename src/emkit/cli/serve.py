"""``emkit serve-args RUN``: the vLLM command line that serves a run's base model and its LoRA adapters.

The base model is served as ``base`` (a recipe's ``eval.served_base``) and each adapter under its
label (``health-wrong50``), the names the ``server`` back-end asks for. Full fine-tunes are whole
models: each needs a server of its own, printed on its own port.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import typer

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


@dataclass
class ServePlan:
    """What a run needs served: the base model, adapters by label (with their rank), full fine-tunes."""

    base: str | None = None
    adapters: dict[str, Path] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    full: dict[str, Path] = field(default_factory=dict)
    other_bases: dict[str, str] = field(default_factory=dict)  # adapter label -> a different base


def _adapter_base(folder: Path, depth: int = 0) -> str:
    """The base model an adapter sits on (following an adapter trained on top of another)."""
    base = str(json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or "")
    p = Path(base)
    if depth < 4 and base and p.is_dir() and (p / "adapter_config.json").is_file():
        return _adapter_base(p, depth + 1)
    return base


def _served_path(spec: str) -> str:
    """A path or Hub id vLLM can load (the bundled model's converted folder for its alias)."""
    from emkit.errors import EmkitError
    from emkit.models.load import resolve_spec

    try:
        return resolve_spec(spec)
    except EmkitError:
        return spec


def serve_plan(run_dir: Path) -> ServePlan:
    """Read ``RUN/models/*`` (and ``RUN/experiment.yaml`` for the base model)."""
    import yaml

    from emkit.errors import EmkitError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EmkitError(f"no run folder at {run_dir}")
    plan = ServePlan()
    exp = run_dir / "experiment.yaml"
    if exp.is_file():
        data = yaml.safe_load(exp.read_text()) or {}
        if isinstance(data, dict) and data.get("model"):
            plan.base = _served_path(str(data["model"]))
    models = run_dir / "models"
    for folder in sorted(p for p in models.iterdir() if p.is_dir()) if models.is_dir() else []:
        if (folder / "adapter_config.json").is_file() and any(folder.glob("adapter_model.*")):
            base = _served_path(_adapter_base(folder))
            plan.base = plan.base or base
            if base != plan.base:
                plan.other_bases[folder.name] = base
                continue
            plan.adapters[folder.name] = folder.resolve()
            plan.ranks[folder.name] = int(json.loads((folder / "adapter_config.json").read_text()).get("r") or 8)
        elif (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            plan.full[folder.name] = folder.resolve()
    if plan.base is None:
        raise EmkitError(f"{run_dir} names no base model and holds no adapters",
                         hint="run the finetune stage first, or give --base")
    return plan


def vllm_command(model: str, name: str, port: int, adapters: dict[str, Path] | None = None,
                 ranks: dict[str, int] | None = None, extra: list[str] | None = None) -> str:
    """``vllm serve`` serving ``model`` as ``name`` (plus LoRA ``adapters`` by label)."""
    args = ["vllm", "serve", model, "--served-model-name", name, "--port", str(port)]
    if adapters:
        need = max((ranks or {}).values(), default=8)
        rank = next((r for r in LORA_RANKS if r >= need), need)
        args += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(min(len(adapters), 4)),
                 "--lora-modules", *[f"{lab}={path}" for lab, path in adapters.items()]]
    args += extra or []
    return " ".join(shlex.quote(a) for a in args)


def register(app: typer.Typer) -> None:
    @app.command("serve-args")
    def serve_args_cmd(
        run_dir: Path = typer.Argument(..., help="A run folder with fine-tunes (RUN/models/*)."),
        port: int = typer.Option(8000, help="Port of the server (full fine-tunes get the next ones)."),
        base: str = typer.Option(None, help="Serve this base model instead of the one the run names."),
        served_base: str = typer.Option("base", help="Name the base model is served under (eval.served_base)."),
        tensor_parallel: int = typer.Option(1, "--tensor-parallel-size", help="GPUs per server (vLLM -tp)."),
    ) -> None:
        """Print the vLLM command that serves a run's base model and LoRA fine-tunes for --backend server.

        Example: emkit serve-args runs/quick   (then: emkit run recipe.yaml with eval.backend: server)
        """
        plan = serve_plan(run_dir)
        model = _served_path(base) if base else plan.base
        extra = ["--tensor-parallel-size", str(tensor_parallel)] if tensor_parallel > 1 else []
        print("# serve the base model and every LoRA fine-tune of the run (one server):")
        print(vllm_command(str(model), served_base, port, plan.adapters, plan.ranks, extra))
        for i, (lab, path) in enumerate(plan.full.items(), 1):
            print(f"# full fine-tune {lab}: a whole model, a server of its own "
                  f"(evaluate it with emkit eval --backend server --base-url http://localhost:{port + i}/v1 "
                  f"--model {lab}):")
            print(vllm_command(str(path), lab, port + i, extra=extra))
        for lab, other in plan.other_bases.items():
            print(f"# {lab} sits on another base model ({other}); serve it separately with that base")
        print("# then, in the recipe:")
        print(f"#   eval: {{backend: server, base_url: http://localhost:{port}/v1, served_base: {served_base}}}")
        print(f"# or: emkit eval --backend server --base-url http://localhost:{port}/v1 --model "
              f"{next(iter(plan.adapters), served_base)} ...")
