"""The ``anthropic`` provider: Anthropic's Messages API (``POST /v1/messages``).

    model:
      provider: anthropic
      name: claude-sonnet-4-5
      max_tokens: 4096            # required by the API; null sends 4096
      extra_body: {thinking: {type: enabled, budget_tokens: 2048}}   # thinking is skipped in the text

The Messages API has neither ``n`` (one completion per request) nor ``seed`` (not sent).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ._api import ApiOptions, ApiProvider, Completion, GenerationRequest, MalformedReply, PromptKind
from ._http import merge_body

DEFAULT_MAX_TOKENS = 4096
"""Sent when ``max_tokens`` is None: the API requires the field."""


class AnthropicProvider(ApiProvider):
    """Completions from Claude models, one per request."""

    class Options(ApiOptions):
        provider: Literal["anthropic"]
        base_url: str = Field("https://api.anthropic.com", description="the API's root URL (without /v1)")
        api_key_env: str | None = Field("ANTHROPIC_API_KEY", description="environment variable holding the API key; None: send no key")
        anthropic_version: str = Field("2023-06-01", description="the anthropic-version header")

    @property
    def _options(self) -> AnthropicProvider.Options:
        assert isinstance(self.options, AnthropicProvider.Options)
        return self.options

    @property
    def prompt_kind(self) -> PromptKind:
        return "chat"

    def endpoint(self) -> str:
        return self._options.base_url.rstrip("/") + "/v1/messages"

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": self._options.anthropic_version, "content-type": "application/json"}
        if api_key:
            headers["x-api-key"] = api_key
        return headers | self._options.extra_headers

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """``model``, ``max_tokens`` (4096 when unset), ``system`` when given, one user message,
        the sampling fields that are set, ``stop_sequences`` when any, then ``extra_body``.
        ``request.seed`` is ignored and ``request.n`` must be 1."""
        if request.n != 1:
            raise ValueError(f"the Messages API gives one completion per request, not n={request.n}")
        options = self._options
        body: dict[str, Any] = {"model": options.name, "max_tokens": options.max_tokens or DEFAULT_MAX_TOKENS}
        if request.system:
            body["system"] = request.system
        body["messages"] = [{"role": "user", "content": request.prompt}]
        sampling = {"temperature": options.temperature, "top_p": options.top_p}
        body.update({key: value for key, value in sampling.items() if value is not None})
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        return merge_body(body, options.extra_body)

    def parse(self, reply: Any) -> list[Completion]:
        """One `Completion`: the concatenated ``text`` of the ``text`` content blocks (thinking,
        redacted thinking and tool blocks are skipped), ``stop_reason``, and ``usage``
        (input tokens include cache reads and writes). Raises `MalformedReply` when
        ``content`` is missing or ill-typed."""
        content = reply.get("content") if isinstance(reply, dict) else None
        if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
            raise MalformedReply("reply has no list of 'content' blocks")
        texts = [block.get("text") for block in content if block.get("type") == "text"]
        if not all(isinstance(text, str) for text in texts):
            raise MalformedReply("a text block has no 'text'")
        usage = reply.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        counts = {key: value for key, value in usage.items() if isinstance(value, int) and not isinstance(value, bool)}
        input_tokens = None
        if "input_tokens" in counts:
            input_tokens = counts["input_tokens"] + counts.get("cache_creation_input_tokens", 0) + counts.get("cache_read_input_tokens", 0)
        stop_reason = reply.get("stop_reason")
        return [
            Completion(
                text="".join(str(text) for text in texts),
                finish_reason=stop_reason if isinstance(stop_reason, str) else None,
                input_tokens=input_tokens,
                output_tokens=counts.get("output_tokens"),
            )
        ]
