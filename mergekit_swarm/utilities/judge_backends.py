"""Where the judge's answers come from: a local causal LM, or an OpenAI-compatible
chat-completions endpoint (bounded concurrency, timeout, retries with backoff).

The API key is read from the environment variable the recipe names (`api_key_env`),
sent only in the Authorization header, and never put in a message, log or exception.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal

import torch
from pydantic import Field

from mergekit_swarm.errors import UtilityError
from mergekit_swarm.schema import RecipePath, StrictSection
from mergekit_swarm.utilities.text import GenerationSettings, greedy_generate, model_device

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """The judge could not answer (after retries); the evaluation counts as failed."""


class LocalJudgeConfig(StrictSection):
    """A local causal LM answers the judge prompts greedily (loaded once per run)."""

    section_name: ClassVar[str] = "judge backend"
    type: Literal["local"] = Field("local", description="A local model.")
    model: RecipePath = Field(description="Folder of a causal LM used as the judge.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens the judge may write.")
    batch_size: int = Field(8, ge=1, description="Judge prompts per generate batch.")
    chat_template: bool = Field(True, description="Use the judge tokenizer's chat template when it has one.")

    def connect(self) -> LocalJudge:
        return LocalJudge(self)


class OpenAIJudgeConfig(StrictSection):
    """An OpenAI-compatible chat-completions endpoint answers the judge prompts."""

    section_name: ClassVar[str] = "judge backend"
    type: Literal["openai"] = Field("openai", description="An OpenAI-compatible endpoint.")
    base_url: str = Field(description="e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    model: str = Field(description="Model name sent in each request.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key.")
    concurrency: int = Field(4, ge=1, description="Requests in flight at most.")
    timeout: float = Field(60.0, gt=0, description="Seconds per request.")
    retries: int = Field(3, ge=0, description="Retries of a request on timeouts, connection errors, 429 and 5xx.")
    backoff: float = Field(1.0, ge=0, description="Seconds before the first retry; doubles each time.")
    max_tokens: int = Field(64, ge=1, description="Tokens the judge may write.")

    def connect(self) -> OpenAIJudge:
        return OpenAIJudge(self)


class LocalJudge:
    """A local causal LM, loaded once, answering greedily."""

    def __init__(self, config: LocalJudgeConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
            self.model = AutoModelForCausalLM.from_pretrained(config.model).eval()
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
    """POST {base_url}/chat/completions, one request per judged response."""

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
        # urllib would follow a redirect with our Authorization header, to any host: refuse instead
        self.opener = urllib.request.build_opener(_NoRedirects)

    def __call__(self, prompts: list[str], device: torch.device | None = None) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            return list(pool.map(self._complete, prompts))

    def _complete(self, prompt: str) -> str:
        payload = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.config.max_tokens,
        }
        request_body = json.dumps(payload).encode()
        problem = "no attempt"
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=request_body, headers=self.headers, method="POST")
            try:
                with self.opener.open(request, timeout=self.config.timeout) as response:
                    content = json.load(response)["choices"][0]["message"]["content"]
                return content if isinstance(content, str) else ""  # null content (a refusal): unparseable
            except urllib.error.HTTPError as exc:  # str(exc) holds the status, never our headers
                if exc.code in (401, 403):
                    who = f"the key in ${self.config.api_key_env}" if self.config.api_key_env else "no API key (api_key_env)"
                    raise JudgeError(f"{self.url}: HTTP {exc.code}, not authorised with {who}") from None
                if 300 <= exc.code < 400:
                    raise JudgeError(
                        f"{self.url}: HTTP {exc.code} redirect refused (point base_url at the final address)"
                    ) from None
                if exc.code not in RETRYABLE_STATUS:
                    raise JudgeError(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
                problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except (ValueError, KeyError, IndexError, TypeError):
                raise JudgeError(f"{self.url}: the answer is not a chat completion") from None
        raise JudgeError(f"{self.url}: no answer after {self.config.retries + 1} attempts ({problem})")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx then surfaces as an HTTPError
