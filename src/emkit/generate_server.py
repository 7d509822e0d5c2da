"""The ``server`` generation back-end: any OpenAI-compatible endpoint (vLLM, SGLang, TGI, llama.cpp, Ollama).

A :class:`ServerModel` stands where a Hugging Face model would: :func:`emkit.generate.generate`
(and so :func:`emkit.generate.answer_questions` and :func:`emkit.evaluate.evaluate`) sends its
prompts to the server instead of running ``model.generate``. Answers land in the same
``generations`` table under the same keys and sampling hash as the ``hf`` back-end's, each one
stored as it arrives, so an interrupted run never asks for a stored answer again.

Each request carries its answer's own seed (the ``hf`` path's per-answer seed, folded to 31 bits),
which vLLM and SGLang honour per request. 429, 5xx, timeouts, dropped connections and malformed
bodies are retried with exponential backoff (``Retry-After`` respected). ``model`` is the name the
server serves: the base model's ``--served-model-name`` or a LoRA adapter's name (vLLM
``--lora-modules NAME=PATH``; ``emkit serve-args RUN`` prints the command). Steering and
activation hooks need the weights in-process, so they stay on the ``hf`` back-end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from emkit.errors import EmkitError
from emkit.generate import Generation, SamplingConfig, finish_text, item_seed
from emkit.models.chat import Message, build_messages, render_prompt

BACKENDS = ("hf", "server")
KEY_ENV = "EMKIT_SERVER_API_KEY"
SEED_MASK = 0x7FFFFFFF  # llama.cpp and Ollama take 32-bit seeds; vLLM/SGLang any int


class _Retry(Exception):
    """A failure worth retrying (HTTP status or None, what happened, server's Retry-After)."""

    def __init__(self, status: int | None, what: str, retry_after: float = 0.0):
        super().__init__(what)
        self.status, self.what, self.retry_after = status, what, retry_after


def public_host(base_url: str) -> str:
    """``host[:port]/path`` of a URL without any user:password part (safe to store and print)."""
    u = urlsplit(base_url)
    host = (u.hostname or "") + (f":{u.port}" if u.port else "")
    return host + u.path.rstrip("/")


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash; an error unless it is http(s)://host[...]."""
    u = urlsplit(base_url or "")
    if u.scheme not in ("http", "https") or not u.hostname:
        raise EmkitError(f"not an http(s) base URL: {base_url!r}",
                         hint="e.g. http://localhost:8000/v1 (vLLM's default)")
    return base_url.rstrip("/")


class ServerModel:
    """A model behind an OpenAI-compatible server, usable wherever emkit samples answers.

    ``api`` is ``chat`` (the server applies its chat template) or ``completions`` (the prompt is
    rendered here with ``tokenizer``'s template, as the ``hf`` path does). The API key, if the
    server needs one, is read from the environment variable ``api_key_env`` and never stored.
    """

    backend = "server"

    def __init__(self, base_url: str, model: str, *, api: str = "chat", tokenizer: Any = None,
                 api_key_env: str = KEY_ENV, concurrency: int = 32, timeout: float = 600.0,
                 max_retries: int = 6, backoff: float = 1.0, send_seed: bool = True, grace: float = 30.0):
        if api not in ("chat", "completions"):
            raise EmkitError(f"unknown server API {api!r}", hint="use chat or completions")
        if api == "completions" and tokenizer is None:
            raise EmkitError("the completions API needs a tokenizer to render prompts",
                             hint="pass the model's tokenizer, or use the chat API")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise EmkitError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        if not model:
            raise EmkitError("no served model name", hint="give the name the server serves (GET /v1/models)")
        self.base_url = check_base_url(base_url)
        self.model, self.api, self.tokenizer = model, api, tokenizer
        self.api_key_env = api_key_env
        self.concurrency, self.timeout = concurrency, timeout
        self.max_retries, self.backoff, self.send_seed = max_retries, backoff, send_seed
        self.grace = grace  # seconds an interrupted run waits for the answers in flight (to store them)
        self.requests = 0  # HTTP requests sent, retries included (tests and benchmarks read it)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ServerModel({self.model!r} @ {public_host(self.base_url)}, api={self.api!r})"

    @property
    def id(self) -> str:
        return f"server:{self.model}@{public_host(self.base_url)}"

    # -- HTTP -----------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        return text.replace(key, "***") if key else text

    def _post(self, path: str, body: dict) -> dict:
        """One POST; returns the parsed body, raises _Retry for retryable failures, EmkitError otherwise."""
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), headers=self._headers(),
                                     method="POST")
        with self._lock:
            self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            status = e.code
            detail = self._scrub(e.read().decode("utf-8", "replace"))[:300] if e.fp else ""
            if status == 429 or status in (408, 409) or status >= 500:
                after = 0.0
                with contextlib.suppress(TypeError, ValueError):
                    after = float(e.headers.get("Retry-After", 0) or 0)
                raise _Retry(status, f"HTTP {status}", after) from None
            host = public_host(self.base_url)
            if status in (401, 403):
                raise EmkitError(f"the generation server at {host} refused the credentials (HTTP {status})",
                                 hint=f"put the server's key in the environment variable {self.api_key_env}") from None
            if status == 404:
                raise EmkitError(f"the generation server at {host} does not serve model {self.model!r} (HTTP 404)",
                                 hint=self._served_hint()) from None
            raise EmkitError(f"the generation server at {host} rejected a request (HTTP {status}): {detail}",
                             hint="check the sampling settings (e.g. max_new_tokens vs the server's context)") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Retry(None, type(reason).__name__ if not isinstance(reason, str) else reason) from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Retry(None, "a malformed (non-JSON) body") from None
        if not isinstance(data, dict):
            raise _Retry(None, "a malformed body")
        return data

    def served_models(self) -> list[str]:
        """The model names the server lists at ``GET /models`` (empty if it cannot say)."""
        try:
            req = urllib.request.Request(self.base_url + "/models", headers=self._headers())
            with urllib.request.urlopen(req, timeout=min(self.timeout, 10.0)) as resp:
                data = json.loads(resp.read())
            return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]
        except Exception:  # noqa: BLE001 - only for a hint
            return []

    def _served_hint(self) -> str:
        names = self.served_models()
        have = f"it serves: {', '.join(names[:20])}" if names else "GET /v1/models lists what it serves"
        return f"{have}; a fine-tune is served by adapter name (emkit serve-args RUN prints the vLLM command)"

    def _wait(self, attempt: int, err: _Retry) -> float:
        wait_s = self.backoff * (2**attempt) * (1 + 0.25 * random.random())
        return min(max(wait_s, err.retry_after), 60.0)

    # -- one answer -----------------------------------------------------------------------------
    def _body(self, prompt: str | list[Message], cfg: SamplingConfig, system: str | None, seed: int) -> dict:
        body: dict[str, Any] = {"model": self.model, "max_tokens": cfg.max_new_tokens, "n": 1,
                                "temperature": cfg.temperature, "top_p": cfg.top_p if cfg.temperature > 0 else 1.0}
        if self.send_seed:
            body["seed"] = seed & SEED_MASK
        if self.api == "completions":
            body["prompt"] = render_prompt(self.tokenizer, prompt, system)
        else:
            msgs = build_messages(prompt, system) if isinstance(prompt, str) else list(prompt)
            if system and isinstance(prompt, list) and not any(m["role"] == "system" for m in msgs):
                msgs.insert(0, {"role": "system", "content": system})
            body["messages"] = msgs
        return body

    def _parse(self, data: dict, index: int) -> Generation:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Retry(None, "a body without choices")
        c = choices[0]
        if self.api == "completions":
            text = c.get("text")
        else:
            msg = c.get("message")
            text = msg.get("content") if isinstance(msg, dict) else None
            if msg is None or (text is None and c.get("finish_reason") is None):
                raise _Retry(None, "a choice without a message")
        text = "" if text is None else text
        if not isinstance(text, str):
            raise _Retry(None, "a choice whose text is not a string")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        n_tokens = usage.get("completion_tokens")
        if not isinstance(n_tokens, int):
            n_tokens = (len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if self.tokenizer is not None
                        else len(text.split()))
        n_prompt = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
        return Generation(index=index, text=text.strip(), n_prompt_tokens=n_prompt, n_tokens=n_tokens,
                          truncated=c.get("finish_reason") == "length")

    def answer_one(self, index: int, body: dict) -> Generation:
        """Send one request (retrying) and parse it."""
        path = "/completions" if self.api == "completions" else "/chat/completions"
        last: _Retry | None = None
        for attempt in range(self.max_retries + 1):
            try:
                return self._parse(self._post(path, body), index)
            except _Retry as e:
                last = e
            if attempt < self.max_retries:
                time.sleep(self._wait(attempt, last))
        assert last is not None
        raise EmkitError(f"the generation server at {public_host(self.base_url)} failed {self.max_retries + 1} times "
                         f"({last.what})", hint="answers received so far are stored; run the same command again "
                         "to resume")

    # -- many answers ---------------------------------------------------------------------------
    def answer(self, prompts: Sequence[str | list[Message]], cfg: SamplingConfig, *, system: str | None = None,
               progress: bool = True, on_batch: Callable[[list[Generation]], None] | None = None,
               desc: str = "generating", item_seeds: Sequence[int] | None = None) -> list[Generation]:
        """Answers in input order; ``on_batch`` gets each answer as it arrives (from this thread).

        At most ``concurrency`` requests are in flight. When one fails for good, no new request is
        sent, the ones in flight are awaited and their answers passed on, then the error is raised.
        On Ctrl-C the answers in flight are awaited for up to ``grace`` seconds (a second Ctrl-C
        drops them), so a resumed run does not ask for them again.
        """
        seeds = list(item_seeds) if item_seeds is not None else [item_seed(cfg.seed, i) for i in range(len(prompts))]
        results: list[Generation | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc=f"{desc} via {public_host(self.base_url)}", disable=not progress,
                   unit="ans")
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="emkit-server")
        inflight: set[Future] = set()
        arrived: list[Future] = []  # answered, not yet passed on
        todo = iter(range(len(prompts)))
        error: BaseException | None = None

        def take(g: Generation) -> None:
            g.text = finish_text(g.text, g.truncated, cfg)
            results[g.index] = g
            if on_batch is not None:
                on_batch([g])
            bar.update(1)

        try:
            while True:
                while error is None and len(inflight) < self.concurrency:
                    i = next(todo, None)
                    if i is None:
                        break
                    inflight.add(pool.submit(self.answer_one, i, self._body(prompts[i], cfg, system, seeds[i])))
                if not inflight:
                    break
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                arrived = list(done)
                while arrived:
                    f = arrived.pop()
                    try:
                        g = f.result()
                    except Exception as e:  # noqa: BLE001 - keep the first error, drain the rest
                        error = error or e
                        continue
                    take(g)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(KeyboardInterrupt):
                done, _ = wait([*arrived, *inflight], timeout=self.grace)
                for f in done:
                    if not f.cancelled() and f.exception() is None:
                        take(f.result())
            bar.close()
            raise
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # interrupted: do not wait for slow requests
            bar.close()
            raise
        pool.shutdown(wait=True)
        bar.close()
        if error is not None:
            raise error
        return [g for g in results if g is not None]


def is_server(model: Any) -> bool:
    """Whether ``model`` is a server back-end (not an in-process Hugging Face model)."""
    return getattr(model, "backend", "hf") == "server"


def require_hf(model: Any, what: str) -> None:
    """An error when ``what`` (steering, activation capture ...) is asked of a server back-end."""
    if is_server(model):
        raise EmkitError(f"{what} needs the model's weights in this process; the server back-end cannot do it",
                         hint="use the hf back-end for this step (a recipe keeps steering on hf by itself)")
