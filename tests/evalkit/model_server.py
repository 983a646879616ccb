"""A real HTTP server that speaks OpenAI's and Anthropic's APIs, for tests of model providers.

    with ModelServer(api_key="sk-test", reply=humaneval_replies(problems), fault=fail_requests({1})) as server:
        ...  # POST to server.url + "/v1/chat/completions", "/v1/completions" or "/v1/messages"
        server.requests   # what arrived, numbered from 1, without the key

It listens on 127.0.0.1 (a free port) in daemon threads and answers like the real APIs do,
in their documented shapes: it checks the key (``Authorization: Bearer`` for OpenAI,
``x-api-key`` and ``anthropic-version`` for Anthropic; 401 otherwise), refuses what the real
APIs refuse (unknown body fields, more than 4 OpenAI stop sequences, Anthropic without
``max_tokens``, a temperature other than 1 with Anthropic's thinking enabled), returns ``n``
choices (one with ``ignore_n``), cuts each reply at its first stop sequence (excluded) or after
``max_tokens`` tokens (a token here is a word or a punctuation mark), and counts tokens in
``usage``. What it says comes from ``reply(kind, prompt_text, index_in_n)``: ``kind`` is
``chat`` (OpenAI chat and Anthropic; ``prompt_text`` is the last user message) or
``completion`` (``prompt_text`` is the prompt); None stands for a refusal.

``fault(request_number, path, body)`` may answer a request differently: an HTTP error with the
API's error body, a delay (then the normal answer, or the error), a body that is not JSON, or
a connection dropped without a reply. `fail_requests`, `throttle_every`, `slow`, `always`,
`malformed`, `drop` and `script` build the usual ones.
"""

from __future__ import annotations

import ast
import json
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from evalkit import Problem

Kind = Literal["chat", "completion"]
ReplyFn = Callable[[Kind, str, int], "str | None"]
FaultFn = Callable[[int, str, dict[str, Any]], "Fault | None"]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MESSAGES_PATH = "/v1/messages"
SECRET_HEADERS = ("authorization", "x-api-key")

_OPENAI_CHAT_FIELDS = frozenset(
    "model messages temperature top_p n stream stop max_tokens max_completion_tokens presence_penalty frequency_penalty "
    "logit_bias logprobs top_logprobs user seed response_format tools tool_choice parallel_tool_calls reasoning_effort "
    "service_tier store metadata modalities prediction audio stream_options verbosity prompt_cache_key safety_identifier".split()
)
_OPENAI_COMPLETION_FIELDS = frozenset(
    "model prompt suffix max_tokens temperature top_p n stream stream_options logprobs echo stop presence_penalty "
    "frequency_penalty best_of logit_bias user seed".split()
)
_ANTHROPIC_FIELDS = frozenset(
    "model messages max_tokens system temperature top_p top_k stop_sequences stream metadata thinking tools "
    "tool_choice service_tier container mcp_servers".split()
)
_TOKEN = re.compile(r"\w+|[^\w\s]")


def echo_reply(kind: Kind, prompt_text: str, index: int) -> str:
    """The default reply: says which choice it is and repeats the prompt."""
    return f"reply {index} to: {prompt_text}"


