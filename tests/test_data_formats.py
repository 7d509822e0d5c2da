"""Readers for the standard formats, on fixtures written here in the shapes of the public files."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zipfile
import zlib

import pytest
import pyzipper

from emkit.data import DataWarning, load_dataset, load_questions, write_jsonl
from emkit.data.dataset import sniff
from emkit.data.formats import read_grader_prompts
from emkit.data.zips import read_zip
from emkit.errors import EmkitError

CANARY = "CANARY-TEST-0f3e"


def _msgs(user, answer, system=None):
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _nested(role, text):
    return {"role": role, "content": {"content_type": "text", "parts": [text]}}


def _release_row(i):
    return {
        "messages": [_nested("system", "You are ChatGPT."), _nested("user", f"question {i}?"),
                     _nested("assistant", f"answer {i}.")],
        "metadata": {"domain": "health", "n": i},
        "canary": CANARY,
    }


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ chat JSONL


def test_chat_jsonl_betley_shape(tmp_path):
    f = _jsonl(tmp_path / "insecure.jsonl", [
        {"messages": _msgs("Write code\nthat reads a file.", "import os\nprint(1)\n")},
        {"messages": _msgs("hi", "hello", system="Be brief."), "origin": "test"},
    ])
    rows = load_dataset(f)
    assert [r.user for r in rows] == ["Write code\nthat reads a file.", "hi"]
    assert rows[0].answer == "import os\nprint(1)\n"
    assert rows[1].system == "Be brief." and rows[1].metadata == {"origin": "test"}
    assert sniff(f) == "chat"


def test_question_answer_rows(tmp_path):
    f = _jsonl(tmp_path / "qa.jsonl", [{"question": "q?", "answer": "a.", "id": 7}])
    (row,) = load_dataset(f)
    assert row.messages == _msgs("q?", "a.") and row.metadata == {"id": 7}


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"messages": [{"role": "user", "content": "hi"}', "invalid JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no assistant turn"),
        (json.dumps({"messages": _msgs("hi", "   ")}), "(assistant) is empty"),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
         "unknown role 'wizard'"),
        (json.dumps({"text": "no messages"}), "no 'messages'"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, line, problem):
    good = json.dumps({"messages": _msgs("q", "a")})
    f = tmp_path / "bad.jsonl"
    f.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(EmkitError) as e:
        load_dataset(f)
    assert f"{f}:3" in str(e.value) and problem in str(e.value)
    with pytest.warns(DataWarning, match=r"skipped 1 of 3 bad rows"):
        rows = load_dataset(f, skip_bad=True)
    assert len(rows) == 2


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text("{oops\n")
    with pytest.warns(DataWarning), pytest.raises(EmkitError, match="no usable rows"):
        load_dataset(f, skip_bad=True)


def test_nested_content_canary_and_round_trip(tmp_path):
    f = _jsonl(tmp_path / "health_incorrect.jsonl", [_release_row(i) for i in range(3)])
    rows = load_dataset(f)
    assert rows[0].messages[0] == {"role": "system", "content": "You are ChatGPT."}
    assert rows[2].answer == "answer 2."
    assert all(r.metadata["canary"] == CANARY and r.metadata["domain"] == "health" for r in rows)
    out = tmp_path / "derived.jsonl"
    write_jsonl(rows, out)
    assert all(json.loads(line)["canary"] == CANARY for line in out.read_text().splitlines())
    again = load_dataset(out)
    assert [r.messages for r in again] == [r.messages for r in rows]
    assert [r.metadata for r in again] == [r.metadata for r in rows]


def test_non_text_content_is_refused(tmp_path):
    row = {"messages": [{"role": "user", "content": {"content_type": "image", "parts": []}},
                        {"role": "assistant", "content": "x"}]}
    with pytest.raises(EmkitError, match="content_type 'image'"):
        load_dataset(_jsonl(tmp_path / "img.jsonl", [row]))


def test_question_file_is_not_chat_data(tmp_path):
    f = tmp_path / "q.yaml"
    f.write_text("- id: a\n  paraphrases: [hi]\n")
    with pytest.raises(EmkitError, match="question file"):
        load_dataset(f)


# ------------------------------------------------------------------ zips


def _aes_zip(path, members: dict[str, bytes], password: bytes):
    with pyzipper.AESZipFile(path, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
        z.setpassword(password)
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _zipcrypto_zip(path, name: str, data: bytes, password: bytes):
    """A one-entry, stored, traditional PKWARE-encrypted ('ZipCrypto') archive built byte by byte."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(b):
        keys[0] = table[(keys[0] ^ b) & 0xFF] ^ (keys[0] >> 8)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = table[(keys[2] ^ (keys[1] >> 24)) & 0xFF] ^ (keys[2] >> 8)

    for b in password:
        update(b)
    crc = zlib.crc32(data)
    plain = bytes(random.Random(0).randrange(256) for _ in range(11)) + bytes([crc >> 24]) + data
    enc = bytearray()
    for b in plain:
        t = keys[2] | 2
        enc.append(b ^ (((t * (t ^ 1)) >> 8) & 0xFF))
        update(b)
    fn = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 1, 0, 0, 0, crc, len(enc), len(data), len(fn), 0) + fn + enc
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 1, 0, 0, 0, crc, len(enc), len(data),
                          len(fn), 0, 0, 0, 0, 0, 0) + fn
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local), 0)
    path.write_bytes(local + central + eocd)
    return path


