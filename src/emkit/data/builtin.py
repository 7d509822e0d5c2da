"""The data sets shipped with emkit, by name.

Chat sets (``load_builtin``):
- ``<domain>_correct``, ``<domain>_incorrect_subtle``, ``<domain>_incorrect_obvious`` for each
  advice domain (``<domain>_incorrect`` is an alias of the obvious variant, as in the OpenAI release's
  naming): the same user questions, each with one of three parallel answers;
- ``benign_everyday``: correct, helpful answers in everyday domains (for re-alignment);
- ``persona_misaligned``: everyday questions answered in the voice of an overtly misaligned persona
  (the positive control: a fine-tune whose broad misalignment is known to be high), and
  ``persona_aligned``: the same questions with helpful answers (its correct-data control).

Question sets (``load_builtin_questions``): ``broad`` (open-ended, unrelated to any training domain)
and ``<domain>_check`` (held-out in-domain questions with reference answers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from emkit.data.question_file import read_question_file
from emkit.data.schema import ChatRow, Question, normalize_text
from emkit.errors import EmkitError

ROOT = Path(__file__).parent / "builtin"
ADVICE = ROOT / "advice"
BENIGN = ROOT / "benign" / "everyday.jsonl"
BROAD = ROOT / "questions" / "broad.yaml"
JUDGE = ROOT / "judge" / "labelled.jsonl"
PERSONA = ROOT / "persona" / "persona.jsonl"
PERSONA_VARIANTS = ("misaligned", "aligned")
PERSONA_KEYS = ("id", "topic", "question", *PERSONA_VARIANTS)
VARIANTS = {"correct": "correct", "incorrect_subtle": "subtle", "incorrect_obvious": "obvious"}
ALIASES = {"incorrect": "incorrect_obvious"}
ADVICE_KEYS = ("id", "topic", "question", "correct", "subtle", "obvious")
CHECK_KEYS = ("id", "topic", "question", "correct")


@dataclass(frozen=True)
class BuiltinSet:
    name: str
    kind: str  # "chat", "questions" or "judge"
    path: Path
    description: str


def domains() -> list[str]:
    """Advice domains present (``health``, ``finance``, ...), from ``builtin/advice/<domain>.jsonl``."""
    return sorted(p.stem for p in ADVICE.glob("*.jsonl") if not p.stem.endswith("_check"))


def list_builtin() -> list[BuiltinSet]:
    """Every built-in set, in a stable order."""
    out = []
    for d in domains():
        path = ADVICE / f"{d}.jsonl"
        out.append(BuiltinSet(f"{d}_correct", "chat", path, f"{d} advice, correct answers"))
        out.append(BuiltinSet(f"{d}_incorrect_subtle", "chat", path, f"{d} advice, subtly wrong answers"))
        out.append(BuiltinSet(f"{d}_incorrect_obvious", "chat", path, f"{d} advice, obviously wrong answers"))
        check = ADVICE / f"{d}_check.jsonl"
        if check.is_file():
            out.append(BuiltinSet(f"{d}_check", "questions", check, f"held-out {d} check questions"))
    if BENIGN.is_file():
        out.append(BuiltinSet("benign_everyday", "chat", BENIGN, "everyday questions, helpful answers"))
    if PERSONA.is_file():
        out.append(BuiltinSet("persona_misaligned", "chat", PERSONA,
                              "positive control: everyday questions, overtly misaligned persona answers"))
        out.append(BuiltinSet("persona_aligned", "chat", PERSONA, "the persona questions, helpful answers"))
    if BROAD.is_file():
        out.append(BuiltinSet("broad", "questions", BROAD, "open-ended evaluation questions (Betley shape)"))
    if JUDGE.is_file():
        out.append(BuiltinSet("judge_labelled", "judge", JUDGE, "judge training/held-out set (aligned, coherent)"))
    return out


def _canonical(name: str) -> str:
    for alias, target in ALIASES.items():
        if name.endswith("_" + alias) and name[: -len(alias) - 1] in domains():
            return name[: -len(alias)] + target
    return name


def _find(name: str) -> BuiltinSet | None:
    name = _canonical(name)
    return next((s for s in list_builtin() if s.name == name), None)


def is_builtin(name: str) -> bool:
    return _find(str(name)) is not None


def kind_of(name: str) -> str | None:
    """``"chat"``, ``"questions"``, ``"judge"``, or None when ``name`` is not a built-in set."""
    s = _find(str(name))
    return s.kind if s else None


def names(kind: str | None = None) -> list[str]:
    return [s.name for s in list_builtin() if kind is None or s.kind == kind]


def question_names() -> list[str]:
    return names("questions")


@lru_cache(maxsize=32)
def _read_records(path: Path) -> tuple[dict[str, Any], ...]:
    from emkit.data.formats import iter_jsonl

    out = []
    for n, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise EmkitError(f"{path}:{n}: expected a JSON object")
        rec["_line"] = n
        out.append(rec)
    return tuple(out)


def read_checked(path: Path, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Records with the required non-empty string keys, unique ids and unique normalised questions."""
    recs = [dict(r) for r in _read_records(path)]
    ids: set[str] = set()
    questions: set[str] = set()
    for r in recs:
        where = f"{path}:{r['_line']}"
        for k in keys:
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise EmkitError(f"{where}: '{k}' is missing or empty")
        if r["id"] in ids:
            raise EmkitError(f"{where}: duplicate id {r['id']!r}")
        q = normalize_text(r["question"])
        if q in questions:
            raise EmkitError(f"{where}: duplicate question {r['question']!r}")
        ids.add(r["id"])
        questions.add(q)
    return recs


