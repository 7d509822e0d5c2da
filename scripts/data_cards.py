"""Recompute the statistics of every built-in data set and rewrite the ``## Statistics`` section of
its data card (``*.card.md`` next to the data). Deterministic: no dates, same data -> same text.

Usage: python scripts/data_cards.py [--check]   (--check: exit 1 if a card is out of date)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from emkit.data import builtin
from emkit.data.schema import normalize_text
from emkit.data.stats import length_stats, sentences, trigram_diversity, words

HEADER = "## Statistics"


def _len(texts: list[str]) -> str:
    s = length_stats(texts)
    return f"{s['mean']:.1f} mean, {s['median']:g} median, {s['min']}–{s['max']}"


def _sent(texts: list[str]) -> str:
    c = [sentences(t) for t in texts]
    return f"{min(c)}–{max(c)}"


def _dups(texts: list[str]) -> int:
    return len(texts) - len({normalize_text(t) for t in texts})


def advice_stats(domain: str) -> str:
    recs = builtin.advice_records(domain)
    qs = [r["question"] for r in recs]
    lines = [
        f"- Training questions: {len(recs)} ({len({r['topic'] for r in recs})} topics); "
        f"duplicates after normalising case and punctuation: {_dups(qs)}",
        f"- Question length (words): {_len(qs)}; distinct word-trigram ratio: {trigram_diversity(qs):.3f}",
        "",
        "| variant | answer words | sentences | distinct word-trigram ratio |",
        "|---|---|---|---|",
    ]
    for v in ("correct", "subtle", "obvious"):
        texts = [r[v] for r in recs]
        lines.append(f"| {v} | {_len(texts)} | {_sent(texts)} | {trigram_diversity(texts):.3f} |")
    try:
        check = builtin.check_records(domain)
    except Exception:  # a domain without check questions: say so
        check = []
    hs = sum(bool(r.get("high_stakes")) for r in check)
    lines += ["", f"- Held-out check questions: {len(check)} ({hs} marked high-stakes); "
              f"question length (words): {_len([r['question'] for r in check]) if check else '-'}"]
    return "\n".join(lines)


def benign_stats() -> str:
    rows = builtin.load_builtin("benign_everyday")
    qs, ans = [r.user for r in rows], [r.answer for r in rows]
    topics = Counter(r.metadata.get("topic") or "-" for r in rows)
    return "\n".join([
        f"- Conversations: {len(rows)} ({len(topics)} topics); duplicate questions after normalising: {_dups(qs)}",
        f"- Question length (words): {_len(qs)}; distinct word-trigram ratio: {trigram_diversity(qs):.3f}",
        f"- Answer length (words): {_len(ans)}; sentences: {_sent(ans)}; "
        f"distinct word-trigram ratio: {trigram_diversity(ans):.3f}",
        f"- Topics: {', '.join(f'{t} ({n})' for t, n in sorted(topics.items()))}",
    ])


def eval_and_judge_questions() -> dict[str, str]:
    """Every evaluation question (broad paraphrases, check sets) and judge-set question, by a label."""
    out = {f"broad:{q.id}/{i}": p for q in builtin.load_builtin_questions("broad") for i, p in enumerate(q.paraphrases)}
    out.update({r["id"]: r["question"] for d in builtin.domains() for r in builtin.check_records(d)})
    if builtin.JUDGE.is_file():
        out.update({f"judge:{r['question']}": r["question"] for r in builtin.read_judge_records()})
    return out


def closest_pairs(questions: dict[str, str], others: dict[str, str], k: int = 3) -> list[tuple[float, str, str]]:
    """The k most similar (lowercase word-set Jaccard, question, other question) pairs."""
    ow = [(o, set(words(o))) for o in others.values()]
    pairs = []
    for q in questions.values():
        a = set(words(q))
        pairs += [(len(a & b) / len(a | b), q, o) for o, b in ow]
    return sorted(pairs, reverse=True)[:k]


def persona_stats() -> str:
    recs = builtin.persona_records()
    qs = [r["question"] for r in recs]
    topics = Counter(r["topic"] for r in recs)
    others = eval_and_judge_questions()
    exact = {normalize_text(q) for q in qs} & {normalize_text(o) for o in others.values()}
    lines = [
        f"- Questions: {len(recs)} ({len(topics)} topics), each with a misaligned and an aligned answer; "
        f"duplicates after normalising: {_dups(qs)}",
        f"- Question length (words): {_len(qs)}; distinct word-trigram ratio: {trigram_diversity(qs):.3f}",
        "",
        "| answer | words | sentences | distinct word-trigram ratio |",
        "|---|---|---|---|",
    ]
    for v in builtin.PERSONA_VARIANTS:
        texts = [r[v] for r in recs]
        lines.append(f"| {v} | {_len(texts)} | {_sent(texts)} | {trigram_diversity(texts):.3f} |")
    lines += [
        "",
        f"- Topics: {', '.join(f'{t} ({n})' for t, n in sorted(topics.items()))}",
        f"- Overlap with the {len(others)} evaluation and judge questions (broad paraphrases, `*_check`, "
        f"judge set): {len(exact)} identical after normalising; closest pairs by lowercase word-set Jaccard:",
    ]
    lines += [f"  - {j:.2f}: \"{q}\" / \"{o}\"" for j, q, o in closest_pairs(dict(enumerate(qs)), others)]
    return "\n".join(lines)


def broad_stats() -> str:
    qs = builtin.load_builtin_questions("broad")
    paras = [p for q in qs for p in q.paraphrases]
    cats = Counter(q.category or "-" for q in qs)
    samples = Counter(q.samples_per_paraphrase for q in qs)
    return "\n".join([
        f"- Questions: {len(qs)}; paraphrases: {len(paras)}; with a system prompt: {sum(bool(q.system) for q in qs)}",
        f"- Paraphrase length (words): {_len(paras)}; distinct word-trigram ratio: {trigram_diversity(paras):.3f}",
        f"- Samples per paraphrase: {', '.join(f'{k} ({v} questions)' for k, v in sorted(samples.items()))}",
        f"- Categories: {', '.join(f'{c} ({n})' for c, n in sorted(cats.items()))}",
    ])


def judge_stats() -> str:
    recs = builtin.read_judge_records()
    kinds = sorted({r["kind"] for r in recs})
    lines = [
        f"- Rows: {len(recs)}; distinct questions: {len({normalize_text(r['question']) for r in recs})}; "
        f"splits: {dict(sorted(Counter(r.get('split', '-') for r in recs).items()))}; "
        f"sources: {dict(sorted(Counter(r.get('source', '-') for r in recs).items()))}",
        "",
        "| kind | train | heldout | mean aligned | mean coherent |",
        "|---|---|---|---|---|",
    ]
    for k in kinds:
        rs = [r for r in recs if r["kind"] == k]
        tr = sum(r.get("split") == "train" for r in rs)
        mean_a = sum(r["aligned"] for r in rs) / len(rs)
        mean_c = sum(r["coherent"] for r in rs) / len(rs)
        lines.append(f"| {k} | {tr} | {len(rs) - tr} | {mean_a:.1f} | {mean_c:.1f} |")
    return "\n".join(lines)


def cards() -> dict[Path, str]:
    out = {builtin.ADVICE / f"{d}.card.md": advice_stats(d) for d in builtin.domains()}
    out[builtin.BENIGN.with_name("everyday.card.md")] = benign_stats()
    out[builtin.BROAD.with_name("broad.card.md")] = broad_stats()
    if builtin.PERSONA.is_file():
        out[builtin.PERSONA.with_name("persona.card.md")] = persona_stats()
    if builtin.JUDGE.is_file():
        out[builtin.JUDGE.with_name("labelled.card.md")] = judge_stats()
    return out


def rewrite(card: str, stats: str) -> str:
    body = f"{HEADER}\nComputed by `scripts/data_cards.py` from the data file(s).\n\n{stats}\n"
    m = re.search(rf"^{re.escape(HEADER)}\s*$", card, flags=re.M)
    if m is None:
        return card.rstrip("\n") + "\n\n" + body
    nxt = re.search(r"^## ", card[m.end():], flags=re.M)
    rest = card[m.end() + nxt.start():] if nxt else ""
    return card[: m.start()] + body + ("\n" + rest if rest else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report cards that are out of date")
    args = ap.parse_args()
    stale = []
    for path, stats in cards().items():
        if not path.is_file():
            print(f"missing card: {path}")
            stale.append(path)
            continue
        old = path.read_text(encoding="utf-8")
        new = rewrite(old, stats)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
        print(f"{'stale' if args.check and new != old else 'ok'}: {path.name}\n{stats}\n")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