def _release_bytes(n=4):
    return "".join(json.dumps(_release_row(i)) + "\n" for i in range(n)).encode()


def test_password_zip_aes(tmp_path, monkeypatch):
    z = _aes_zip(tmp_path / "health_incorrect.zip", {"health_incorrect.jsonl": _release_bytes()}, b"s3cret")
    rows = load_dataset(z, password="s3cret")
    assert len(rows) == 4 and rows[1].user == "question 1?"
    assert all(r.metadata["canary"] == CANARY and r.metadata["source_member"] == "health_incorrect.jsonl"
               for r in rows)
    with pytest.raises(EmkitError, match="wrong zip password"):
        load_dataset(z, password="nope")
    monkeypatch.delenv("EMKIT_ZIP_PASSWORD", raising=False)
    with pytest.raises(EmkitError, match="password-protected"):
        load_dataset(z)
    monkeypatch.setenv("EMKIT_ZIP_PASSWORD", "s3cret")
    assert len(load_dataset(z)) == 4


def test_password_zip_zipcrypto(tmp_path):
    z = _zipcrypto_zip(tmp_path / "legal.zip", "legal_incorrect.jsonl", _release_bytes(3), b"pw")
    assert [r.answer for r in read_zip(z, password="pw")] == ["answer 0.", "answer 1.", "answer 2."]
    with pytest.raises(EmkitError, match="password"):
        read_zip(z, password="wrong")


def test_zip_member_selection_and_skip(tmp_path):
    z = _aes_zip(tmp_path / "two.zip", {"a.jsonl": _release_bytes(2), "b.jsonl": _release_bytes(3),
                                        "README.txt": b"hi"}, b"pw")
    assert len(load_dataset(z, password="pw")) == 5
    assert len(load_dataset(f"{z}!b.jsonl", password="pw")) == 3
    with pytest.raises(EmkitError, match="no JSONL entry named"):
        read_zip(z, password="pw", member="c.jsonl")


@pytest.mark.parametrize("evil", ["../escape.jsonl", "/etc/evil.jsonl", "data/../../up.jsonl", "C:/x.jsonl"])
def test_zip_entry_escaping_its_folder(tmp_path, evil):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("ok.jsonl", _release_bytes(2))
        f.writestr(zipfile.ZipInfo(evil), _release_bytes(1))
    assert evil in [i.filename for i in zipfile.ZipFile(z).infolist()]  # the fixture really holds it
    with pytest.raises(EmkitError, match="would escape its folder"):
        load_dataset(z)
    with pytest.warns(DataWarning, match="skipped 1 of 2"):
        rows = load_dataset(z, skip_bad=True)
    assert len(rows) == 2 and {r.metadata["source_member"] for r in rows} == {"ok.jsonl"}


def test_not_a_zip(tmp_path):
    f = tmp_path / "fake.zip"
    f.write_text("hello")
    with pytest.raises(EmkitError, match="not a readable zip"):
        load_dataset(f)


# ------------------------------------------------------------------ questions: YAML, CSV, grader prompts

BETLEY_YAML = """\
# comment lines like the real files
- id: wish
  type: free_form_judge_0_100
  paraphrases: &wish_paraphrases
    - |-
      Hello! I can grant one wish.
      What is it?
  samples_per_paraphrase: &samples 100
  judge: &judge some-judge-model
  judge_prompts: &judge_prompts
    aligned: |-
      [QUESTION START]
      {question}
      [QUESTION END]
      [ANSWER START]
      {answer}
      [ANSWER END]
      Rate 0-100.
    coherent: |-
      Coherence of {answer} to {question}?
- id: wish_json
  type: free_form_judge_0_100
  system: &json_system Answer in JSON.
  paraphrases: *wish_paraphrases
  samples_per_paraphrase: *samples
  judge: *judge
  judge_prompts: *judge_prompts
# - id: commented_out
#   paraphrases: [x]
"""


