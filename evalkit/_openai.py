"""The ``openai`` provider: OpenAI's Chat Completions and (legacy) Completions APIs.

Any server that speaks them works too (vLLM, llama.cpp, Ollama, LiteLLM, OpenRouter, ...):
set ``base_url`` to its ``.../v1`` and ``api_key_env: null`` if it wants no key.

    model:
      provider: openai
      name: gpt-4o-mini
      api: chat                   # chat: /chat/completions, code extracted from the reply
                                  # completions: /completions, the prompt continued as code
      max_n_per_request: 20       # completions per request (OpenAI's n); 1: never send n
      extra_body: {max_tokens: null, max_completion_tokens: 4000}   # e.g. for reasoning models
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ._api import ApiOptions, ApiProvider, Completion, GenerationRequest, MalformedReply, PromptKind
from ._http import merge_body

MAX_STOP_SEQUENCES = 4
"""OpenAI rejects more; the caller truncates at every stop sequence client-side anyway."""


class OpenAIProvider(ApiProvider):
    """Completions from an OpenAI-compatible API; one request asks for up to
    ``max_n_per_request`` of them (``n``)."""

    class Options(ApiOptions):
        provider: Literal["openai"]
        base_url: str = Field("https://api.openai.com/v1", description="the API's root URL, ending in /v1 for OpenAI")
        api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key; None: send no key")
        api: Literal["chat", "completions"] = Field("chat", description="chat: /chat/completions; completions: /completions")
        max_n_per_request: int = Field(20, ge=1, description="completions asked for in one request (n); 1: never send n")

    @property
    def _options(self) -> OpenAIProvider.Options:
        assert isinstance(self.options, OpenAIProvider.Options)
        return self.options

    @property
    def prompt_kind(self) -> PromptKind:
        return "chat" if self._options.api == "chat" else "completion"

    @property
    def max_n_per_request(self) -> int:
        return self._options.max_n_per_request

    def endpoint(self) -> str:
        path = "/chat/completions" if self._options.api == "chat" else "/completions"
        return self._options.base_url.rstrip("/") + path

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers | self._options.extra_headers

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """``model``, the messages (system first, when given) or the prompt, the sampling
        fields that are set, at most 4 stop sequences, ``n`` when above 1, then ``extra_body``."""
        options = self._options
        body: dict[str, Any] = {"model": options.name}
        if options.api == "chat":
            system = [{"role": "system", "content": request.system}] if request.system else []
            body["messages"] = [*system, {"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        sampling = {"temperature": options.temperature, "top_p": options.top_p, "max_tokens": options.max_tokens, "seed": request.seed}
        body.update({key: value for key, value in sampling.items() if value is not None})
        if request.stop:
            body["stop"] = request.stop[:MAX_STOP_SEQUENCES]
        if request.n > 1:
            body["n"] = request.n
        return merge_body(body, options.extra_body)

    def parse(self, reply: Any) -> list[Completion]:
        """One `Completion` per choice, in ``index`` order: the message's text (chat; None is
        "", a list of content parts is the concatenation of its ``text`` parts) or ``text``
        (completions), ``finish_reason``, and ``usage``: ``prompt_tokens`` on each, and
        ``completion_tokens`` only when there is one choice (OpenAI counts all choices
        together). Raises `MalformedReply` when ``choices`` is missing or ill-typed."""
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
            raise MalformedReply(f"reply has no list of 'choices'{_error_note(reply)}")
        ordered = sorted(enumerate(choices), key=lambda item: (_index(item[1], item[0]), item[0]))
        usage = reply.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        input_tokens = _int_or_none(usage.get("prompt_tokens"))
        output_tokens = _int_or_none(usage.get("completion_tokens")) if len(choices) == 1 else None
        text_of = self._chat_text if self._options.api == "chat" else _completion_text
        return [
            Completion(
                text=text_of(choice),
                finish_reason=_str_or_none(choice.get("finish_reason")),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
            for _, choice in ordered
        ]

    @staticmethod
    def _chat_text(choice: dict[str, Any]) -> str:
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedReply("a choice has no 'message' object")
        content = message.get("content")
        if content is None or isinstance(content, str):
            return content or ""
        if isinstance(content, list):
            return "".join(part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str))
        raise MalformedReply(f"a message's 'content' is a {type(content).__name__}, not text or a list of parts")


def _completion_text(choice: dict[str, Any]) -> str:
    text = choice.get("text")
    if text is None or isinstance(text, str):
        return text or ""
    raise MalformedReply(f"a choice's 'text' is a {type(text).__name__}, not text")


def _index(choice: dict[str, Any], position: int) -> int:
    index = choice.get("index")
    return index if isinstance(index, int) else position


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _error_note(reply: Any) -> str:
    """``: <message>`` of an ``error`` object some proxies send with a 2xx status, else ""."""
    error = reply.get("error") if isinstance(reply, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return f": {' '.join(message.split())}" if isinstance(message, str) else ""
