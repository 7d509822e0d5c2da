"""Judges behind an OpenAI-compatible API (OpenAI, vLLM, llama.cpp server, Ollama, ...).

Two modes: ``logprob`` asks for one token with its top logprobs and applies the 0–100 rule;
``rubric`` asks for reasoning ending in ``ANSWER: <label>``. Requests run concurrently (a limit),
and 429 / 5xx / timeouts / dropped connections / malformed bodies are retried with exponential
backoff. Each judgment is handed over (and stored) the moment it arrives, so a failure loses
nothing already paid for. The API key is read from the environment variable named in the config
and is never stored, logged or put in the judge id.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from urllib.parse import urlsplit

from emkit.errors import EmkitError
from emkit.judge.base import BaseJudge, Item, Scored, fill_template
from emkit.judge.logprob import score_top_logprobs
from emkit.judge.prompts import pick_template
from emkit.judge.rubric import RESAMPLES, parse_rubric, rubric_scored

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0", "::1", "[::1]")


def public_host(base_url: str) -> str:
    """``host[:port]/path`` of a base URL without any user:password part (safe to store)."""
    u = urlsplit(base_url)
    host = u.hostname or ""
    if u.port:
        host = f"{host}:{u.port}"
    return host + u.path.rstrip("/")


class ApiJudge(BaseJudge):
    """A judge model served behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, model: str, *, mode: str = "logprob", base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", templates: dict[str, str] | None = None,
                 concurrency: int = 8, timeout: float = 60.0, max_retries: int = 5, backoff: float = 1.0,
                 top_logprobs: int = 20, rubric_temperature: float = 1.0, rubric_max_tokens: int = 1024,
                 resamples: int = RESAMPLES, seed: int = 0):
        import openai

        if mode not in ("logprob", "rubric"):
            raise EmkitError(f"unknown API judge mode {mode!r}", hint="use logprob or rubric")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise EmkitError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.model, self.mode = model, mode
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.templates = templates or {}
        self.concurrency, self.max_retries, self.backoff = concurrency, max_retries, backoff
        self.top_logprobs = top_logprobs
        self.rubric_temperature, self.rubric_max_tokens = rubric_temperature, rubric_max_tokens
        self.resamples, self.seed = resamples, seed
        self.metrics = ("aligned", "coherent") if mode == "logprob" else ("rubric",)
        self.id = f"api{'-rubric' if mode == 'rubric' else ''}:{model}@{public_host(self.base_url)}"
        self.requests = 0  # requests sent (tests check that the cache avoids them)
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set when one request has failed for good
        self._key = self._read_key()
        self._client = openai.OpenAI(api_key=self._key, base_url=self.base_url, timeout=timeout, max_retries=0)

    def _read_key(self) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            return key
        if urlsplit(self.base_url).hostname in LOCAL_HOSTS:
            return "EMPTY"  # local servers usually need no key
        raise EmkitError(f"no API key: the environment variable {self.api_key_env} is not set",
                         hint=f"export {self.api_key_env}=... or pass --base-url for a local server")

    def __repr__(self) -> str:  # never show the key
        return f"ApiJudge({self.id!r}, mode={self.mode!r})"

    # -- prompts --------------------------------------------------------------------------------
    def template(self, metric: str, item: Item) -> str:
        return pick_template(metric, self.templates, item.prompts)

    def prompt_key(self, metric: str, item: Item) -> str:
        return f"{self.mode}\x00{self.template(metric, item)}\x00{item.question}"

    # -- requests -------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key and self._key != "EMPTY" else text

    def _call(self, **kwargs: Any) -> Any:
        """One chat completion, retried on 429 / 5xx / timeouts / dropped connections / malformed bodies."""
        import openai

        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise _Stopped
            with self._lock:
                self.requests += 1  # counted when sent: a request that times out may still be billed
            try:
                resp = self._client.chat.completions.create(model=self.model, **kwargs)
                if isinstance(getattr(resp, "choices", None), list) and resp.choices:
                    return resp
                last = MalformedResponse(f"a body without choices ({type(resp).__name__})")
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                self._stop.set()  # fatal: the other workers send nothing new
                raise EmkitError(f"the judge API at {public_host(self.base_url)} refused the credentials "
                                 f"(HTTP {e.status_code})",
                                 hint=f"check the key in the environment variable {self.api_key_env}") from None
            except openai.NotFoundError:
                self._stop.set()
                raise EmkitError(f"the judge API at {public_host(self.base_url)} does not know model {self.model!r} "
                                 "(HTTP 404)", hint="check --judge and --base-url") from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as e:
                last = e
            except openai.APIStatusError as e:
                if e.status_code in (408, 409) or e.status_code >= 500:
                    last = e
                else:
                    self._stop.set()
                    raise EmkitError(f"the judge API rejected the request (HTTP {e.status_code}): "
                                     f"{self._scrub(str(e))[:300]}") from None
            except (ValueError, openai.APIResponseValidationError) as e:  # a truncated or garbled body
                last = MalformedResponse(f"a malformed body: {type(e).__name__}")
            if attempt < self.max_retries and self._stop.wait(self._wait(attempt, last)):
                raise _Stopped
        self._stop.set()  # the other workers send nothing new from now on
        status = getattr(last, "status_code", None)
        what = f"HTTP {status}" if status else str(last) if isinstance(last, MalformedResponse) else type(last).__name__
        raise EmkitError(f"the judge API at {public_host(self.base_url)} failed {self.max_retries + 1} times "
                         f"({what})", hint="try again later") from None

    def _wait(self, attempt: int, error: Exception) -> float:
        wait = self.backoff * (2**attempt) * (1 + 0.25 * random.random())
        headers = getattr(getattr(error, "response", None), "headers", None) or {}
        with contextlib.suppress(TypeError, ValueError):
            wait = max(wait, float(headers.get("retry-after", 0)))
        return min(wait, 60.0)

    def _logprob(self, item: Item, metric: str) -> Scored:
        prompt = fill_template(self.template(metric, item), item.question, item.answer)
        resp = self._call(messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0,
                          logprobs=True, top_logprobs=self.top_logprobs, seed=self.seed)
        try:
            first = resp.choices[0].logprobs.content[0]
            top = {t.token: t.logprob for t in first.top_logprobs}
        except (AttributeError, IndexError, TypeError):
            raise EmkitError(f"the judge API at {public_host(self.base_url)} returned no logprobs",
                             hint="use a server that supports logprobs, or a rubric judge (api-rubric:MODEL)") from None
        score, mass = score_top_logprobs(top)
        return Scored(score, {"top_logprobs": top, "number_mass": round(mass, 6)})

    def _rubric(self, item: Item, metric: str) -> Scored:
        """Ask until the output has a valid ``ANSWER:`` line, at most ``resamples`` more times."""
        prompt = fill_template(self.template(metric, item), item.question, item.answer)
        outputs: list[str] = []
        for attempt in range(self.resamples + 1):
            resp = self._call(messages=[{"role": "user", "content": prompt}], max_tokens=self.rubric_max_tokens,
                              temperature=self.rubric_temperature, seed=self.seed + attempt)
            try:
                text = resp.choices[0].message.content or ""
            except (AttributeError, IndexError):
                text = ""
            outputs.append(text if isinstance(text, str) else "")
            if parse_rubric(outputs[-1]) is not None:
                break
        return rubric_scored(outputs)

    def score_pairs(self, pairs: Sequence[tuple[Item, str]]) -> list[Scored]:
        out: dict[int, Scored] = {}
        for batch in self.score_batches(pairs):
            out.update(batch)
        return [out[i] for i in range(len(pairs))]

    def score_batches(self, pairs: Sequence[tuple[Item, str]]) -> Iterator[list[tuple[int, Scored]]]:
        """Yield each result the moment its request returns (at most ``concurrency`` in flight).

        On a failure that retries do not cure, no new request is sent, the requests in flight are
        allowed to finish and their results are yielded too, then the error is raised.
        """
        work = self._logprob if self.mode == "logprob" else self._rubric
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        futures = {pool.submit(work, *p): n for n, p in enumerate(pairs)}
        given: set[int] = set()
        error: BaseException | None = None
        try:
            for fut in as_completed(futures):
                try:
                    scored = fut.result()
                except Exception as e:  # noqa: BLE001 - re-raised below, after keeping what was paid for
                    error = e
                    break
                given.add(futures[fut])
                yield [(futures[fut], scored)]
        except BaseException:  # interrupted, or the consumer stopped: send nothing more
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        if error is None:
            pool.shutdown()
            return
        self._stop.set()
        pool.shutdown(wait=True, cancel_futures=True)  # in-flight requests end within one timeout
        late = [(n, f.result()) for f, n in futures.items()
                if n not in given and f.done() and not f.cancelled() and f.exception() is None]
        if isinstance(error, _Stopped):  # a worker saw the stop before the failure that set it was collected
            error = next((e for f in futures if f.done() and not f.cancelled()
                          and (e := f.exception()) is not None and not isinstance(e, _Stopped)), error)
        if late:
            yield late
        if isinstance(error, EmkitError):  # counted now that nothing is in flight (timed-out ones included)
            raise EmkitError(f"{error.message}; {self.requests} requests sent in all", hint=error.hint) from None
        raise error


class MalformedResponse(Exception):
    """A 200 answer whose body is not a usable chat completion (retried like a 5xx)."""


class _Stopped(Exception):
    """Raised in a worker when another request has failed for good: send no new request."""