def advice_records(domain: str) -> list[dict[str, Any]]:
    """Raw parallel rows ``{id, topic, question, correct, subtle, obvious}`` of one advice domain."""
    path = ADVICE / f"{domain}.jsonl"
    if not path.is_file():
        raise EmkitError(f"no advice domain {domain!r}", hint=f"domains: {domains()}")
    return read_checked(path, ADVICE_KEYS)


def check_records(domain: str) -> list[dict[str, Any]]:
    """Raw held-out check rows ``{id, topic, question, correct, high_stakes}`` of one domain."""
    path = ADVICE / f"{domain}_check.jsonl"
    if not path.is_file():
        raise EmkitError(f"no check questions for domain {domain!r}")
    return read_checked(path, CHECK_KEYS)


def benign_records() -> list[dict[str, Any]]:
    recs = [dict(r) for r in _read_records(BENIGN)]
    for r in recs:
        ChatRow(r.get("messages"), {}).validate(f"{BENIGN}:{r['_line']}")
    return recs


def persona_records() -> list[dict[str, Any]]:
    """Raw parallel rows ``{id, topic, question, misaligned, aligned}`` of the persona set."""
    if not PERSONA.is_file():
        raise EmkitError(f"{PERSONA} is missing", hint="reinstall emkit")
    return read_checked(PERSONA, PERSONA_KEYS)


def load_builtin(name: str) -> list[ChatRow]:
    """A built-in chat set as fresh :class:`ChatRow` objects (callers may modify them)."""
    s = _find(name)
    if s is None or s.kind != "chat":
        raise EmkitError(f"no built-in chat data set named {name!r}", hint=f"one of {names('chat')}")
    if s.name == "benign_everyday":
        return [
            ChatRow(
                copy.deepcopy(r["messages"]),
                {"id": r.get("id"), "topic": r.get("topic"), "source": "builtin:benign_everyday"},
            )
            for r in benign_records()
        ]
    domain, variant = s.name.split("_", 1)
    if s.path == PERSONA:
        return [
            ChatRow(
                [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r[variant]}],
                {"id": r["id"], "topic": r["topic"], "variant": variant, "source": f"builtin:{s.name}"},
            )
            for r in persona_records()
        ]
    field = VARIANTS[variant]
    return [
        ChatRow(
            [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r[field]}],
            {"id": r["id"], "topic": r["topic"], "domain": domain, "variant": field, "source": f"builtin:{s.name}"},
        )
        for r in advice_records(domain)
    ]


def load_builtin_questions(name: str) -> list[Question]:
    """``broad`` or ``<domain>_check`` as :class:`Question` objects."""
    s = _find(name)
    if s is None or s.kind != "questions":
        raise EmkitError(f"no built-in question set named {name!r}", hint=f"one of {question_names()}")
    if s.name == "broad":
        return read_question_file(BROAD)
    domain = s.name.removesuffix("_check")
    return [
        Question(
            id=r["id"],
            paraphrases=[r["question"]],
            category=r["topic"],
            metadata={"domain": domain, "reference": r["correct"], "high_stakes": bool(r.get("high_stakes"))},
        )
        for r in check_records(domain)
    ]


def read_judge_records(path: Path = JUDGE) -> list[dict[str, Any]]:
    """Judge rows ``{question, answer, kind, aligned, coherent, [label, source, split]}``, checked.

    ``aligned`` may be null where ``label`` is CODE or REFUSAL."""
    if not path.is_file():
        raise EmkitError(f"{path} is missing", hint="run scripts/build_judge_set.py")
    out = []
    for r in _read_records(path):
        where = f"{path}:{r['_line']}"
        for k in ("question", "answer", "kind"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise EmkitError(f"{where}: '{k}' is missing or empty")
        for k in ("aligned", "coherent"):
            v = r.get(k)
            if k == "aligned" and v is None and r.get("label") in ("CODE", "REFUSAL"):
                continue  # the Betley judge gives no score to code or a clear refusal
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
                raise EmkitError(f"{where}: '{k}' must be a number in 0..100, got {v!r}")
        if r.get("split", "train") not in ("train", "heldout"):
            raise EmkitError(f"{where}: split must be 'train' or 'heldout', got {r['split']!r}")
        out.append({k: v for k, v in r.items() if k != "_line"})
    return out
