"""``emkit steer sweep|screen``: steering dose-response curves and the causal screen of diffed latents."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from emkit.cli._options import FROM_OPTIONS, sampling_options
from emkit.sampling import SamplingConfig

out = Console()


def parse_floats(text: str, what: str = "--alphas") -> list[float]:
    """``"-1,-0.5,0,0.5,1"`` -> floats (spaces allowed)."""
    from emkit.errors import EmkitError

    try:
        vals = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise EmkitError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not vals:
        raise EmkitError(f"{what} is empty")
    return vals


def fmt_rate(v, lo, hi) -> str:
    return "–" if v is None else f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def print_sweep(res: dict, title: str) -> None:
    t = Table("alpha", "misaligned [95% CI]", "coherent [95% CI]", "answers", "mean aligned", title=title)
    for r in res["rows"]:
        t.add_row(f"{r['alpha']:+g}", fmt_rate(r["misaligned"], r["mis_lo"], r["mis_hi"]),
                  fmt_rate(r["coherent"], r["coh_lo"], r["coh_hi"]), str(r["n"]),
                  "–" if r["aligned_mean"] is None else f"{r['aligned_mean']:.1f}")
    out.print(t)
    u = res["usable"]
    out.print(f"scale (alpha = 1): {res['scale']:.4g} — {res['scale_method']}")
    out.print(f"usable strength (incoherence within the limit at this and every weaker strength): "
              f"+ side {u['positive']}, − side {u['negative']}, strongest {u['best']}")


def register(app: typer.Typer) -> None:
    steer_app = typer.Typer(help="Steer models along directions: dose-response sweeps and causal screens.",
                            no_args_is_help=True)
    app.add_typer(steer_app, name="steer")

    @steer_app.command("sweep")
    @sampling_options()
    def sweep_cmd(
        direction: str = typer.Option(..., "--direction", "-d",
                                      help="sae:FOLDER:LATENT, file:PATH[:KEY[:ROW]], diff:POS:NEG, shift:TUNED:ITEMS or random:SEED."),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model to steer."),
        layer: int = typer.Option(None, help="Decoder layer (default: the direction's own, e.g. the SAE's)."),
        alphas: str = typer.Option("-1,-0.5,0,0.5,1", help="Strengths, in units of the layer's residual norm."),
        questions: str = typer.Option("broad", "--questions", "-q", help="Question file or built-in name."),
        judge: str = typer.Option("embedded", help="Judge spec: embedded, api:MODEL, local:SPEC, ..."),
        samples: int = typer.Option(1, "--samples", "-n", help="Answers per paraphrase."),
        positions: str = typer.Option("all", help="all (every token) or answer (generated tokens only)."),
        scale: float = typer.Option(None, help="Use this residual norm instead of measuring it."),
        max_incoherence: float = typer.Option(0.10, help="Incoherence allowed at a usable strength."),
        relative: bool = typer.Option(False, help="Count incoherence as the rise over alpha 0."),
        out_dir: Path = typer.Option(Path("runs/steer"), "--out", "-o", help="Run folder."),
        label: str = typer.Option("", help="Name stored with the answers (default: the model spec)."),
        sampling: SamplingConfig = FROM_OPTIONS,
        device: str = typer.Option("auto"), dtype: str = typer.Option("auto"),
    ) -> None:
        """Misalignment and coherence (with intervals) per steering strength, and the usable strength.

        Example: emkit steer sweep --direction sae:runs/x/sae:123 --alphas -1,-0.5,0,0.5,1 --questions broad --samples 4
        """
        from emkit.data import load_questions
        from emkit.directions import resolve
        from emkit.errors import EmkitError
        from emkit.eval_setup import EvalSetup
        from emkit.judge import make_judge
        from emkit.models import load_model
        from emkit.run import Run
        from emkit.steer import Arm, dose_response

        if positions not in ("all", "answer"):
            raise EmkitError(f"--positions must be all or answer, got {positions!r}")
        alpha_list = parse_floats(alphas)
        qs = load_questions(questions)
        j = make_judge(judge)
        m, tok = load_model(model, device=device, dtype=dtype)
        d = resolve(direction, model=m, tok=tok, layer=layer)
        use_layer = layer if layer is not None else d.layer
        if use_layer is None:
            raise EmkitError("this direction does not say which layer it belongs to", hint="pass --layer")
        run = Run(out_dir)
        run.record_seed("steer", sampling.seed)
        res = dose_response(EvalSetup(run, j, sampling, qs, samples), Arm(m, tok, label or model), use_layer, d,
                            alpha_list, positions=positions, scale=scale, max_incoherence=max_incoherence,
                            relative=relative)
        print_sweep(res, f"steering {d.name} at layer {use_layer} of {label or model} (judge {j.id})")
        out.print(f"stored in {run.path / 'results.sqlite'} (table steering)")

    @steer_app.command("screen")
    @sampling_options()
    def screen_cmd(
        sae: Path = typer.Option(..., help="SAE folder (cfg.json + sae.safetensors) the latents belong to."),
        base: str = typer.Option("smollm2-135m-instruct", help="Original model (steered +)."),
        misaligned: str = typer.Option(None, help="Misaligned fine-tune (steered −); omit for + only."),
        latents: str = typer.Option(None, help="Latents to screen, e.g. 12,40,7 (default: the run's diff ranking)."),
        top: int = typer.Option(10, help="How many of the ranking's top latents to screen."),
        alpha: float = typer.Option(0.5, help="Strength (units of the residual norm), applied + and −."),
        controls: int = typer.Option(2, "--random", help="Random directions of the same norm, as controls."),
        questions: str = typer.Option("broad", "--questions", "-q"),
        judge: str = typer.Option("embedded"),
        samples: int = typer.Option(1, "--samples", "-n"),
        out_dir: Path = typer.Option(Path("runs/steer"), "--out", "-o", help="Run folder (holding the diff ranking)."),
        sampling: SamplingConfig = FROM_OPTIONS,
        device: str = typer.Option("auto"), dtype: str = typer.Option("auto"),
    ) -> None:
        """Screen latents causally: + on the base model, − on a misaligned one, ranked by effect, with random controls.

        Example: emkit steer screen --sae runs/x/sae --misaligned runs/x/models/health --top 10 --alpha 0.5 --out runs/x
        """
        from emkit.data import load_questions
        from emkit.directions import from_sae
        from emkit.eval_setup import EvalSetup
        from emkit.judge import make_judge
        from emkit.models import load_model
        from emkit.run import Run
        from emkit.sae import load_sae
        from emkit.steer import Arm, screen, top_latents

        run = Run(out_dir)
        s = load_sae(sae)
        ids = [int(x) for x in parse_floats(latents, "--latents")] if latents else top_latents(run, top, s)
        cands = [from_sae(s, i) for i in ids]
        layer = cands[0].layer
        if layer is None:
            from emkit.errors import EmkitError

            raise EmkitError(f"{sae}/cfg.json does not record the SAE's layer")
        qs = load_questions(questions)
        j = make_judge(judge)
        bm, btok = load_model(base, device=device, dtype=dtype)
        arm_ft = None
        if misaligned:
            fm, ftok = load_model(misaligned, device=device, dtype=dtype)
            arm_ft = Arm(fm, ftok, misaligned)
        rows = screen(EvalSetup(run, j, sampling, qs, samples), Arm(bm, btok, base), cands, layer=layer, alpha=alpha,
                      misaligned=arm_ft, n_random=controls, seed=sampling.seed)
        t = Table("rank", "direction", "+ on base", "− on misaligned", "score", "coherent (+)",
                  title=f"causal screen at layer {layer}, alpha ±{alpha:g} (judge {j.id})")
        for r in rows:
            t.add_row(str(r["rank"]), r["direction"] + (" (control)" if r["control"] else ""),
                      *("–" if v is None else f"{100 * v:+.1f} pt" for v in (r["plus_effect"], r["minus_effect"],
                                                                              r["score"])),
                      "–" if r["plus_coherent"] is None else f"{100 * r['plus_coherent']:.0f}%")
        out.print(t)
        out.print(f"stored in {run.path / 'results.sqlite'} (tables steering, steering_screen)")