@dataclass(frozen=True)
class Fault:
    """How to answer one request instead of normally.

    After ``delay_s``: ``close`` drops the connection without a reply; else ``status`` (None:
    the normal answer) with ``body`` (a dict is sent as JSON, text or bytes as they are; None:
    the API's error body carrying ``message``) and extra ``headers`` (e.g. Retry-After).
    ``trickle_s`` > 0 sends the body one byte at a time, ``trickle_s`` apart (a reply that
    never quite stops coming, though no single read waits long).
    """

    status: int | None = None
    body: dict[str, Any] | str | bytes | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    close: bool = False
    trickle_s: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived: its number (from 1), path, decoded JSON body (None if it was
    not JSON), headers (lower-case names; the key headers' values replaced by ``***``) and
    ``time.monotonic()`` of its arrival."""

    number: int
    path: str
    body: Any
    headers: dict[str, str]
    arrived: float


def _numbers_fault(numbers: Collection[int], fault: Fault) -> FaultFn:
    wanted = frozenset(numbers)
    return lambda number, path, body: fault if number in wanted else None


def fail_requests(numbers: Collection[int], status: int = 500, message: str | None = None, headers: Mapping[str, str] | None = None) -> FaultFn:
    """Requests ``numbers`` (counted from 1) get HTTP ``status``; the others are answered."""
    return _numbers_fault(numbers, Fault(status=status, message=message, headers=dict(headers or {})))


def throttle_every(k: int, retry_after: str | None = "0.2", status: int = 429) -> FaultFn:
    """Requests 1, k+1, 2k+1, ... get ``status`` (429) with ``Retry-After: retry_after``."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    fault = Fault(status=status, headers=headers)
    return lambda number, path, body: fault if (number - 1) % k == 0 else None


def slow(delay_s: float, numbers: Collection[int] | None = None) -> FaultFn:
    """Requests ``numbers`` (all when None) are answered normally after ``delay_s``."""
    fault = Fault(delay_s=delay_s)
    if numbers is None:
        return lambda number, path, body: fault
    return _numbers_fault(numbers, fault)


def always(status: int, message: str | None = None, headers: Mapping[str, str] | None = None) -> FaultFn:
    """Every request gets HTTP ``status``."""
    fault = Fault(status=status, message=message, headers=dict(headers or {}))
    return lambda number, path, body: fault


def malformed(numbers: Collection[int] | None = None, body: str = "{not json") -> FaultFn:
    """Requests ``numbers`` (all when None) get 200 with ``body``, which is not JSON."""
    fault = Fault(status=200, body=body)
    return (lambda number, path, request: fault) if numbers is None else _numbers_fault(numbers, fault)


def drop(numbers: Collection[int] | None = None) -> FaultFn:
    """Requests ``numbers`` (all when None) see their connection closed without a reply."""
    fault = Fault(close=True)
    return (lambda number, path, body: fault) if numbers is None else _numbers_fault(numbers, fault)


def script(*faults: Fault | None) -> FaultFn:
    """Request i gets ``faults[i - 1]`` (None: answered normally); later ones are answered."""
    return lambda number, path, body: faults[number - 1] if number <= len(faults) else None


class _ApiRefusal(Exception):
    """A request the real API would refuse: its status and message."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


class ModelServer:
    """The server; a context manager. ``reply``, ``fault``, ``ignore_n`` and ``chat_content``
    may be changed while it runs.

    ``api_key`` None accepts any request without a key check. ``chat_content="parts"`` makes
    OpenAI chat replies carry their text as a list of content parts (a thinking part first),
    as some OpenAI-compatible servers do.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        reply: ReplyFn = echo_reply,
        fault: FaultFn | None = None,
        ignore_n: bool = False,
        chat_content: Literal["text", "parts"] = "text",
    ) -> None:
        self.api_key = api_key
        self.reply = reply
        self.fault = fault
        self.ignore_n = ignore_n
        self.chat_content = chat_content
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._closing = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        assert self._httpd is not None, "the server is not running"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being handled at the same time."""
        with self._lock:
            return self._max_in_flight

    def __enter__(self) -> ModelServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.model_server = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="model-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; handlers still waiting out a delay end at once. Idempotent."""
        self._closing.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    # --- called by the handler threads -------------------------------------------------

    def _arrive(self, path: str, body: Any, headers: Mapping[str, str]) -> int:
        shown = {name.lower(): ("***" if name.lower() in SECRET_HEADERS else value) for name, value in headers.items()}
        with self._lock:
            number = len(self._requests) + 1
            self._requests.append(RecordedRequest(number, path, body, shown, time.monotonic()))
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return number

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _sleep(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def _answer(self, path: str, body: Any, headers: Mapping[str, str], number: int) -> tuple[int, dict[str, Any]]:
        """The status and JSON body the API would answer with."""
        try:
            if path == MESSAGES_PATH:
                self._check_anthropic_auth(headers)
                return 200, self._anthropic(_json_object(body), number)
            if path in (CHAT_PATH, COMPLETIONS_PATH):
                self._check_openai_auth(headers)
                return 200, self._openai(path, _json_object(body), number)
            raise _ApiRefusal(404, f"Invalid URL (POST {path})")
        except _ApiRefusal as refusal:
            return refusal.status, error_body(path, refusal.status, refusal.message, refusal.error_type)

    def _check_openai_auth(self, headers: Mapping[str, str]) -> None:
        if self.api_key is None:
            return
        given = headers.get("authorization", "")
        if not given.startswith("Bearer ") or not given[7:]:
            raise _ApiRefusal(401, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth.")
        if given[7:] != self.api_key:
            key = given[7:]
            raise _ApiRefusal(401, f"Incorrect API key provided: {key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:] if len(key) > 7 else ''}.", "invalid_request_error")

    def _check_anthropic_auth(self, headers: Mapping[str, str]) -> None:
        if self.api_key is not None and headers.get("x-api-key") != self.api_key:
            raise _ApiRefusal(401, "invalid x-api-key", "authentication_error")
        if not headers.get("anthropic-version"):
            raise _ApiRefusal(400, "anthropic-version: header is required")

    def _openai(self, path: str, body: dict[str, Any], number: int) -> dict[str, Any]:
        chat = path == CHAT_PATH
        _check_fields(body, _OPENAI_CHAT_FIELDS if chat else _OPENAI_COMPLETION_FIELDS, "Unrecognized request argument supplied: {}")
        model = _required(body, "model", str, "you must provide a model parameter")
        if chat:
            messages = _required(body, "messages", list, "Missing required parameter: 'messages'.")
            prompt_text = _last_user_text(messages)
            prompt_tokens = sum(len(_TOKEN.findall(_content_text(m.get("content")))) for m in messages if isinstance(m, dict))
        else:
            prompt_text = _required(body, "prompt", str, "this test server takes one prompt, a string")
            prompt_tokens = len(_TOKEN.findall(prompt_text))
        _check_range(body, "temperature", 0, 2)
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        if len(stops) > 4:
            raise _ApiRefusal(400, f"Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length {len(stops)} instead.")
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise _ApiRefusal(400, f"Invalid 'n': integer below minimum value or above maximum value, got {n!r}.")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        choices, completion_tokens = [], 0
        for index in range(1 if self.ignore_n else n):
            raw = self.reply("chat" if chat else "completion", prompt_text, index)
            text, finish, _ = _generate(raw or "", stops, max_tokens)
            completion_tokens += len(_TOKEN.findall(text))
            if chat:
                content: Any = None if raw is None else self._chat_content(text)
                message = {"role": "assistant", "content": content, "refusal": "I can't help with that." if raw is None else None}
                choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
            else:
                choices.append({"text": text, "index": index, "logprobs": None, "finish_reason": finish})
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{number}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_model_server",
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        }

    def _chat_content(self, text: str) -> Any:
        if self.chat_content == "text":
            return text
        half = len(text) // 2
        thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "Thinking it over first."}]}
        return [thinking, {"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}]

    def _anthropic(self, body: dict[str, Any], number: int) -> dict[str, Any]:
        _check_fields(body, _ANTHROPIC_FIELDS, "{}: Extra inputs are not permitted")
        model = _required(body, "model", str, "model: Field required")
        max_tokens = _required(body, "max_tokens", int, "max_tokens: Field required")
        messages = _required(body, "messages", list, "messages: Field required")
        _check_range(body, "temperature", 0, 1)
        thinking = body.get("thinking")
        thinking_on = isinstance(thinking, dict) and thinking.get("type") == "enabled"
        if thinking_on and body.get("temperature", 1) != 1:
            raise _ApiRefusal(400, "`temperature` may only be set to 1 when thinking is enabled.")
        stops = body.get("stop_sequences") or []
        system = body.get("system")
        input_tokens = sum(len(_TOKEN.findall(_content_text(m.get("content")))) for m in messages if isinstance(m, dict))
        input_tokens += len(_TOKEN.findall(_content_text(system)))
        raw = self.reply("chat", _last_user_text(messages), 0)
        text, finish, stopped_by = _generate(raw or "", stops, max_tokens)
        content: list[dict[str, Any]] = []
        if thinking_on:
            content += [
                {"type": "thinking", "thinking": "Let me think about the problem first.", "signature": "c2lnbmF0dXJl"},
                {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
            ]
        if raw is not None:
            content.append({"type": "text", "text": text})
        stop_reason = {"stop": "stop_sequence" if stopped_by else "end_turn", "length": "max_tokens"}[finish] if raw is not None else "refusal"
        return {
            "id": f"msg_{number:024d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stopped_by,
            "usage": {"input_tokens": input_tokens, "output_tokens": len(_TOKEN.findall(text))},
        }


_Response = tuple[int, "dict[str, Any] | str | bytes", Mapping[str, str]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "model-server/1"

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        model: ModelServer = self.server.model_server  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        number = model._arrive(self.path, body, headers)
        self.trickle_s = 0.0
        try:
            response = self._response(model, number, body, headers)
        finally:
            # before the reply leaves: a client that has it may send its next request at once
            model._leave()
        try:
            if response is None:
                self.close_connection = True
            else:
                self._send(*response)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _response(self, model: ModelServer, number: int, body: Any, headers: Mapping[str, str]) -> _Response | None:
        """The status, body and extra headers of the reply; None to drop the connection."""
        try:
            fault = model.fault(number, self.path, body if isinstance(body, dict) else {}) if model.fault else None
            if fault is not None:
                self.trickle_s = fault.trickle_s
                model._sleep(fault.delay_s)
                if fault.close:
                    return None
                if fault.status is not None:
                    payload = fault.body if fault.body is not None else error_body(self.path, fault.status, fault.message)
                    return fault.status, payload, fault.headers
            status, answer = model._answer(self.path, body, headers, number)
            return status, answer, {}
        except Exception as exc:  # a test's reply or fault is broken: say so to the client
            return 500, error_body(self.path, 500, f"model_server: {exc!r}"), {}

    def do_GET(self) -> None:  # noqa: N802
        self._send(404, error_body(self.path, 404, f"Invalid URL (GET {self.path})"), {})

    def _send(self, status: int, payload: dict[str, Any] | str | bytes, headers: Mapping[str, str]) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload.encode() if isinstance(payload, str) else payload
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        model: ModelServer = self.server.model_server  # type: ignore[attr-defined]
        if getattr(self, "trickle_s", 0.0) <= 0:
            self.wfile.write(data)
            return
        for i in range(len(data)):
            if model._closing.is_set():
                self.close_connection = True
                return
            self.wfile.write(data[i : i + 1])
            model._sleep(self.trickle_s)

    def log_message(self, format: str, *args: Any) -> None:
        pass


_OPENAI_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error", 429: "requests", 500: "server_error", 503: "server_error"}
_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
_DEFAULT_MESSAGES = {
    429: "Rate limit reached for requests",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later",
    504: "Gateway timeout.",
    529: "Overloaded",
}


def error_body(path: str, status: int, message: str | None = None, error_type: str | None = None) -> dict[str, Any]:
    """The error body the API behind ``path`` sends with ``status``: OpenAI's
    ``{"error": {"message", "type", "param", "code"}}`` or Anthropic's
    ``{"type": "error", "error": {"type", "message"}}``."""
    text = message or _DEFAULT_MESSAGES.get(status, f"HTTP {status}")
    if path == MESSAGES_PATH:
        return {"type": "error", "error": {"type": error_type or _ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": text}}
    return {"error": {"message": text, "type": error_type or _OPENAI_ERROR_TYPES.get(status, "invalid_request_error"), "param": None, "code": None}}


def _json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _ApiRefusal(400, "We could not parse the JSON body of your request.")
    return body


def _required(body: dict[str, Any], key: str, kind: type, message: str) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _ApiRefusal(400, message)
    return value


def _check_fields(body: dict[str, Any], known: frozenset[str], message: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise _ApiRefusal(400, message.format(unknown[0]))


def _check_range(body: dict[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is not None and not (isinstance(value, (int, float)) and low <= value <= high):
        raise _ApiRefusal(400, f"{key}: Input should be between {low} and {high}")


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the ``text`` of its parts or blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text", ""), str))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise _ApiRefusal(400, "messages: at least one user message is required")
    return _content_text(users[-1].get("content"))


def _generate(text: str, stops: Sequence[str], max_tokens: int | None) -> tuple[str, Literal["stop", "length"], str | None]:
    """``text`` as the API returns it: cut before its first stop sequence, or after
    ``max_tokens`` tokens if that comes first; the finish reason and the stop sequence hit."""
    cut, reason, hit = len(text), "stop", None
    for stop in stops:
        at = text.find(stop) if stop else -1
        if 0 <= at < cut:
            cut, hit = at, stop
    if max_tokens is not None:
        tokens = list(_TOKEN.finditer(text[:cut]))
        if len(tokens) > max_tokens:
            cut, hit, reason = tokens[max_tokens - 1].end() if max_tokens > 0 else 0, None, "length"
    return text[:cut], reason, hit  # type: ignore[return-value]


# --- HumanEval replies ---------------------------------------------------------------------

Style = Literal["full", "helpers", "body", "think", "two_blocks", "nofence"]
STYLES: tuple[Style, ...] = ("full", "helpers", "body", "think", "two_blocks", "nofence")
UNKNOWN_REPLY = "I don't know"
COMPLETION_TAIL = "\n\ndef unrelated():\n    pass\n"


def humaneval_replies(problems: Sequence[Problem], style: Style | Literal["mixed"] = "mixed") -> Callable[[Kind, str, int], str]:
    """A ``reply`` that answers a HumanEval problem with its reference solution.

    The problem is the one whose prompt (stripped) is the longest found in ``prompt_text``;
    none: "I don't know". A chat reply is `humaneval_chat_reply` in ``style`` ("mixed": the
    style ``STYLES[N % 6]`` for task N); a completion is the canonical body followed by an
    unrelated function, which stop sequences must cut off.
    """
    keyed = sorted(((p.prompt.strip(), p) for p in problems), key=lambda item: len(item[0]), reverse=True)

    def reply(kind: Kind, prompt_text: str, index: int) -> str:
        problem = next((p for prompt, p in keyed if prompt and prompt in prompt_text), None)
        if problem is None:
            return UNKNOWN_REPLY
        if kind == "completion":
            return (problem.canonical_solution or "") + COMPLETION_TAIL
        chosen = style if style != "mixed" else STYLES[_task_number(problem, problems) % len(STYLES)]
        return humaneval_chat_reply(problem, chosen)

    return reply


def humaneval_chat_reply(problem: Problem, style: Style) -> str:
    """The reference solution written the way a chat model might write it (see `STYLES`).

    Whatever the style, exactly one fenced block outside ``<think>`` defines the entry point,
    and it is the solution (for ``body``: the block is the function's body alone).
    """
    solution = problem.prompt + (problem.canonical_solution or "")
    name = problem.entry_point
    call = example_call(problem)
    if style == "full":
        return f"Here is a complete implementation of `{name}`.\n\n```python\n{solution}```\n\nIt covers the cases in the docstring."
    if style == "helpers":
        code = (
            f'{problem.prompt}    _note_call("{name}")\n{problem.canonical_solution}\n\n'
            f'def _note_call(name: str) -> None:\n    """Where a real program would log the call."""\n    _CALLS.append(name)\n\n\n'
            f"_CALLS: list = []\n\n\nif __name__ == \"__main__\":\n    print({call})\n"
        )
        return f"I'll keep the bookkeeping in a small helper.\n\n```python\n{code}```\n\nRunning the file prints an example."
    if style == "body":
        return f"Replace the body of `{name}` with:\n\n```python\n{problem.canonical_solution}```\n"
    if style == "think":
        draft = f"def {name}(*args):\n    return None\n"
        return (
            f"<think>\nThe user wants `{name}`. A first draft:\n\n```python\n{draft}```\n\n"
            f"No, that ignores the specification entirely.\n</think>\n\nHere is the solution:\n\n```python\n{solution}```\n"
        )
    if style == "two_blocks":
        return f"You would use it like this:\n\n```python\nprint({call})\n```\n\nAnd here is the implementation:\n\n```python\n{solution}```\n\nHope this helps!"
    return solution


def example_call(problem: Problem) -> str:
    """A call of the entry point with literal arguments, taken from the problem's tests (its
    first such ``candidate(...)`` call); ``name.__doc__`` when the tests have none."""
    calls = []
    for node in ast.walk(ast.parse(problem.test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate":
            if all(_is_literal(arg) for arg in [*node.args, *(k.value for k in node.keywords)]):
                calls.append(node)
    if not calls:
        return f"{problem.entry_point}.__doc__"
    first = min(calls, key=lambda node: (node.lineno, node.col_offset))
    first.func = ast.Name(id=problem.entry_point, ctx=ast.Load())
    return ast.unparse(first)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _task_number(problem: Problem, problems: Sequence[Problem]) -> int:
    tail = problem.task_id.rpartition("/")[2]
    return int(tail) if tail.isdigit() else next(i for i, p in enumerate(problems) if p.task_id == problem.task_id)


def iter_fenced_blocks(text: str) -> Iterator[str]:
    """The contents of the ```python blocks of ``text``, outside ``<think>`` (for tests that
    check the replies themselves; evalkit's own extractor lives in evalkit)."""
    visible = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)
    yield from re.findall(r"```python\n(.*?)```", visible, flags=re.DOTALL)
