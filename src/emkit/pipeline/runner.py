"""Run a recipe's stages in order, skipping those already done with the same config.

Each stage has a hash: its own recipe sections plus the hashes of the stages it reads from, so
changing e.g. the training settings re-runs fine-tuning and everything downstream of it, and
nothing else. A stage's result (its :mod:`emkit.stage_results` record) is written to
``RUN/pipeline/<stage>.json`` (what the report reads); its heavy artifacts (models, answers, judgments, SAE) live where their modules put
them and resume on their own, so a killed run continues inside the stage it was in.

``only`` runs one stage (its inputs must be done); ``start`` runs from a stage on. Both re-run
the named stages even when recorded as done (artifacts with matching settings are reused).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from emkit.config import config_hash, to_dict
from emkit.errors import EmkitError
from emkit.pipeline.context import Context, Stage, read_result, result_path, write_result
from emkit.pipeline.recipe import STAGE_NAMES, Recipe
from emkit.pipeline.stages import STAGES
from emkit.run import Run, atomic_write_text
from emkit.stage_results import result_dict

console = Console(stderr=True)


def stage_hashes(recipe: Recipe, stages: list[Stage]) -> dict[str, str]:
    """Each stage's hash over its recipe sections and its dependencies' hashes (in stage order)."""
    out: dict[str, str] = {}
    for st in stages:
        deps = [d for d in (*st.deps, *st.soft) if d in out and d not in recipe.skip]
        out[st.name] = config_hash({"stage": st.name, "own": to_dict(st.sections(recipe)),
                                    "deps": {d: out[d] for d in deps}})
    return out


@dataclass
class PlanItem:
    stage: Stage
    hash: str
    status: str  # done | run | skip (recipe) | blocked
    estimate: float
    why: str = ""


def plan(recipe: Recipe, run_dir: Path | None = None, *, only: str | None = None, start: str | None = None,
         stages: list[Stage] | None = None) -> list[PlanItem]:
    """What ``run`` would do: each stage with its status and estimated seconds."""
    stages = stages or STAGES
    names = [s.name for s in stages]
    for flag, val in (("--only", only), ("--from", start)):
        if val is not None and val not in names:
            raise EmkitError(f"{flag}: unknown stage {val!r}", hint=f"stages: {', '.join(names)}")
    if only and start:
        raise EmkitError("give --only or --from, not both")
    for st in stages:
        gone = [d for d in st.deps if d in recipe.skip]
        if gone and st.name not in recipe.skip:
            raise EmkitError(f"stage {st.name!r} needs {', '.join(gone)}, which the recipe skips",
                             hint=f"skip {st.name} too, or run {', '.join(gone)}")
    hashes = stage_hashes(recipe, stages)
    manifest = _manifest(run_dir)
    items: list[PlanItem] = []
    first = names.index(start) if start else 0
    for i, st in enumerate(stages):
        est = float(st.estimate(recipe))
        rec = manifest.get(st.name, {})
        done = (rec.get("status") == "done" and rec.get("config_hash") == stage_key_hash(hashes[st.name])
                and run_dir is not None and result_path(run_dir, st.name).is_file())
        if st.name in recipe.skip:
            items.append(PlanItem(st, hashes[st.name], "skip", 0.0, "left out by the recipe"))
        elif only is not None:
            status = "run" if st.name == only else ("done" if done else "-")
            items.append(PlanItem(st, hashes[st.name], status, est if st.name == only else 0.0))
        elif i < first:
            items.append(PlanItem(st, hashes[st.name], "done" if done else "-", 0.0))
        elif st.name == "report" or not done or i >= first and start is not None:
            why = "" if not rec else ("settings changed" if rec.get("config_hash") != stage_key_hash(hashes[st.name])
                                      else f"was {rec.get('status')}")
            items.append(PlanItem(st, hashes[st.name], "run", est, why))
        else:
            items.append(PlanItem(st, hashes[st.name], "done", 0.0, f"{rec.get('seconds', 0):.0f}s before"))
    return items


def stage_key(h: str) -> dict[str, str]:
    """The config recorded for a stage in the run manifest (via :meth:`emkit.run.Run.stage`)."""
    return {"pipeline_hash": h}


def stage_key_hash(h: str) -> str:
    return config_hash(stage_key(h))


def _manifest(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None or not (Path(run_dir) / "manifest.json").is_file():
        return {}
    try:
        return json.loads((Path(run_dir) / "manifest.json").read_text()).get("stages", {})
    except json.JSONDecodeError:
        return {}


def _layer_count(model_path: str) -> int | None:
    """Decoder layers from a local model folder's config.json (None when unknown, e.g. a Hub id)."""
    cfg = Path(model_path) / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    data = data.get("text_config", data) if isinstance(data, dict) else {}
    return next((data[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(data.get(k), int)), None)


def _data_problem(spec: str | None, what: str) -> str | None:
    from emkit.data import builtin

    if spec is None or builtin.is_builtin(str(spec)):
        return None
    path = Path(str(spec).split("!", 1)[0]).expanduser()
    return None if path.is_file() else f"{what}: no data set named or at {spec!r}"


def check_recipe(recipe: Recipe, stages_run: set[str] | None = None) -> None:
    """What can be checked before hours of work: the model, device, data and question files, the judge,
    the SAE's layer and size. All problems are reported at once, in one line."""
    from emkit.judge.factory import JUDGE_KINDS
    from emkit.models.load import resolve_device, resolve_spec

    def wanted(stage: str) -> bool:
        return stage not in recipe.skip and (stages_run is None or stage in stages_run)

    problems: list[str] = []

    def attempt(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except EmkitError as e:
            problems.append(str(e))
            return None

    model_path = attempt(lambda: resolve_spec(recipe.model))
    attempt(lambda: resolve_device(recipe.device, recipe.dtype))
    for d in recipe.data.domains:
        for key in ("wrong", "right", "check"):
            problems.append(_data_problem(getattr(d, key), f"data.domains[{d.name}].{key}") or "")
    problems.append(_data_problem(recipe.data.benign, "data.benign") or "")
    if recipe.positive_control.enabled:
        for key in ("data", "control"):
            problems.append(_data_problem(getattr(recipe.positive_control, key), f"positive_control.{key}") or "")
    from emkit.data import load_questions

    attempt(lambda: load_questions(recipe.eval.questions))
    kind, _, target = recipe.eval.judge.strip().partition(":")
    if kind.lower() not in JUDGE_KINDS:
        problems.append(f"eval.judge: unknown judge {recipe.eval.judge!r} (use embedded, api:MODEL, "
                        "api-rubric:MODEL, local:MODEL or local-rubric:MODEL)")
    elif kind.lower() != "embedded" and not target.strip():
        problems.append(f"eval.judge {recipe.eval.judge!r} names no model")
    s = recipe.sae
    if wanted("sae"):
        if s.path:
            if not (Path(s.path).expanduser() / "cfg.json").is_file():
                problems.append(f"sae.path: no SAE folder (cfg.json) at {s.path}")
        elif not 1 <= s.train.k <= s.train.num_latents:
            problems.append(f"sae.train.k = {s.train.k} must be between 1 and num_latents ({s.train.num_latents})")
        n = _layer_count(model_path) if model_path else None
        if s.layer is not None and (s.layer < 0 or (n is not None and s.layer >= n)):
            problems.append(f"sae.layer {s.layer} is out of range" + (f" (the model has layers 0..{n - 1})" if n else ""))
    problems = [p for p in problems if p]
    if problems:
        raise EmkitError(f"the recipe {recipe.name!r} has {len(problems)} problem(s): " + "; ".join(problems),
                         hint="fix them in the recipe; `emkit run RECIPE --dry-run` checks again without running")


def format_plan(items: list[PlanItem], recipe: Recipe, run_dir: Path | None = None) -> str:
    lines = [f"recipe {recipe.name!r}: model {recipe.model}, {len(recipe.all_models())} fine-tunes "
             f"({', '.join(m.label for m in recipe.all_models())}), run folder {run_dir or recipe.out_dir}"]
    total = 0.0
    for i, it in enumerate(items, 1):
        mark = {"run": "run ", "done": "done", "skip": "skip", "-": "  - "}.get(it.status, it.status)
        est = f"~{fmt_seconds(it.estimate)}" if it.status == "run" else ""
        lines.append(f"  {i:2d}. [{mark}] {it.stage.name:<10} {it.stage.title:<68} {est:>9}  {it.why}")
        total += it.estimate if it.status == "run" else 0.0
    lines.append(f"estimated time: ~{fmt_seconds(total)} (rough: measured rates of the bundled 135M model on a "
                 "shared 2-core CPU, scaled by model size and device; an idle machine is faster)")
    return "\n".join(lines)


def _mark_downstream_stale(run: Run, name: str, stages: list[Stage], running: set[str]) -> None:
    """After re-running ``name`` on its own, stages that read from it (and are not about to run) are stale."""
    affected = {name}
    for st in stages:
        if st.name not in affected and affected & set(st.deps):
            affected.add(st.name)
            rec = run.manifest["stages"].get(st.name)
            if rec and rec.get("status") == "done" and st.name not in running:
                rec["status"] = "stale"
                rec["stale_because"] = f"{name} was re-run"
    run.save_manifest()


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}min"
    return f"{s / 3600:.1f}h"


def run_pipeline(recipe: Recipe, *, only: str | None = None, start: str | None = None, dry_run: bool = False,
                 out: Path | None = None, progress: bool = True, stages: list[Stage] | None = None,
                 recipe_text: str | None = None, wait: bool = False) -> Path:
    """Run (or, with ``dry_run``, print the plan of) the recipe into its run folder; returns the folder.

    The run folder is locked for this process; another ``emkit run`` on it fails at once naming the
    holder, or (``wait``) starts when the holder ends.
    """
    stages = stages or STAGES
    run_dir = Path(out) if out is not None else recipe.out_dir
    items = plan(recipe, run_dir, only=only, start=start, stages=stages)
    if stages is STAGES:  # custom stage lists (tests) bring their own inputs
        check_recipe(recipe, {it.stage.name for it in items if it.status == "run"})
    console.print(format_plan(items, recipe, run_dir), highlight=False, markup=False, soft_wrap=True)
    if dry_run:
        return run_dir
    if only is not None:
        need = {d for it in items if it.stage.name == only for d in it.stage.deps}
        missing = [it.stage.name for it in items if it.stage.name in need and it.status not in ("done", "skip")]
        if missing:
            raise EmkitError(f"stage {only!r} needs {', '.join(missing)} done first",
                             hint=f"run `emkit run RECIPE --from {missing[0]}` (or without --only)")
    if start is not None:
        before = [it.stage.name for it in items[: [i.stage.name for i in items].index(start)]
                  if it.status not in ("done", "skip")]
        if before:
            raise EmkitError(f"--from {start}: earlier stage(s) {', '.join(before)} are not done",
                             hint="run without --from first (done stages are skipped anyway)")
    run = Run(run_dir, wait=wait)
    run.save_config(recipe)
    if recipe_text is not None:
        atomic_write_text(run.path / "recipe.yaml", recipe_text)
    run.record_seed("recipe", recipe.seed)
    ctx = Context(recipe, run, progress=progress)
    ctx.purge_changed_models()
    todo = [it for it in items if it.status == "run"]
    t_all = time.time()
    try:
        for n, it in enumerate(todo, 1):
            st = it.stage
            console.print(f"[bold cyan]▶ stage {n}/{len(todo)}: {st.name}[/] — {st.title}", highlight=False)
            t0 = time.time()

            def body(st: Stage = st, h: str = it.hash) -> dict:
                res = result_dict(st.fn(ctx))
                res["_stage"] = {"name": st.name, "hash": h}
                write_result(run.path, st.name, res)
                return res

            run.stage(st.name, stage_key(it.hash), body, force=True)
            _mark_downstream_stale(run, st.name, stages, {i.stage.name for i in todo})
            console.print(f"  [green]done[/] in {fmt_seconds(time.time() - t0)}", highlight=False)
    finally:
        ctx.close()
    console.print(f"[bold]all stages done[/] in {fmt_seconds(time.time() - t_all)}; report: "
                  f"{run.path / 'report' / 'index.html'}", highlight=False)
    return run.path


__all__ = ["STAGE_NAMES", "PlanItem", "Stage", "check_recipe", "fmt_seconds", "format_plan", "plan", "read_result", "run_pipeline",
           "stage_hashes", "write_result"]
