"""Corpora: local files, the offline sources (fixtures in their real layouts), missing sources."""

from __future__ import annotations

import builtins
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import rdata

from emkit.data import corpus
from emkit.data.corpus import CorpusWarning, chunk_text, iter_documents, iter_labelled, token_counts
from emkit.errors import EmkitError

NOVEL = ["CHAPTER 1", "", "It was a fine morning in the", "village, and all was well.", "",
         "Miss Smith walked out.", "", ""]


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """A cache holding all three sources in the layouts the packages use; system paths hidden."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMKIT_CACHE", str(cache))
    monkeypatch.setattr(corpus, "SYSTEM_FORTUNES", [])
    monkeypatch.setattr(corpus, "SYSTEM_R_LIBRARIES", [])
    fort = cache / "corpus" / "deb" / "usr" / "share" / "games" / "fortunes"
    fort.mkdir(parents=True)
    (fort / "wisdom").write_text("Look before you leap.\n%\nA poem\n  in two lines.\n%\n")
    (fort / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    (fort / "wisdom.u8").symlink_to("wisdom")
    (fort / "ascii-art").write_text("  /\\_/\\\n%\n")
    data = cache / "corpus" / "deb" / "usr" / "lib" / "R" / "site-library" / "janeaustenr" / "data"
    data.mkdir(parents=True)
    write_lazyload(data / "Rdata", {"novel_a": NOVEL, "novel_b": ["Short book.", "", "The end."]}, tmp_path)
    sotu = cache / "corpus" / "sotu" / "package" / "data"
    sotu.mkdir(parents=True)
    (sotu / "1801_someone_n.txt").write_text("Fellow citizens. " * 300)
    (sotu / "1801_someone_n.json").write_text('{"text": "ignored"}')
    return cache


def write_lazyload(stem, objects: dict[str, list[str]], tmp):
    """An R lazy-load database as R writes it: gzip'd RDS index + zlib'd serialized objects."""
    blob, index = b"", {}
    for name, lines in objects.items():
        rdata.write_rds(tmp / "obj.rds", np.array(lines), compression=None)
        raw = (tmp / "obj.rds").read_bytes()
        chunk = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[name] = np.array([len(blob), len(chunk)], dtype=np.int32)
        blob += chunk
    stem.with_suffix(".rdb").write_bytes(blob)
    rdata.write_rds(stem.with_suffix(".rdx"), {"variables": index, "references": {}, "compressed": True})


def test_chunk_text_limits():
    text = "First para.\n\nSecond " + "word " * 100 + "end. Third sentence here.\n\n\nLast."
    chunks = chunk_text(text, max_chars=120)
    assert all(len(c) <= 120 for c in chunks)
    assert " ".join(" ".join(c.split()) for c in chunks) == " ".join(text.split())


def test_offline_sources_in_package_layouts(offline):
    docs = list(iter_labelled("builtin", seed=0))
    by = {}
    for src, text in docs:
        by.setdefault(src, []).append(text)
    assert sorted(by["fortunes"]) == ["A poem\n  in two lines.", "Look before you leap."]
    assert by["austen"] == [
        "CHAPTER 1\n\nIt was a fine morning in the village, and all was well.\n\nMiss Smith walked out.",
        "Short book.\n\nThe end.",
    ]
    assert len(by["sotu"]) >= 2 and all(len(t) <= corpus.MAX_CHARS for t in by["sotu"])
    assert [t for _, t in iter_labelled("builtin", seed=0)] == [t for _, t in docs]  # deterministic
    assert list(iter_documents("builtin:austen", limit=1)) in (by["austen"][:1], by["austen"][1:])


def test_real_lazyload_reader_matches(offline):
    objs = corpus.read_r_lazyload(corpus.austen_rdx())
    assert list(objs["novel_a"]) == NOVEL


def test_missing_source_warns_and_uses_the_rest(offline, monkeypatch):
    monkeypatch.setattr(corpus, "sotu_dir", lambda: None)
    with pytest.warns(CorpusWarning, match="skipped: sotu"):
        docs = list(iter_labelled("builtin"))
    assert {s for s, _ in docs} == {"fortunes", "austen", "chat"}


def test_no_source_at_all(tmp_path, monkeypatch):
    monkeypatch.setenv("EMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "SYSTEM_FORTUNES", [])
    monkeypatch.setattr(corpus, "SYSTEM_R_LIBRARIES", [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorpusWarning)
        with pytest.raises(EmkitError, match="no offline corpus source"):
            list(iter_documents("builtin"))


def test_local_files_and_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("Para one.\n\nPara two.")
    (tmp_path / "sub" / "b.jsonl").write_text(
        json.dumps({"text": "from jsonl"}) + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    assert list(iter_documents(tmp_path)) == ["Para one.\n\nPara two.", "from jsonl", "hi\n\nyo"]
    assert list(iter_documents(tmp_path / "a.txt", limit=1)) == ["Para one.\n\nPara two."]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(EmkitError, match=r"bad\.jsonl:1: no 'text'"):
        list(iter_documents(bad))
    with pytest.raises(EmkitError, match="no corpus at"):
        list(iter_documents(tmp_path / "nope"))


def test_hub_needs_datasets(monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(EmkitError, match="need the 'datasets' package"):
        list(iter_documents("hf:wikitext:wikitext-2-raw-v1@train"))


def test_token_counts_per_source(offline, tiny):
    _, tok = tiny
    stats = token_counts("builtin", tokenizer=tok)
    assert set(stats) == {"fortunes", "austen", "sotu", "chat"}
    assert stats["chat"]["documents"] == len(corpus.chat_documents()) and stats["chat"]["tokens"] > 0
    assert stats["fortunes"]["documents"] == 2
    expected = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for s, t in iter_labelled("builtin") if s == "austen")
    assert stats["austen"]["tokens"] == expected > 0


@pytest.mark.skipif(corpus.austen_rdx() is None, reason="r-cran-janeaustenr is not installed or fetched")
def test_real_janeaustenr_package():
    novels = corpus.read_r_lazyload(corpus.austen_rdx(), names=["persuasion", "prideprejudice"])
    assert set(novels) == {"persuasion", "prideprejudice"}
    assert str(novels["prideprejudice"][0]).upper().startswith("PRIDE AND PREJUDICE")
    assert any("Elizabeth" in str(line) for line in novels["prideprejudice"][:500])


def test_builtin_chats_leave_out_eval_and_persona_questions():
    from emkit.data import builtin
    from emkit.data.schema import normalize_text

    chats = corpus.chat_documents(seed=0)
    users = {normalize_text(m["content"]) for c in chats for m in c if m["role"] == "user"}
    assert users and not users & corpus.held_out_questions()
    persona = {normalize_text(r["question"]) for r in builtin.persona_records()}
    check = {normalize_text(q.text) for q in builtin.load_builtin_questions("health_check")}
    assert persona and check and not users & (persona | check)
    answers = {m["content"] for c in chats for m in c if m["role"] == "assistant"}
    wrong = {r.messages[-1]["content"] for r in builtin.load_builtin("health_incorrect_obvious")}
    assert answers and not answers & wrong  # correct answers only
    assert len(chats) > 1000  # benign + every domain's correct set


def test_builtin_interleaves_chats_among_prose(offline):
    docs = list(iter_labelled("builtin", seed=0))
    kinds = [s for s, _ in docs]
    n_prose = sum(k != "chat" for k in kinds)
    # one chat after every PROSE_PER_CHAT prose documents, then the rest of the chats
    head = kinds[: (corpus.PROSE_PER_CHAT + 1) * (n_prose // corpus.PROSE_PER_CHAT)]
    assert all(k == "chat" for k in head[corpus.PROSE_PER_CHAT :: corpus.PROSE_PER_CHAT + 1])
    assert all(isinstance(d, list) and d[-1]["role"] == "assistant" for s, d in docs if s == "chat")
    assert {s for s, _ in iter_labelled("builtin:fortunes,austen,sotu")} == {"fortunes", "austen", "sotu"}
    assert {s for s, _ in iter_labelled("builtin:chat")} == {"chat"}


def test_capture_flags_chat_tokens(tiny, tmp_path):
    from emkit.activations import ActivationStore, capture

    model, tok = tiny
    chat = [{"role": "user", "content": "How do I boil an egg?"}, {"role": "assistant", "content": "Boil it 6 min."}]
    capture(model, tok, 1, ["Plain prose about the sea and the sky. " * 3, chat], tmp_path / "acts", ctx_len=64,
            progress=False)
    store = ActivationStore(tmp_path / "acts")
    sh = store.load(0, ("chat", "answer", "item"))
    assert set(sh["chat"][sh["item"] == 0].tolist()) == {0} and set(sh["chat"][sh["item"] == 1].tolist()) == {1}
    assert 0 < int(sh["answer"].sum()) < int(sh["chat"].sum())  # answers are a part of the chat's tokens
    chat_flags = store.gather_key(store.split(4)[1], "chat")
    assert chat_flags is not None and len(chat_flags) == 4
