"""Where the judge's answers come from: a local causal LM, or an OpenAI-compatible
chat-completions endpoint (bounded concurrency, timeouts, retries with backoff, and a
circuit breaker that stops the run when the endpoint stops answering).

The API key is read from the environment variable the recipe names (`api_key_env`),
sent only in the Authorization header, and never put in a message, log or exception.

The HTTP client is the standard library's urllib, on purpose: the package depends on no HTTP
client (huggingface_hub brings requests, httpx or httpx2 depending on its version), and none
of them would spare the parts written here, the retry loop over 5xx and the breaker.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from mergekit_swarm.core.errors import UtilityError
from mergekit_swarm.core.protocols import CausalLM
from mergekit_swarm.core.schema import RecipePath, StrictSection
from mergekit_swarm.utilities.text import GenerationSettings, greedy_generate, model_device

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """The judge could not answer (after retries); the evaluation counts as failed."""


class JudgeUnreachable(UtilityError):
    """The endpoint failed `max_consecutive_failures` attempts in a row: it is taken as down and
    the run stops (a `SwarmError`: one line, exit 1, resumable) rather than fail every particle."""


class LocalJudgeConfig(StrictSection):
    """A local causal LM answers the judge prompts greedily (loaded once per run)."""

    section_name: ClassVar[str] = "judge backend"
    type: Literal["local"] = Field(default="local", description="A local model.")
    model: RecipePath = Field(description="Folder of a causal LM used as the judge.")
    max_new_tokens: int = Field(default=32, ge=1, description="Tokens the judge may write.")
    batch_size: int = Field(default=8, ge=1, description="Judge prompts per generate batch.")
    chat_template: bool = Field(default=True, description="Use the judge tokenizer's chat template when it has one.")

    def connect(self) -> LocalJudge:
        return LocalJudge(self)


class OpenAIJudgeConfig(StrictSection):
    """An OpenAI-compatible chat-completions endpoint answers the judge prompts."""

    section_name: ClassVar[str] = "judge backend"
    type: Literal["openai"] = Field(default="openai", description="An OpenAI-compatible endpoint.")
    base_url: str = Field(description="e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    model: str = Field(description="Model name sent in each request.")
    api_key_env: str | None = Field(default=None, description="Name of the environment variable holding the API key.")
    concurrency: int = Field(default=4, ge=1, description="Requests in flight at most.")
    timeout: float = Field(default=60.0, gt=0, description="Seconds a request waits for the answer (each read of it).")
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds to open the connection (TLS included), at most `timeout`: "
        "a host that drops packets costs this per attempt, not `timeout`.",
    )
    retries: int = Field(default=3, ge=0, description="Retries of a request on timeouts, connection errors, 429 and 5xx.")
    backoff: float = Field(default=1.0, ge=0, description="Seconds before the first retry; doubles each time.")
    max_consecutive_failures: int = Field(
        default=5,
        ge=0,
        description="Failed attempts in a row (no answer: refused, reset or timed out; or HTTP 5xx), over all requests, "
        "after which the endpoint is taken as down and the run stops with an error (resumable) instead of failing "
        "particle after particle. Attempts in flight together count once; any other answer resets the count. "
        "0: never stop.",
    )
    max_tokens: int = Field(default=64, ge=1, description="Tokens the judge may write.")

    def connect(self) -> OpenAIJudge:
        return OpenAIJudge(self)


class LocalJudge:
    """A local causal LM, loaded once, answering greedily."""

    def __init__(self, config: LocalJudgeConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
            # transformers types `generate`'s self as a Protocol its own models fail (pyright finds no generate)
            self.model: CausalLM = AutoModelForCausalLM.from_pretrained(config.model).eval()  # pyright: ignore[reportAttributeAccessIssue]
        except Exception as exc:  # any loading problem is the recipe's, in one line
            raise UtilityError(f"cannot load the judge model from {config.model}: {type(exc).__name__}: {exc}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        chat = config.chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        self.settings = GenerationSettings(config.max_new_tokens, config.batch_size, chat_template=chat)

    def __call__(self, prompts: list[str], device: torch.device | None = None) -> list[str]:
        if device is not None and model_device(self.model) != device:
            self.model.to(device)  # beside the particle being judged
        return greedy_generate(self.model, self.tokenizer, prompts, self.settings)


class OpenAIJudge:
    """POST {base_url}/chat/completions, one request per judged response.

    The requests of one call (one particle's responses) form a batch: once one of them fails for
    good the evaluation has failed, so the others stop at once (queued ones never start, sleeping
    ones wake, open connections are shut down). The breaker counts failed attempts over calls.
    """

    def __init__(self, config: OpenAIJudgeConfig):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env, "").strip()
            if not key:
                raise UtilityError(f"judge backend: environment variable {config.api_key_env} (api_key_env) is not set")
            if any(ord(c) < 32 or ord(c) == 127 for c in key):
                raise UtilityError(f"judge backend: the key in {config.api_key_env} contains control characters")
            self.headers["Authorization"] = f"Bearer {key}"
        self.breaker = _Breaker(config.max_consecutive_failures)
        connect_timeout = min(config.connect_timeout, config.timeout)
        # urllib would follow a redirect with our Authorization header, to any host: refuse instead
        self.opener = urllib.request.build_opener(
            _NoRedirects, _TimedHTTPHandler(connect_timeout), _TimedHTTPSHandler(connect_timeout)
        )

    def __call__(self, prompts: list[str], device: torch.device | None = None) -> list[str]:
        batch = _Batch()
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            futures = [pool.submit(self._request, prompt, batch) for prompt in prompts]
        cause = batch.cause
        if cause is None:
            return [future.result() for future in futures]
        # a tripped breaker stops the run: its error wins over a failure that stopped the batch first
        tripped = [error for error in (future.exception() for future in futures) if isinstance(error, JudgeUnreachable)]
        raise tripped[0] if tripped else cause

    def _request(self, prompt: str, batch: _Batch) -> str:
        try:
            return self._complete(prompt, batch)
        except Exception as exc:  # the evaluation has failed: the first failure stops the rest of the batch
            batch.stop(exc)
            raise

    def _complete(self, prompt: str, batch: _Batch) -> str:
        payload = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.config.max_tokens,
        }
        body = json.dumps(payload).encode()
        problem = "no attempt"
        for attempt in range(self.config.retries + 1):
            backoff = self.config.backoff * 2 ** (attempt - 1) if attempt else 0.0
            if batch.stopped.wait(backoff):  # a stopped batch wakes its sleepers at once
                raise _Stopped
            started = self.breaker.round
            try:
                return self._attempt(body, batch)
            except _Retry as retry:
                if batch.stopped.is_set():
                    raise _Stopped from None  # cut by the stop, not the endpoint's doing
                problem = retry.problem
                if not retry.endpoint_down:
                    self.breaker.answered()
                elif self.breaker.failed(started):
                    raise JudgeUnreachable(
                        f"judge endpoint {self.url} is down: {self.breaker.limit} attempts in a row failed (last: {problem}); "
                        "start or fix it, then resume the run with --resume "
                        "(backend.max_consecutive_failures sets how many failures stop a run)"
                    ) from None
        raise JudgeError(f"{self.url}: no answer after {self.config.retries + 1} attempts ({problem})")

    def _attempt(self, body: bytes, batch: _Batch) -> str:
        """One POST: the answer's content; `_Retry` for a problem worth another attempt, `JudgeError` otherwise."""
        request = _BatchRequest(self.url, body, self.headers, batch)
        answer: Any  # parsed JSON, None when the body is not JSON
        try:
            with self.opener.open(request, timeout=self.config.timeout) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:  # str(exc) holds the status, never our headers
            if exc.code in RETRYABLE_STATUS:
                raise _Retry(f"HTTP {exc.code}", endpoint_down=exc.code >= 500) from None
            self.breaker.answered()
            raise self._refusal(exc.code, exc.reason) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise _Retry(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", endpoint_down=True) from None
        except ValueError:
            answer = None
        self.breaker.answered()
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.url}: the answer is not a chat completion") from None
        return content if isinstance(content, str) else ""  # null content (a refusal): unparseable

    def _refusal(self, code: int, reason: str) -> JudgeError:
        """The error of an HTTP status that another attempt would not change."""
        if code in (401, 403):
            who = f"the key in ${self.config.api_key_env}" if self.config.api_key_env else "no API key (api_key_env)"
            return JudgeError(f"{self.url}: HTTP {code}, not authorised with {who}")
        if 300 <= code < 400:
            return JudgeError(f"{self.url}: HTTP {code} redirect refused (point base_url at the final address)")
        return JudgeError(f"{self.url}: HTTP {code} {reason}")


class _Retry(Exception):
    """An attempt failed in a way another attempt may not; `endpoint_down`: it counts for the breaker."""

    def __init__(self, problem: str, *, endpoint_down: bool):
        super().__init__(problem)
        self.problem, self.endpoint_down = problem, endpoint_down


class _Stopped(Exception):
    """A request given up because another one of its batch failed for good."""


class _Breaker:
    """Failed attempts in a row, over every request of the run; trips at `limit` (0: never).

    Attempts in flight together when the endpoint fails fail together: counting each would trip
    on one network blip with a high `concurrency`. So a failure counts only if its attempt started
    after the last counted one (`round` is bumped at each), and a dead endpoint trips the breaker
    after `limit` rounds of attempts whatever the concurrency.
    """

    def __init__(self, limit: int):
        self.limit, self.round, self.failures = limit, 0, 0
        self._lock = threading.Lock()

    def answered(self) -> None:
        with self._lock:
            self.failures = 0

    def failed(self, started: int) -> bool:
        """Count the failure of an attempt started in round `started`; True when it trips the breaker."""
        with self._lock:
            if started != self.round:
                return False  # in flight alongside a failure counted already
            self.round += 1
            self.failures += 1
            if not self.limit or self.failures < self.limit:
                return False
            self.failures = 0  # tripped once: a later run in this process starts afresh
            return True


class _Batch:
    """The requests of one call; `stop` ends them all: queued ones never start, those sleeping
    before a retry wake, and open connections are shut down (a blocked read returns at once)."""

    def __init__(self):
        self.stopped = threading.Event()
        self.cause: Exception | None = None  # the failure that stopped the batch
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def stop(self, cause: Exception) -> None:
        with self._lock:
            if self.stopped.is_set():
                return
            self.cause = cause
            self.stopped.set()
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def track(self, sock: socket.socket) -> None:
        """A connection just opened: shut it down with the batch (at once if it stopped meanwhile)."""
        with self._lock:
            if not self.stopped.is_set():
                self._sockets.append(sock)
                return
        _shut(sock)


def _shut(sock: socket.socket) -> None:
    # the plain socket's shutdown, also for a TLS socket: SSLSocket.shutdown would drop the TLS
    # state under the thread reading from it; this only ends that read. A closed one raises OSError.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _BatchRequest(urllib.request.Request):
    """A POST that carries its batch to the connection it opens, whose socket the batch's stop shuts down."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], batch: _Batch):
        super().__init__(url, data=body, headers=headers, method="POST")
        self.batch = batch


class _TimedConnection(http.client.HTTPConnection):
    """`connect_timeout` to connect (the TLS handshake included: HTTPSConnection.connect runs inside
    this one's, see `_TimedHTTPSConnection`), the request's timeout after that; the open socket is
    handed to `batch`."""

    def __init__(self, host: str, *, connect_timeout: float, batch: _Batch, **kwargs):
        super().__init__(host, **kwargs)
        self.connect_timeout, self.batch = connect_timeout, batch

    def connect(self) -> None:
        read_timeout, self.timeout = self.timeout, self.connect_timeout
        try:
            super().connect()
        finally:
            self.timeout = read_timeout
        self.sock.settimeout(read_timeout)
        self.batch.track(self.sock)


class _TimedHTTPSConnection(_TimedConnection, http.client.HTTPSConnection):
    pass


class _TimedHandler(urllib.request.AbstractHTTPHandler):
    """urllib's handler for http or https, opening `_TimedConnection`s."""

    CONNECTIONS: ClassVar[dict[type, type]] = {
        http.client.HTTPConnection: _TimedConnection,
        http.client.HTTPSConnection: _TimedHTTPSConnection,
    }

    def __init__(self, connect_timeout: float):
        super().__init__()
        self.connect_timeout = connect_timeout

    def do_open(self, http_class, req, **kwargs):
        timed = functools.partial(self.CONNECTIONS[http_class], connect_timeout=self.connect_timeout, batch=req.batch)
        return super().do_open(timed, req, **kwargs)


class _TimedHTTPHandler(_TimedHandler, urllib.request.HTTPHandler):
    pass


class _TimedHTTPSHandler(_TimedHandler, urllib.request.HTTPSHandler):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx then surfaces as an HTTPError
