"""The HTTP client every model-API provider shares: retries, backoff, concurrency, errors.

This is the only module that imports httpx. `ApiClient.post` sends one JSON request and
returns what the provider's ``parse`` makes of the reply, retrying what a later attempt may
fix and raising `ApiError` (an `InfraError`) for everything else:

- retried: HTTP 408, 409, 429, 500, 502, 503, 504 and 529 (Anthropic's "overloaded"),
  connection errors and timeouts, a 2xx body that is not JSON, and a reply the provider's
  ``parse`` rejects with `MalformedReply`; at most ``max_retries`` times, so
  ``max_retries + 1`` attempts, then `ApiError` with the last status and reason;
- raised at once: every other non-2xx status (401/403 ``auth``, 404 ``not_found``, other 5xx
  ``server``, the rest ``bad_request``: other 4xx and redirects, which POSTs do not follow),
  and a URL that cannot be requested (``connection``, not retryable).

Between attempts the client sleeps a full-jitter backoff, ``uniform(0, min(max_backoff_s,
backoff_s * 2**retry))``, unless the reply said how long to wait (``retry-after-ms``, or
``Retry-After`` in seconds or as an HTTP date), which wins, capped at ``max_retry_after_s``.
At most ``concurrency`` requests are on the wire at once, fewer while the API throttles
(`evalkit._throttle.AdaptiveLimit`: halved on a 429/529, grown back one at a time; a
``Retry-After`` holds every request back); a request waiting out its backoff holds no slot.
``timeout_s`` bounds each phase of a request (connect, each read), and the whole request
takes at most twice that, so a reply that trickles in byte by byte ends as a timeout too.

Secrets: request headers (the API key) never appear in an exception, a log line or a
reason; a reason that echoes a secret header's value has it replaced by ``***``. httpx's
own log lines (``httpx`` INFO, ``httpcore`` DEBUG) name the method, URL and status only.
`ApiError` and our log lines show the URL without its query string, where some APIs put
keys (httpx's INFO line shows it whole).

Proxies: the environment is trusted (``HTTP(S)_PROXY``, ``NO_PROXY``, ``SSL_CERT_FILE``), so
a model API behind a corporate proxy works, except that loopback hosts (``127.0.0.1``,
``localhost``, ``[::1]``) are always reached directly: a local model server must not be sent
to a proxy that cannot reach it, and httpx only skips the proxy for hosts in ``NO_PROXY``.

`merge_body` is the providers' rule for a config's ``extra_body``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import httpx

from ._api import MalformedReply
from ._errors import InfraError, UserInputError
from ._throttle import AdaptiveLimit

T = TypeVar("T")

ErrorKind = Literal["auth", "not_found", "bad_request", "throttled", "server", "connection", "timeout", "malformed"]

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
THROTTLE_STATUSES = frozenset({429, 529})
_SECRET_HEADER_WORDS = ("authorization", "key", "token", "secret", "cookie")
_REASON_CHARS = 200
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIRECT_HOSTS = ("all://127.0.0.1", "all://localhost", "all://[::1]")
_TOTAL_TIMEOUTS = 2  # a request takes at most twice timeout_s in all

_log = logging.getLogger("evalkit.http")


class ApiError(InfraError):
    """A model API request failed: at once (not retryable) or after its retry budget.

    ``status`` is the last HTTP status (None when no reply came: connection error, timeout);
    ``reason`` one line: the API's own error message, else the start of the body, else the
    transport error; ``attempts`` how many requests were sent; ``retryable`` whether the
    failure was of a retryable kind (so the budget, not the request, ran out).
    """

    def __init__(self, *, url: str, status: int | None, kind: ErrorKind, reason: str, attempts: int, retryable: bool) -> None:
        self.url = url
        self.status = status
        self.kind: ErrorKind = kind
        self.reason = reason
        self.attempts = attempts
        self.retryable = retryable
        what = f"HTTP {status} ({kind})" if status is not None else _NO_REPLY.get(kind, kind)
        super().__init__(f"POST {url}: {what} after {attempts} attempt(s): {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {"url": self.url, "status": self.status, "kind": self.kind, "reason": self.reason, "attempts": self.attempts, "retryable": self.retryable}
        return (_rebuild_api_error, (fields,))


_NO_REPLY: dict[str, str] = {"connection": "connection failed", "timeout": "timed out"}


def _rebuild_api_error(fields: dict[str, Any]) -> ApiError:
    return ApiError(**fields)


@dataclass
class ApiStats:
    """Counters of one `ApiClient`: requests sent and what went wrong with them.

    ``requests`` counts every attempt; ``retries`` the attempts after a first; ``throttled``
    the 429/529 replies, ``server_errors`` the other 5xx, ``timeouts`` timeouts and 408s;
    ``failures`` the `ApiError`\\ s raised; ``concurrency_decreases`` how often throttling
    halved the requests in flight; ``waited_s`` the time spent in backoff sleeps.
    """

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    timeouts: int = 0
    malformed: int = 0
    failures: int = 0
    concurrency_decreases: int = 0
    waited_s: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Reply(Generic[T]):
    """What ``parse`` made of a 2xx reply, how many attempts it took, and the time from the
    first attempt to the reply (backoff included)."""

    value: T
    attempts: int
    elapsed_s: float


@dataclass(frozen=True)
class _Failure:
    status: int | None
    kind: ErrorKind
    reason: str
    retryable: bool
    retry_after_s: float | None = None
    cause: BaseException | None = None


class ApiClient:
    """An async HTTP client for one model API, used inside one event loop.

    ``headers`` go with every request (authentication included) and are never shown;
    ``timeout_s`` bounds each phase of a request (connect, each read, each write, waiting for
    a pooled connection), and twice ``timeout_s`` the whole request. Use as
    ``async with ApiClient(...) as client``; `aclose` is idempotent.

    Raises `UserInputError` for a header HTTP cannot carry (a key with a line break in it)
    and, on entering, for a proxy in the environment that httpx cannot use.
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        concurrency: int,
        max_backoff_s: float = 60.0,
        max_retry_after_s: float = 600.0,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("ApiClient needs concurrency >= 1, max_retries >= 0, timeout_s > 0 and backoff_s >= 0")
        self.stats = ApiStats()
        self._headers = _checked_headers(headers)
        self._secrets = _secret_values(self._headers)
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_retry_after_s = max_retry_after_s
        self._rng = rng or random.Random()
        self._concurrency = concurrency
        self._limit = AdaptiveLimit(concurrency)
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    async def __aenter__(self) -> ApiClient:
        if self._closed:
            raise RuntimeError("this ApiClient is closed")
        if self._client is None:
            limits = httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=self._concurrency)
            try:
                self._client = httpx.AsyncClient(
                    headers=self._headers,
                    timeout=httpx.Timeout(self._timeout_s),
                    limits=limits,
                    follow_redirects=False,
                    mounts=dict.fromkeys(_DIRECT_HOSTS),
                )
            except (ImportError, ValueError) as exc:
                raise UserInputError(f"the proxy set in the environment (HTTP_PROXY, HTTPS_PROXY or ALL_PROXY) cannot be used: {exc}") from exc
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; later `post` calls raise RuntimeError. Idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def post(self, url: str, body: dict[str, Any], parse: Callable[[Any], T]) -> Reply[T]:
        """POST ``body`` as JSON to ``url`` and return ``parse(decoded 2xx reply)``.

        ``parse`` raises `MalformedReply` for a reply it cannot use (retried like a 5xx).
        Raises `ApiError` when the request fails at once or after ``max_retries`` retries;
        RuntimeError outside ``async with``.
        """
        client = self._client
        if client is None:
            raise RuntimeError("ApiClient.post needs 'async with ApiClient(...)'")
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            async with self._limit.slot() as epoch:
                self.stats.requests += 1
                sent = await self._send(client, url, body)
            outcome = self._interpret(sent, parse) if isinstance(sent, httpx.Response) else sent
            if not isinstance(outcome, _Failure):
                self._limit.succeeded()
                return Reply(value=outcome.value, attempts=attempt, elapsed_s=time.monotonic() - started)
            self._count(outcome)
            if outcome.kind == "throttled":
                self._slow_down(epoch, outcome.retry_after_s)
            if not outcome.retryable or attempt > self._max_retries:
                self.stats.failures += 1
                raise ApiError(
                    url=_without_query(url),
                    status=outcome.status,
                    kind=outcome.kind,
                    reason=outcome.reason,
                    attempts=attempt,
                    retryable=outcome.retryable,
                ) from outcome.cause
            delay = self._delay(attempt - 1, outcome.retry_after_s)
            what = f"HTTP {outcome.status} ({outcome.kind})" if outcome.status is not None else outcome.kind
            _log.debug("POST %s: %s: %s; retry %d of %d in %.2f s", _without_query(url), what, outcome.reason, attempt, self._max_retries, delay)
            self.stats.retries += 1
            self.stats.waited_s += delay
            await asyncio.sleep(delay)

    async def _send(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response | _Failure:
        try:
            # httpx's timeouts bound each read; a reply trickling in byte by byte needs a total one
            return await asyncio.wait_for(client.post(url, json=body), _TOTAL_TIMEOUTS * self._timeout_s)
        except httpx.TimeoutException as exc:
            reason = f"{type(exc).__name__} (timeout_s={self._timeout_s:g})"
            return _Failure(None, "timeout", reason, True, cause=exc)
        except TimeoutError as exc:
            reason = f"no whole reply within {_TOTAL_TIMEOUTS * self._timeout_s:g} s (twice timeout_s={self._timeout_s:g})"
            return _Failure(None, "timeout", reason, True, cause=exc)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
            return _Failure(None, "connection", self._redact(_transport_reason(exc)), False, cause=exc)
        except httpx.DecodingError as exc:
            return _Failure(None, "malformed", self._redact(_transport_reason(exc)), True, cause=exc)
        except httpx.TransportError as exc:
            return _Failure(None, "connection", self._redact(_transport_reason(exc)), True, cause=exc)

    def _interpret(self, response: httpx.Response, parse: Callable[[Any], T]) -> _Parsed[T] | _Failure:
        status = response.status_code
        if 200 <= status < 300:
            try:
                decoded = json.loads(response.content)
            except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply for json
                return _Failure(status, "malformed", "reply is not JSON: " + self._redact(_snippet(response.text)), True, cause=exc)
            try:
                return _Parsed(parse(decoded))
            except MalformedReply as exc:
                return _Failure(status, "malformed", self._redact(_one_line(str(exc)) or "malformed reply"), True, cause=exc)
        reason = self._redact(_error_reason(response))
        if status in RETRY_STATUSES:
            kind: ErrorKind = "throttled" if status in THROTTLE_STATUSES else "timeout" if status == 408 else "server"
            return _Failure(status, kind, reason, True, retry_after_s=_retry_after(response.headers))
        if status in (401, 403):
            return _Failure(status, "auth", reason, False)
        if status == 404:
            return _Failure(status, "not_found", reason, False)
        return _Failure(status, "server" if status >= 500 else "bad_request", reason, False)

    def _slow_down(self, epoch: int, retry_after_s: float | None) -> None:
        before = self._limit.limit
        self._limit.throttled(epoch, retry_after_s)
        if self._limit.limit < before:
            self.stats.concurrency_decreases += 1
            _log.info("the model API is throttling: %d request(s) at once from now on (configured: %d)", self._limit.limit, self._limit.ceiling)

    def _count(self, failure: _Failure) -> None:
        stats = self.stats
        if failure.status in THROTTLE_STATUSES:
            stats.throttled += 1
        elif failure.kind == "timeout":
            stats.timeouts += 1
        elif failure.kind == "server":
            stats.server_errors += 1
        elif failure.kind == "connection":
            stats.connection_errors += 1
        elif failure.kind == "malformed":
            stats.malformed += 1

    def _delay(self, retry: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self._max_retry_after_s)
        return self._rng.uniform(0.0, min(self._max_backoff_s, self._backoff_s * 2.0**retry))

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class _Parsed(Generic[T]):
    value: T


def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers``, if every name and value is something HTTP can carry; `UserInputError`
    naming the header otherwise (never its value: it may be the key)."""
    for name, value in headers.items():
        bad = next((i for i, char in enumerate(value) if not (char == "\t" or " " <= char <= "~")), None)
        if bad is not None or not _HEADER_NAME.fullmatch(name):
            where = f"has a line break, control or non-ASCII character at position {bad}" if bad is not None else "is not a valid header name"
            raise UserInputError(f"the HTTP header {name!r} {where}; check the API key's environment variable and model.extra_headers")
    return dict(headers)


def _secret_values(headers: Mapping[str, str]) -> list[str]:
    """The values of headers that may carry credentials, longest first (and the token of a
    ``Bearer`` value on its own), for scrubbing them out of reasons."""
    secrets: set[str] = set()
    for name, value in headers.items():
        if any(word in name.lower() for word in _SECRET_HEADER_WORDS):
            for secret in (value, value.partition(" ")[2]):
                if len(secret.strip()) >= 4:
                    secrets.add(secret.strip())
    return sorted(secrets, key=len, reverse=True)


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``Retry-After`` (seconds
    or an HTTP date); None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_reason(response: httpx.Response) -> str:
    """The API's own message from an error body (``error.message`` of OpenAI and Anthropic,
    ``error`` or ``message`` or ``detail`` of others), else the body's start, else the status
    phrase; for a redirect, where it points."""
    if 300 <= response.status_code < 400:
        return f"redirected to {response.headers.get('location', '?')} (POSTs are not followed; fix base_url)"
    try:
        decoded = json.loads(response.content)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        error = decoded.get("error")
        for candidate in (error.get("message") if isinstance(error, dict) else error, decoded.get("message"), decoded.get("detail")):
            if isinstance(candidate, str) and candidate.strip():
                return _one_line(candidate)
    return _snippet(response.text) or response.reason_phrase or "no reason given"


def _transport_reason(exc: Exception) -> str:
    detail = _one_line(str(exc))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _snippet(text: str) -> str:
    line = _one_line(text)
    return line if len(line) <= _REASON_CHARS else line[:_REASON_CHARS] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _without_query(url: str) -> str:
    return url.partition("?")[0]


def merge_body(body: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with the top-level keys of ``extra`` (a config's ``extra_body``) set over it; a
    key whose value is None is removed instead (``max_tokens: null`` for an API that refuses it)."""
    merged = dict(body)
    for key, value in extra.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged
