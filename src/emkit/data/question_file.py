"""Read a question file: Betley-style YAML, or plain JSONL/JSON/CSV (``id``, ``question``).

CSV files may have an unnamed index column and quoted cells spanning lines (the OpenAI release's
eval CSVs); columns other than the known ones (``canary``, ``grader``, ...) go to ``metadata``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from emkit.data.formats import BadRows, read_csv_records
from emkit.data.lines import read_json_list, read_text_checked, text_lines
from emkit.data.schema import Question
from emkit.errors import EmkitError

KNOWN = {"id", "paraphrases", "question", "samples_per_paraphrase", "system", "category", "type", "judge_prompts"}


def question_from_mapping(d: Any, where: str) -> Question:
    """One question entry (YAML mapping, JSON object or CSV row) -> :class:`Question`."""
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
    try:
        samples = int(d.get("samples_per_paraphrase") or 1)
    except (TypeError, ValueError):
        raise EmkitError(f"{where} (id {qid}): samples_per_paraphrase must be a number") from None
    if samples < 1:
        raise EmkitError(f"{where} (id {qid}): samples_per_paraphrase must be at least 1")
    judge_prompts = d.get("judge_prompts") or {}
    if not isinstance(judge_prompts, dict) or not all(isinstance(v, str) for v in judge_prompts.values()):
        raise EmkitError(f"{where} (id {qid}): judge_prompts must map names to template strings")
    return Question(
        id=str(qid).strip(),
        paraphrases=[p.strip() for p in paras],
        samples_per_paraphrase=samples,
        system=d.get("system") or None,
        category=str(d.get("category") or d.get("topic") or ""),
        type=str(d.get("type") or "free_form_judge_0_100"),
        judge_prompts={str(k): v for k, v in judge_prompts.items()},
        metadata={k: v for k, v in d.items() if k not in KNOWN},
    )


def read_question_records(path: Path, bad: BadRows) -> list[tuple[str, Any]]:
    """``(where, record)`` pairs of a question file (.yaml/.yml, .jsonl, .json or .csv)."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(read_text_checked(path))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}:" if mark is not None else ""
            raise EmkitError(f"{path}:{line} not valid YAML ({getattr(e, 'problem', e)})") from None
        if isinstance(data, dict) and "questions" in data:
            data = data["questions"]
        if data is None:
            data = []
        if not isinstance(data, list):
            raise EmkitError(f"{path}: expected a YAML list of questions")
        return [(f"{path} entry {i + 1} (id {d.get('id') if isinstance(d, dict) else '?'})", d) for i, d in enumerate(data)]
    if suffix == ".json":
        return [(f"{path} entry {i + 1}", d) for i, d in enumerate(read_json_list(path, "questions"))]
    if suffix == ".jsonl":
        rows = []
        with path.open("rb") as f:
            for n, line in text_lines(f, str(path), bad):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    bad.add(EmkitError(f"{path}:{n}: invalid JSON ({e.msg})"))
        return rows
    if suffix == ".csv":
        return read_csv_records(path)
    raise EmkitError(f"{path}: unknown question file type", hint="use .yaml, .jsonl, .json or .csv")


def read_question_file(path: Path, skip_bad: bool = False) -> list[Question]:
    """The questions of one file; duplicate ids and malformed entries raise :class:`EmkitError`, or with
    ``skip_bad`` are skipped and counted in one warning."""
    bad = BadRows(str(path), skip_bad)
    records = read_question_records(path, bad)
    questions: list[Question] = []
    seen: set[str] = set()
    for where, d in records:
        try:
            q = question_from_mapping(d, where)
            if q.id in seen:
                raise EmkitError(f"{where}: duplicate question id {q.id!r}", hint="ids must be unique in a file")
        except EmkitError as e:
            bad.add(e)
            continue
        seen.add(q.id)
        questions.append(q)
    bad.finish(len(records))
    if not questions:
        raise EmkitError(f"{path}: the question list is empty")
    return questions
