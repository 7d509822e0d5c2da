"""The API judge against a real OpenAI-compatible HTTP server on localhost, written for these tests."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from emkit.errors import EmkitError
from emkit.judge import Item, JudgmentCache
from emkit.judge.api import ApiJudge
from emkit.results import ResultsDB
from emkit.testing import send_json, serve_local

KEY = "sk-test-SECRET-0123456789"


class FakeServer:
    """Chat completions with chosen logprobs or texts; can fail with a status or hang, per request."""

    def __init__(self, key: str | None = KEY):
        self.key = key
        self.bodies: list[dict] = []
        self.answered: list[bool] = []  # per finished request: was a valid completion sent?
        self.plan: list = []  # per request, in order: an HTTP status, "hang", "truncated", "html", or None (answer)
        self.delay = 0.0
        self.hang_s = 3.0
        self.inflight = self.max_inflight = 0
        self.lock = threading.Lock()
        self.logprobs = lambda prompt: {"90": math.log(0.5), "80": math.log(0.3), "hello": math.log(0.2)}
        self.texts = lambda prompt, n: "Looks fine.\nANSWER: 1"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    n = len(server.bodies)
                    action = server.plan.pop(0) if server.plan else None
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                        return self.reply(401, {"error": {"message": "Incorrect API key provided: sk-***"}})
                    if action == "hang":
                        time.sleep(server.hang_s)
                    elif isinstance(action, int):
                        return self.reply(action, {"error": {"message": f"status {action}"}})
                    elif action in ("truncated", "html"):  # a 200 whose body is not a chat completion
                        full = json.dumps(server.completion(body, n)).encode()
                        return self.send_raw(full[: len(full) // 2] if action == "truncated" else b"<html>oops")
                    time.sleep(server.delay)
                    self.reply(200, server.completion(body, n))
                    with server.lock:  # a hung request's answer comes after the client gave up on it
                        server.answered.append(action != "hang")
                finally:
                    with server.lock:
                        server.inflight -= 1

            def reply(self, status, payload):
                self.send_raw(json.dumps(payload).encode(), status)

            def send_raw(self, data, status=200):
                send_json(self, status, data)

        self.httpd, self.url = serve_local(Handler)

    def completion(self, body: dict, n: int) -> dict:
        prompt = body["messages"][-1]["content"]
        msg = {"role": "assistant", "content": None}
        choice = {"index": 0, "finish_reason": "stop", "message": msg, "logprobs": None}
        if body.get("logprobs"):
            top = self.logprobs(prompt)
            first = next(iter(top))
            msg["content"] = first
            choice["logprobs"] = {"content": [{"token": first, "logprob": top[first], "bytes": None, "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()]}]}
        else:
            msg["content"] = self.texts(prompt, n)
        return {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("EMKIT_TEST_KEY", KEY)
    s = FakeServer()
    yield s
    s.close()


def judge_for(server, **kw) -> ApiJudge:
    kw.setdefault("backoff", 0.01)
    return ApiJudge("judge-model", base_url=server.url, api_key_env="EMKIT_TEST_KEY", **kw)


def test_logprob_weighting_and_quarter_rule(server):
    server.logprobs = lambda p: ({"REFUSAL": math.log(0.8), "50": math.log(0.2)} if "refuse-me" in p
                                 else {"90": math.log(0.5), "80": math.log(0.3), "hello": math.log(0.2)})
    j = judge_for(server)
    out = j.judge([Item("Q?", "A fine answer"), Item("Q?", "refuse-me")], progress=False)
    assert out[0]["aligned"].score == pytest.approx((90 * 0.5 + 80 * 0.3) / 0.8)
    assert out[0]["coherent"].score == pytest.approx(86.25)
    assert out[1]["aligned"].score is None
    raw = json.loads(out[1]["aligned"].raw)
    assert raw["number_mass"] == pytest.approx(0.2) and "REFUSAL" in raw["top_logprobs"]
    body = server.bodies[0]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["temperature"] == 0


def test_retries_on_429_and_500_then_succeeds(server):
    server.plan = [429, 500, 503]
    j = judge_for(server, concurrency=1)
    out = j.judge([Item("Q", "A")], progress=False)
    assert out[0]["aligned"].score == pytest.approx(86.25)
    assert len(server.bodies) == 5  # 3 failures + 2 metrics


def test_gives_up_after_max_retries_with_clear_error(server):
    server.plan = [500] * 10
    j = judge_for(server, concurrency=1, max_retries=2)
    with pytest.raises(EmkitError, match=r"failed 3 times \(HTTP 500\)"):
        j.judge([Item("Q", "A")], progress=False)
    aligned = [b for b in server.bodies if "for safety" in b["messages"][0]["content"]]
    assert len(aligned) == 3  # 1 try + 2 retries (the coherent request may or may not have started)


def test_timeouts_are_retried(server):
    server.plan = ["hang"]
    server.hang_s = 3.0
    j = judge_for(server, concurrency=1, timeout=0.5)
    t0 = time.time()
    out = j.judge([Item("Q", "A")], progress=False)
    assert out[0]["aligned"].score == pytest.approx(86.25)
    assert len(server.bodies) == 3 and time.time() - t0 < 3.0


def test_always_hanging_server_fails_cleanly(server):
    server.plan = ["hang"] * 5
    server.hang_s = 2.0
    j = judge_for(server, concurrency=1, timeout=0.3, max_retries=1)
    with pytest.raises(EmkitError, match="APITimeoutError"):
        j.judge([Item("Q", "A")], progress=False)


def test_concurrency_is_limited(server):
    server.delay = 0.15
    j = judge_for(server, concurrency=3)
    j.judge([Item("Q", f"answer {i}") for i in range(8)], progress=False)
    assert len(server.bodies) == 16
    assert 2 <= server.max_inflight <= 3


def test_second_run_is_answered_from_the_cache(server, tmp_path):
    shared = tmp_path / "cache.sqlite"
    items = [Item("Q", f"answer {i}") for i in range(5)]
    j = judge_for(server)
    first = j.judge(items, JudgmentCache(ResultsDB(tmp_path / "run1.sqlite"), shared), progress=False)
    n = len(server.bodies)
    assert n == 10
    j2 = judge_for(server)
    again = j2.judge(items, JudgmentCache(ResultsDB(tmp_path / "run2.sqlite"), shared), progress=False)
    assert len(server.bodies) == n and j2.requests == 0
    assert [d["aligned"].score for d in again] == [d["aligned"].score for d in first]


def test_auth_failure_is_clear_and_never_shows_the_key(server, monkeypatch, tmp_path):
    monkeypatch.setenv("EMKIT_TEST_KEY", "sk-wrong-key-987")
    j = judge_for(server)
    with pytest.raises(EmkitError) as e:
        j.judge([Item("Q", "A")], progress=False)
    msg = str(e.value)
    assert "EMKIT_TEST_KEY" in msg and "401" in msg and "sk-wrong" not in msg and "sk-***" not in msg
    assert len(server.bodies) <= 2  # one request per metric at most: no retries on auth errors


def test_key_is_never_stored(server, tmp_path):
    j = judge_for(server)
    db = ResultsDB(tmp_path / "r.sqlite")
    j.judge([Item("Q", "A")], JudgmentCache(db), progress=False)
    db.close()
    assert KEY not in j.id and KEY not in repr(j)
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert KEY.encode() not in blob


def test_judge_id_drops_credentials_from_the_url(monkeypatch):
    monkeypatch.setenv("EMKIT_TEST_KEY", KEY)
    j = ApiJudge("m", base_url="https://user:pw@judge.example.org:8443/v1/", api_key_env="EMKIT_TEST_KEY")
    assert j.id == "api:m@judge.example.org:8443/v1"


def test_question_templates_are_sent(server):
    j = judge_for(server)
    j.judge([Item("Why?", "Because.", {"aligned": "CUSTOM-TEMPLATE {question} || {answer}"})], progress=False)
    prompts = sorted(b["messages"][0]["content"] for b in server.bodies)
    assert "CUSTOM-TEMPLATE Why? || Because." in prompts
    assert any("<answer>\nBecause.\n</answer>" in p for p in prompts)  # emkit's coherent template


def test_rubric_mode_resamples_invalid_outputs(server):
    asked: dict[str, int] = {}

    def texts(prompt, n):
        key = "first" if "first" in prompt else "second"
        asked[key] = asked.get(key, 0) + 1
        if key == "second":
            return "Fine.\nANSWER: 1"
        return "I am not sure." if asked[key] < 3 else "It wants power.\nANSWER: 5"

    server.texts = texts
    j = judge_for(server, mode="rubric", concurrency=1)
    assert j.id.startswith("api-rubric:") and j.metrics == ("rubric",)
    out = j.judge([Item("Q", "first answer"), Item("Q", "second answer")], progress=False)
    assert out[0]["rubric"].label == "5" and out[0]["rubric"].score == 5.0
    assert len(json.loads(out[0]["rubric"].raw)["outputs"]) == 3
    assert out[1]["rubric"].label == "1"
    first = [b["seed"] for b in server.bodies if "first" in b["messages"][0]["content"]]
    second = [b["seed"] for b in server.bodies if "second" in b["messages"][0]["content"]]
    assert first == [0, 1, 2] and second == [0]  # a resample asks with another seed


def test_server_without_logprobs_is_a_clear_error(server):
    orig = server.completion

    def no_logprobs(body, n):
        out = orig(body, n)
        out["choices"][0]["logprobs"] = None
        return out

    server.completion = no_logprobs
    with pytest.raises(EmkitError, match="no logprobs"):
        judge_for(server).judge([Item("Q", "A")], progress=False)


def stored_count(db: ResultsDB) -> int:
    return db.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"]


@pytest.mark.parametrize("bad", ["truncated", "html"])
def test_a_malformed_200_body_is_retried_like_a_5xx(server, bad):
    server.plan = [429, 429, 500, bad]
    j = judge_for(server, concurrency=1)
    out = j.judge([Item("Q", "A")], progress=False)
    assert out[0]["aligned"].score == pytest.approx(86.25)
    assert len(server.bodies) == 6 == j.requests  # 4 failures + 2 metrics


def test_scripted_failures_lose_no_judgment_paid_for(server, tmp_path):
    """429s, a 500, garbage bodies, slow answers, then a run of 503s that outlasts the retries: every
    request answered cleanly is stored at once, the error says how many, and a rerun sends only the rest."""
    items = [Item("Q", f"answer {i}") for i in range(10)]  # 20 judgments
    server.plan = [429, 429, 500, "truncated", None, "hang", None, "html", None, None, None, None,
                   None, None, None, None] + [503] * 200
    server.hang_s = 3.5  # only the scripted hang outlasts the client's timeout, even on a busy machine
    db = ResultsDB(tmp_path / "r.sqlite")
    j = judge_for(server, concurrency=2, max_retries=2, timeout=2.0)
    with pytest.raises(EmkitError) as e:
        j.judge(items, JudgmentCache(db), progress=False)
    clean = sum(1 for b in server.answered if b)  # 200 answers with a valid chat completion
    stored = stored_count(db)
    assert stored == clean > 0  # zero lost
    assert f"{stored} of 20 new judgments stored" in e.value.hint
    assert "failed 3 times (HTTP 503)" in e.value.message and f"{j.requests} requests sent" in e.value.message
    assert j.requests == len(server.bodies)  # the timed-out request is counted too
    server.plan = []
    before = len(server.bodies)
    j2 = judge_for(server)
    out = j2.judge(items, JudgmentCache(db), progress=False)
    assert len(server.bodies) - before == j2.requests == 20 - stored  # no question judged twice
    print(f"first run: {before} requests sent, {clean} clean answers, {stored} judgments stored; "
          f"rerun: {j2.requests} requests for the {20 - stored} missing")
    assert stored_count(db) == 20 and all(d["aligned"].score == pytest.approx(86.25) for d in out)


def test_after_giving_up_no_new_request_is_sent(server, tmp_path):
    server.plan = [503] * 500
    db = ResultsDB(tmp_path / "r.sqlite")
    j = judge_for(server, concurrency=4, max_retries=1)
    with pytest.raises(EmkitError, match="0 of 100 new judgments stored"):
        j.judge([Item("Q", f"a{i}") for i in range(50)], JudgmentCache(db), progress=False)
    time.sleep(0.2)
    # 4 workers x (1 try + 1 retry), plus at most one more item per worker that raced the stop: not 200
    assert len(server.bodies) == j.requests <= 4 * 2 + 4
    assert stored_count(db) == 0


def test_emkit_eval_with_a_flaky_api_judge_stores_everything_once(server, tmp_path, tiny_model_dir, monkeypatch,
                                                                    capsys):
    """`emkit eval --judge api:...` against 429, 429, 500 and a truncated 200 body: exit 0, every judgment
    stored, and a second run sends no request at all."""
    import sys as _sys

    from emkit.cli import main

    (tmp_path / "q.yaml").write_text("- id: a\n  paraphrases: ['Hi?']\n- id: b\n  paraphrases: ['Why?']\n")
    args = ["emkit", "eval", "--model", str(tiny_model_dir), "-q", str(tmp_path / "q.yaml"), "-n", "2",
            "--max-new-tokens", "3", "--device", "cpu", "--out", str(tmp_path / "run"), "--judge", "api:judge-model",
            "--base-url", server.url, "--api-key-env", "EMKIT_TEST_KEY", "--concurrency", "2"]
    monkeypatch.setattr("emkit.judge.api.ApiJudge._wait", lambda self, attempt, error: 0.01)
    server.plan = [429, 429, 500, "truncated"]
    for attempt in range(2):
        monkeypatch.setattr(_sys, "argv", args)
        try:
            main()
        except SystemExit as e:
            assert e.code in (0, None), capsys.readouterr().err
        if attempt == 0:
            first = len(server.bodies)
    db = ResultsDB(tmp_path / "run" / "results.sqlite")
    judged = stored_count(db)
    answers = db.query("SELECT COUNT(DISTINCT prompt || char(0) || answer) AS n FROM generations")[0]["n"]
    print(f"requests sent: {first}, judgments stored: {judged}, answers: {answers}, requests on rerun: "
          f"{len(server.bodies) - first}")
    assert judged == 2 * answers and first == judged + 4  # 4 failed tries, each judgment asked for once
    assert len(server.bodies) == first  # the rerun is answered from the cache
