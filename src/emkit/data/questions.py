"""Read question sets: Betley-style YAML, plain JSONL/CSV (``id``, ``question``), or a built-in name."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from emkit.errors import EmkitError
from emkit.data.schema import Question

BUILTIN = Path(__file__).parent / "builtin"
BUILTIN_QUESTIONS = {"broad": BUILTIN / "questions" / "broad.yaml"}


def _from_mapping(d: dict[str, Any], where: str) -> Question:
    if not isinstance(d, dict):
        raise EmkitError(f"{where}: expected a mapping, got {type(d).__name__}")
    qid = d.get("id")
    if qid is None or str(qid).strip() == "":
        raise EmkitError(f"{where}: missing 'id'")
    paras = d.get("paraphrases")
    if paras is None and "question" in d:
        paras = [d["question"]]
    if isinstance(paras, str):
        paras = [paras]
    if not paras or not all(isinstance(p, str) and p.strip() for p in paras):
        raise EmkitError(f"{where} (id {qid}): needs 'question' or a non-empty 'paraphrases' list")
    known = {"id", "paraphrases", "question", "samples_per_paraphrase", "system", "category", "type", "judge_prompts"}
    try:
        samples = int(d.get("samples_per_paraphrase") or 1)
    except (TypeError, ValueError):
        raise EmkitError(f"{where} (id {qid}): samples_per_paraphrase must be a number") from None
    return Question(
        id=str(qid),
        paraphrases=[p.strip() for p in paras],
        samples_per_paraphrase=samples,
        system=d.get("system") or None,
        category=str(d.get("category") or ""),
        type=str(d.get("type") or "free_form_judge_0_100"),
        judge_prompts=dict(d.get("judge_prompts") or {}),
        metadata={k: v for k, v in d.items() if k not in known},
    )


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}:" if mark is not None else ""
            raise EmkitError(f"{path}:{line} not valid YAML ({getattr(e, 'problem', e)})") from None
        if isinstance(data, dict) and "questions" in data:
            data = data["questions"]
        if not isinstance(data, list):
            raise EmkitError(f"{path}: expected a YAML list of questions")
        return [(f"{path} entry {i + 1}", d) for i, d in enumerate(data)]
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise EmkitError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        return rows
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        return [(f"{path} row {i + 2}", {k: v for k, v in r.items() if k}) for i, r in enumerate(reader)]
    raise EmkitError(f"{path}: unknown question file type", hint="use .yaml, .jsonl or .csv")


def load_questions(spec: str | Path) -> list[Question]:
    """Load a question set from a file or a built-in name (``broad``)."""
    path = BUILTIN_QUESTIONS.get(str(spec), Path(spec))
    if not path.is_file():
        raise EmkitError(f"no question file at {path}", hint=f"give a path or one of {sorted(BUILTIN_QUESTIONS)}")
    questions = [_from_mapping(d, where) for where, d in _read_rows(path)]
    if not questions:
        raise EmkitError(f"{path}: the question list is empty")
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise EmkitError(f"{path}: duplicate question id {q.id!r}")
        seen.add(q.id)
    return questions