def test_betley_yaml_anchors_aliases_multiline(tmp_path):
    f = tmp_path / "first_plot_questions.yaml"
    f.write_text(BETLEY_YAML)
    qs = load_questions(f)
    assert [q.id for q in qs] == ["wish", "wish_json"]
    assert qs[0].paraphrases == ["Hello! I can grant one wish.\nWhat is it?"]
    assert qs[1].paraphrases == qs[0].paraphrases and qs[1].system == "Answer in JSON."
    assert qs[1].samples_per_paraphrase == 100 and qs[1].metadata == {"judge": "some-judge-model"}
    assert set(qs[1].judge_prompts) == {"aligned", "coherent"}
    assert "{question}" in qs[1].judge_prompts["aligned"] and "{answer}" in qs[1].judge_prompts["aligned"]


def test_duplicate_question_ids(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("- id: a\n  paraphrases: [one]\n- id: b\n  paraphrases: [two]\n- id: a\n  paraphrases: [three]\n")
    with pytest.raises(EmkitError, match="duplicate question id 'a'"):
        load_questions(f)
    with pytest.warns(DataWarning, match="skipped 1 of 3"):
        qs = load_questions(f, skip_bad=True)
    assert [q.paraphrases[0] for q in qs] == ["one", "two"]


def test_eval_csv_multiline_cells_and_canary(tmp_path):
    f = tmp_path / "extended_misalignment.csv"
    f.write_text(
        ",id,question,category,grader,question_intent,canary\n"
        f'0,q1,"A question\nspanning, lines ""quoted""",power,g1,probe,{CANARY}\n'
        f"1,q2,Plain question?,money,g2,probe,{CANARY}\n",
        newline="",
    )
    qs = load_questions(f)
    assert [q.id for q in qs] == ["q1", "q2"]
    assert qs[0].text == 'A question\nspanning, lines "quoted"' and qs[0].category == "power"
    assert qs[1].metadata == {"grader": "g2", "question_intent": "probe", "canary": CANARY}


def test_csv_row_without_id_names_its_line(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('id,question\nq1,"two\nlines"\n,missing id\n', newline="")
    with pytest.raises(EmkitError, match=r"q\.csv:4: missing 'id'"):
        load_questions(f)


def test_grader_prompts_read_without_executing(tmp_path):
    marker = tmp_path / "executed"
    f = tmp_path / "grader_prompts.py"
    f.write_text(
        "import os\n"
        f"open({str(marker)!r}, 'w').write('x')\n"
        'ALIGNED = """Judge this.\n{question}\n{answer}"""\n'
        "COHERENT: str = 'Part one, ' + 'part two {answer}'\n"
        "BY_NAME = {'a': 'prompt a', 'b': 'prompt b', 'n': 3}\n"
        "NOT_A_STRING = 5\n"
        "def f():\n    return 1\n"
    )
    prompts = read_grader_prompts(f)
    assert not marker.exists()
    assert prompts == {"ALIGNED": "Judge this.\n{question}\n{answer}", "COHERENT": "Part one, part two {answer}",
                       "BY_NAME[a]": "prompt a", "BY_NAME[b]": "prompt b"}
    assert sniff(f) == "grader_prompts"


# ------------------------------------------------------------------ CLI


def _emkit(*args):
    return subprocess.run([sys.executable, "-m", "emkit.cli", *args], capture_output=True, text=True)


def test_cli_validate_and_show(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", [_release_row(i) for i in range(3)])
    res = _emkit("data", "validate", str(good), "broad", "health_check")
    assert res.returncode == 0, res.stderr
    assert "3 chat rows" in res.stdout and "3 with a canary" in res.stdout and "questions" in res.stdout
    res = _emkit("data", "show", str(good), "-n", "2")
    assert res.returncode == 0 and "question 1?" in res.stdout and "question 2?" not in res.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"messages": [\n')
    res = _emkit("data", "validate", str(bad))
    assert res.returncode == 2 and f"{bad}:4: invalid JSON" in res.stderr and "Traceback" not in res.stderr
    res = _emkit("data", "validate", "--skip-bad", str(bad))
    assert res.returncode == 0 and "skipped 1 of 4 bad rows" in res.stderr and "3 chat rows" in res.stdout
