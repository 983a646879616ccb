"""What every model-API provider shares: its options, the request it is given, what it returns.

A provider of this kind (``openai``, ``anthropic``, third-party ones) turns one
`GenerationRequest` into the JSON body of one HTTP request, and the JSON reply into
`Completion`s. Retries, backoff, concurrency and error classification are not the provider's
business: `evalkit._http.ApiClient` does them for every provider alike, and the generation
stage (`evalkit._generation`) decides which requests to make, caches and stores their results.
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._models import ModelProvider, ProviderOptions
from ._types import Problem, Sample

_SURROGATE = re.compile(r"[\ud800-\udfff]")

PromptKind = Literal["chat", "completion"]


class ApiOptions(ProviderOptions):
    """The ``model`` section keys every API provider accepts (each provider adds its own)."""

    name: str = Field(min_length=1, description="the model, as the API names it")
    base_url: str = Field(description="the API's root URL; each provider sets its default")
    api_key_env: str | None = Field(description="environment variable holding the API key; None: send no key")
    temperature: float | None = Field(0.0, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(1024, ge=1)
    stop: list[str] | None = Field(None, description="stop sequences; None: the benchmark's (completion prompts only)")
    seed: int | None = Field(None, description="sent as seed + the index of the request's first sample")
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0, le=3600, allow_inf_nan=False, description="per HTTP request")
    max_retries: int = Field(5, ge=0, le=100, description="retries of one request on 429, 5xx, connection errors, timeouts, malformed replies")
    backoff_s: float = Field(1.0, ge=0, le=600, allow_inf_nan=False, description="first retry delay; doubles per retry (cap 60 s), full jitter; Retry-After wins")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra fields merged into every request body")
    extra_headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers (never the key: use api_key_env)")
    system_prompt: str | None = Field(None, description="chat prompts only")
    prompt_template: str | None = Field(None, description="jinja2 template of the prompt; None: the benchmark's")
    cache: bool = Field(True, description="reuse completions cached by an earlier run with the same request")
    cache_dir: str | None = Field(None, description="completion cache folder; None: $EVALKIT_CACHE_DIR or ~/.cache/evalkit")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"must be an http:// or https:// URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://localhost:8000/v1")
        return url

    @field_validator("extra_body")
    @classmethod
    def _json_values(cls, extra: dict[str, Any]) -> dict[str, Any]:
        # YAML can write what JSON cannot (.nan, dates, !!binary, !!set): refuse it here, not mid-run
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must hold JSON values only (text, numbers, true/false, null, lists, mappings): {exc}") from None
        return extra


class GenerationRequest(BaseModel):
    """One HTTP request's worth of work: ``n`` completions of one rendered prompt."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    prompt: str = Field(description="the rendered prompt: the user message (chat) or the text to continue (completion)")
    system: str | None = None
    stop: list[str] = Field(default_factory=list)
    n: int = Field(1, ge=1)
    seed: int | None = None


class Completion(BaseModel):
    """One completion as the API returned it (before code extraction)."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="the reply's text; empty when the API returned none (e.g. a refusal)")
    finish_reason: str | None = None
    input_tokens: int | None = Field(None, description="prompt tokens of the request (shared by its n completions)")
    output_tokens: int | None = None

    @field_validator("text", "finish_reason")
    @classmethod
    def _valid_unicode(cls, text: str | None) -> str | None:
        # JSON can escape half a surrogate pair ("\ud83d" alone), which no UTF-8 file, journal or
        # sandbox can take: it becomes U+FFFD, as undecodable bytes do in a lenient decoder
        return None if text is None else _SURROGATE.sub("\ufffd", text)


class MalformedReply(ValueError):
    """The API answered 2xx with a body that is not what the provider expects (retryable)."""


class ApiProvider(ModelProvider):
    """A provider that asks a model API for completions over HTTP.

    Subclasses set ``Options`` (a subclass of `ApiOptions` with a ``provider`` literal and
    defaults for ``base_url`` and ``api_key_env``) and implement the four methods below; they
    never do I/O themselves.
    """

    Options: ClassVar[type[ApiOptions]]
    generative: ClassVar[bool] = True

    @property
    def api_options(self) -> ApiOptions:
        assert isinstance(self.options, ApiOptions)
        return self.options

    @property
    @abstractmethod
    def prompt_kind(self) -> PromptKind:
        """``chat`` (messages; code is extracted from the reply) or ``completion`` (raw text continued)."""

    @property
    def max_n_per_request(self) -> int:
        """How many completions one request may ask for (the API's ``n``); 1 if it has none."""
        return 1

    @abstractmethod
    def endpoint(self) -> str:
        """The full URL requests are POSTed to."""

    @abstractmethod
    def headers(self, api_key: str | None) -> dict[str, str]:
        """HTTP headers for every request, including authentication with ``api_key`` when given."""

    @abstractmethod
    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body asking for ``request.n`` completions (``extra_body`` merged in last)."""

    @abstractmethod
    def parse(self, reply: Any) -> list[Completion]:
        """The completions in a decoded 2xx JSON reply, in the API's order.

        May return fewer than asked (a server that ignores ``n``). Raises `MalformedReply`
        when the reply lacks what the API documents.
        """

    def samples(self, problems: Sequence[Problem], n: int, all_task_ids: Sequence[str] | None = None) -> list[Sample]:
        raise TypeError(f"provider '{self.options.provider}' generates completions through the generation stage, not samples()")
