"""``emkit predict``: does a latent's shift predict misalignment across a family of fine-tunes?
``emkit predict screen-data``: how far would a training set move it, before any fine-tuning?"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from emkit.cli._options import FROM_OPTIONS, sampling_options
from emkit.sampling import SamplingConfig

out = Console()


def _num(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


def _probes(sae: Path | None, latent: list[int] | None, direction: list[str] | None, model, tok, layer):
    """Probes (and the layer) from --sae/--latent and/or --direction specs."""
    from emkit.directions import resolve
    from emkit.errors import EmkitError
    from emkit.predict import direction_probe, sae_probe

    probes, layers = [], set()
    if latent and sae is None:
        raise EmkitError("--latent needs --sae")
    if sae is not None:
        from emkit.sae import load_sae

        s = load_sae(sae)
        if not latent:
            raise EmkitError("--sae needs at least one --latent")
        probes += [sae_probe(s, i) for i in latent]
        if s.cfg.layer >= 0:
            layers.add(s.cfg.layer)
    for spec in direction or []:
        d = resolve(spec, model=model, tok=tok, layer=layer)
        probes.append(direction_probe(d))
        if d.layer is not None:
            layers.add(d.layer)
    if not probes:
        raise EmkitError("nothing to measure", hint="give --sae with --latent N, or --direction SPEC")
    if layer is None:
        if len(layers) != 1:
            raise EmkitError("cannot tell which layer to read", hint="pass --layer")
        layer = layers.pop()
    return probes, layer


def _member(text: str) -> tuple[str, float, str]:
    from emkit.errors import EmkitError

    x, sep, spec = text.partition("=")
    try:
        xv = float(x)
    except ValueError:
        xv = None
    if not sep or xv is None or not spec:
        raise EmkitError(f"bad --member {text!r}", hint="use X=MODEL, e.g. 0.05=runs/x/models/mix05")
    return spec, xv, spec


def register(app: typer.Typer) -> None:
    predict_app = typer.Typer()  # help: the family command's docstring
    app.add_typer(predict_app, name="predict")

    @predict_app.callback(invoke_without_command=True)
    @sampling_options()
    def family_cmd(
        ctx: typer.Context,
        member: list[str] = typer.Option(None, "--member", help="X=MODEL (fraction or step = model); repeat."),
        base: str = typer.Option("smollm2-135m-instruct", help="The original model (shifts are measured from it)."),
        sae: Path = typer.Option(None, help="SAE folder, with --latent."),
        latent: list[int] = typer.Option(None, help="SAE latent to follow (repeatable)."),
        direction: list[str] = typer.Option(None, help="Direction spec to follow instead (repeatable)."),
        layer: int = typer.Option(None, help="Layer (default: the SAE's or direction's)."),
        tokens: str = typer.Option("all", help="Prompt tokens averaged: all or last."),
        questions: str = typer.Option("broad", "--questions", "-q"),
        judge: str = typer.Option("embedded"),
        samples: int = typer.Option(1, "--samples", "-n"),
        threshold: float = typer.Option(0.05, help="A member is 'misaligned' when its rate exceeds this."),
        study: str = typer.Option("family", help="Name stored with the results."),
        out_dir: Path = typer.Option(Path("runs/predict"), "--out", "-o"),
        sampling: SamplingConfig = FROM_OPTIONS,
    ) -> None:
        """Latent shift vs misalignment across a family: correlation, AUROC, and which moves first.

        Sub-command screen-data screens a training set before fine-tuning.

        Example: emkit predict --member 0=runs/x/models/mix0 --member 0.05=runs/x/models/mix05 --member 1=runs/x/models/mix100 --sae runs/x/sae --latent 123
        """
        if ctx.invoked_subcommand is not None:
            return
        from emkit.data import load_questions
        from emkit.errors import EmkitError
        from emkit.eval_setup import EvalSetup
        from emkit.judge import make_judge
        from emkit.models import load_model
        from emkit.predict import family_stats, measure_family, store_family
        from emkit.run import Run

        if not member or len(member) < 2:
            raise EmkitError("give at least two --member X=MODEL", hint="or use `emkit predict screen-data`")
        members = [_member(m) for m in member]
        names = [m[0] for m in members]  # labels = model specs (as `emkit eval` stores them), unique per x
        members = [(f"{n}@{x:g}" if names.count(n) > 1 else n, x, spec) for n, x, spec in members]
        qs = load_questions(questions)
        j = make_judge(judge)
        bm, btok = load_model(base)
        probes, use_layer = _probes(sae, latent, direction, bm, btok, layer)
        run = Run(out_dir)
        setup = EvalSetup(run, j, sampling, qs, samples)
        for p in probes:
            base_acts, fam = measure_family(setup, (bm, btok), members, p, use_layer, tokens=tokens)
            res = family_stats(fam, base_acts, threshold=threshold, seed=sampling.seed)
            store_family(run, study, p.name, res)
            t = Table("member", "x", "shift [95% CI]", "misaligned [95% CI]", "label",
                      title=f"{p.name} at layer {use_layer}")
            for r in res["members"]:
                t.add_row(r["member"], f"{r['x']:g}", f"{_num(r['shift'])} [{_num(r['shift_lo'])}, {_num(r['shift_hi'])}]",
                          f"{_num(r['rate'], True)} [{_num(r['rate_lo'], True)}, {_num(r['rate_hi'], True)}]",
                          {1: "misaligned", 0: "aligned"}.get(r["misaligned"], "–"))
            out.print(t)
            out.print(f"Pearson {_num(res['pearson'])}, Spearman {_num(res['spearman'])}, AUROC {_num(res['auroc'])} "
                      f"(misaligned = rate > {threshold:g}); first x above the noise band: latent {res['latent_onset']}, "
                      f"behaviour {res['behaviour_onset']}")
        out.print(f"stored in {run.path / 'results.sqlite'} (tables prediction, prediction_summary)")

    @predict_app.command("screen-data")
    def screen_data_cmd(
        data: str = typer.Option(..., help="Candidate training set: a chat .jsonl or a built-in name."),
        reference: str = typer.Option("benign_everyday", help="Known-benign set to compare with."),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="The original (not fine-tuned) model."),
        sae: Path = typer.Option(None, help="SAE folder, with --latent."),
        latent: list[int] = typer.Option(None, help="SAE latent (repeatable)."),
        direction: list[str] = typer.Option(None, help="Direction spec (repeatable)."),
        layer: int = typer.Option(None),
        tokens: str = typer.Option("auto", help="auto (answer tokens), all or last."),
        n: int = typer.Option(200, help="Rows sampled from each set (seeded)."),
        seed: int = typer.Option(0),
        out_dir: Path = typer.Option(None, "--out", "-o", help="Run folder to store the result in (optional)."),
    ) -> None:
        """Risk estimate for a dataset: how far it moves latents in the original model vs a benign set.

        Example: emkit predict screen-data --data health_incorrect_subtle --sae runs/x/sae --latent 123
        """
        import random

        from emkit.data.dataset import load_dataset
        from emkit.errors import EmkitError
        from emkit.models import load_model
        from emkit.models.load import model_id
        from emkit.predict import data_screen

        if n < 2:
            raise EmkitError("--n must be at least 2")

        def sample(spec: str) -> list:
            rows = load_dataset(spec)
            return random.Random(seed).sample(rows, min(n, len(rows)))

        cand, ref = sample(data), sample(reference)
        m, tok = load_model(model)
        probes, use_layer = _probes(sae, latent, direction, m, tok, layer)
        rows = data_screen(m, tok, use_layer, probes, cand, ref, tokens=tokens, seed=seed, progress=True)
        t = Table("probe", "shift [95% CI]", "effect size", "above ref. p95", title=f"{data} vs {reference}, layer {use_layer}")
        for r in rows:
            t.add_row(r["probe"], f"{_num(r['shift'])} [{_num(r['lo'])}, {_num(r['hi'])}]", _num(r["effect_size"]),
                      _num(r["above_p95"], True))
        out.print(t)
        out.print("effect size = shift / reference std; about 5% of a benign-like set lies above the reference's p95")
        if out_dir is not None:
            from emkit.run import Run

            run = Run(out_dir)
            run.db.insert("data_screen", [dict(dataset=data, reference=reference, probe=r["probe"], model=model_id(m),
                                               layer=use_layer, tokens=tokens, shift=r["shift"], lo=r["lo"], hi=r["hi"],
                                               effect_size=r["effect_size"], above_p95=r["above_p95"],
                                               n_candidate=r["n_candidate"], n_reference=r["n_reference"])
                                          for r in rows], replace=True)
            out.print(f"stored in {run.path / 'results.sqlite'} (table data_screen)")
