"""evalkit._http.ApiClient against a real HTTP server on 127.0.0.1: retries, backoff,
Retry-After, error kinds, concurrency, proxies, and the key kept out of every message."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import pickle
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from evalkit import InfraError, UserInputError
from evalkit._api import MalformedReply
from evalkit._http import ApiClient, ApiError, Reply, _retry_after

from .model_server import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    MESSAGES_PATH,
    Fault,
    ModelServer,
    always,
    drop,
    fail_requests,
    malformed,
    script,
    slow,
    throttle_every,
)

KEY = "sk-test-9f8e7d6c5b4a"
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def completion_body(prompt: str = "def f():") -> dict[str, Any]:
    return {"model": "test-model", "prompt": prompt, "max_tokens": 50}


def choices(reply: Any) -> list[str]:
    """A minimal parse: the texts of an OpenAI completions reply."""
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
        raise MalformedReply("no choices")
    return [choice["text"] for choice in reply["choices"]]


def client(key: str | None = KEY, **overrides: Any) -> ApiClient:
    settings: dict[str, Any] = {"timeout_s": 2.0, "max_retries": 3, "backoff_s": 0.01, "concurrency": 4}
    settings.update(overrides)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return ApiClient(headers=headers, **settings)


async def post(api: ApiClient, url: str, body: dict[str, Any] | None = None, parse: Callable[[Any], Any] = choices) -> Reply[Any]:
    async with api:
        return await api.post(url, body or completion_body(), parse)


def post_error(api: ApiClient, url: str, body: dict[str, Any] | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        run(post(api, url, body))
    return caught.value


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(api_key=KEY) as model_server:
        yield model_server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- retries -------------------------------------------------------------------------------


def test_server_errors_are_retried_until_an_answer(server: ModelServer) -> None:
    server.fault = fail_requests({1, 2}, status=500)
    api = client()
    reply = run(post(api, server.url + COMPLETIONS_PATH))
    assert reply.value == ["reply 0 to: def f():"]
    assert reply.attempts == 3
    assert len(server.requests) == 3
    assert api.stats.as_dict() | {"waited_s": 0} == {
        "requests": 3, "retries": 2, "throttled": 0, "server_errors": 2, "connection_errors": 0,
        "timeouts": 0, "malformed": 0, "failures": 0, "concurrency_decreases": 0, "waited_s": 0,
    }  # fmt: skip


@pytest.mark.parametrize("status", [408, 409, 502, 503, 504, 529])
def test_every_transient_status_is_retried(server: ModelServer, status: int) -> None:
    server.fault = fail_requests({1}, status=status)
    reply = run(post(client(), server.url + COMPLETIONS_PATH))
    assert reply.attempts == 2


def test_retry_after_in_seconds_is_waited_for(server: ModelServer) -> None:
    server.fault = throttle_every(100, retry_after="0.3")
    api = client(backoff_s=0.001)
    reply = run(post(api, server.url + COMPLETIONS_PATH))
    first, second = server.requests
    assert reply.attempts == 2
    assert second.arrived - first.arrived >= 0.3
    assert api.stats.throttled == 1
    assert api.stats.waited_s == pytest.approx(0.3)


def test_retry_after_ms_is_waited_for(server: ModelServer) -> None:
    server.fault = script(Fault(status=429, headers={"retry-after-ms": "250"}))
    reply = run(post(client(backoff_s=0.001), server.url + COMPLETIONS_PATH))
    first, second = server.requests
    assert reply.attempts == 2
    assert second.arrived - first.arrived >= 0.25


def test_retry_after_is_capped(server: ModelServer) -> None:
    server.fault = script(Fault(status=503, headers={"Retry-After": "3600"}))
    api = client(max_retry_after_s=0.05)
    assert run(post(api, server.url + COMPLETIONS_PATH)).attempts == 2
    assert api.stats.waited_s == 0.05


def test_retry_after_forms() -> None:
    in_30_s = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (_retry_after(httpx.Headers({"Retry-After": in_30_s})) or 0) <= 30
    assert _retry_after(httpx.Headers({"Retry-After": email.utils.formatdate(time.time() - 30, usegmt=True)})) == 0
    assert _retry_after(httpx.Headers({"Retry-After": "1.5"})) == 1.5
    assert _retry_after(httpx.Headers({"Retry-After": "2", "retry-after-ms": "120"})) == 0.12
    assert _retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert _retry_after(httpx.Headers({})) is None


class _Ceiling(random.Random):
    """Draws the top of every range, so the backoff is its upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_doubles_with_full_jitter_up_to_its_cap(server: ModelServer) -> None:
    server.fault = always(500)
    api = client(max_retries=4, backoff_s=0.01, max_backoff_s=0.03, rng=_Ceiling())
    error = post_error(api, server.url + COMPLETIONS_PATH)
    assert error.attempts == 5
    assert api.stats.waited_s == pytest.approx(0.01 + 0.02 + 0.03 + 0.03)
    jittered = client(max_retries=4, backoff_s=0.01, max_backoff_s=0.03, rng=random.Random(7))
    post_error(jittered, server.url + COMPLETIONS_PATH)
    assert 0 < jittered.stats.waited_s < 0.09


def test_a_spent_budget_raises_the_last_status_and_reason(server: ModelServer) -> None:
    server.fault = script(Fault(500, message="first"), Fault(503, message="second"), Fault(502, message="last"), None)
    api = client(max_retries=2)
    error = post_error(api, server.url + COMPLETIONS_PATH)
    assert (error.status, error.kind, error.reason, error.attempts, error.retryable) == (502, "server", "last", 3, True)
    assert str(error) == f"POST {server.url}{COMPLETIONS_PATH}: HTTP 502 (server) after 3 attempt(s): last"
    assert isinstance(error, InfraError)
    assert len(server.requests) == 3
    assert api.stats.failures == 1


def test_anthropic_overload_is_throttling_and_its_message_the_reason(server: ModelServer) -> None:
    server.fault = always(529)
    error = post_error(client(max_retries=1), server.url + MESSAGES_PATH)
    assert (error.status, error.kind, error.reason, error.attempts) == (529, "throttled", "Overloaded", 2)


def test_no_retries_means_one_attempt(server: ModelServer) -> None:
    server.fault = always(500)
    assert post_error(client(max_retries=0), server.url + COMPLETIONS_PATH).attempts == 1


# --- errors raised at once -----------------------------------------------------------------


def test_a_wrong_key_is_an_auth_error_sent_once(server: ModelServer) -> None:
    api = client(key="sk-wrong-0000000000")
    error = post_error(api, server.url + COMPLETIONS_PATH)
    assert (error.status, error.kind, error.attempts, error.retryable) == (401, "auth", 1, False)
    assert error.reason.startswith("Incorrect API key provided")
    assert len(server.requests) == 1
    assert api.stats.requests == 1 and api.stats.retries == 0


@pytest.mark.parametrize(("status", "kind"), [(400, "bad_request"), (403, "auth"), (404, "not_found"), (413, "bad_request"), (422, "bad_request"), (501, "server")])
def test_other_statuses_are_not_retried(server: ModelServer, status: int, kind: str) -> None:
    server.fault = always(status, message=f"nope {status}")
    error = post_error(client(), server.url + COMPLETIONS_PATH)
    assert (error.status, error.kind, error.reason, error.attempts, error.retryable) == (status, kind, f"nope {status}", 1, False)
    assert len(server.requests) == 1


def test_an_unknown_path_is_not_found(server: ModelServer) -> None:
    error = post_error(client(), server.url + "/v1/nothing")
    assert (error.status, error.kind, error.reason) == (404, "not_found", "Invalid URL (POST /v1/nothing)")


def test_a_redirect_is_not_followed(server: ModelServer) -> None:
    server.fault = always(307, headers={"Location": "https://elsewhere.example/v1/completions"})
    error = post_error(client(), server.url + COMPLETIONS_PATH)
    assert (error.status, error.kind, error.attempts) == (307, "bad_request", 1)
    assert "https://elsewhere.example/v1/completions" in error.reason


def test_a_body_that_is_not_an_api_error_gives_its_start(server: ModelServer) -> None:
    server.fault = lambda number, path, body: Fault(status=400, body="<html>" + "x" * 500 + "</html>")
    error = post_error(client(), server.url + COMPLETIONS_PATH)
    assert error.reason.startswith("<html>xxx") and error.reason.endswith("...")
    assert len(error.reason) == 203


# --- malformed replies, timeouts, connections ---------------------------------------------


def test_a_reply_that_is_not_json_is_retried_then_malformed(server: ModelServer) -> None:
    server.fault = malformed()
    api = client(max_retries=2)
    error = post_error(api, server.url + COMPLETIONS_PATH)
    assert (error.status, error.kind, error.attempts, error.retryable) == (200, "malformed", 3, True)
    assert error.reason == "reply is not JSON: {not json"
    assert api.stats.malformed == 3


def test_a_reply_parse_rejects_is_retried(server: ModelServer) -> None:
    server.fault = script(Fault(status=200, body={"object": "list", "data": []}))
    api = client()
    reply = run(post(api, server.url + COMPLETIONS_PATH))
    assert (reply.attempts, api.stats.malformed) == (2, 1)


def test_a_slow_reply_times_out_and_is_retried(server: ModelServer) -> None:
    server.fault = slow(2.0, numbers={1})
    api = client(timeout_s=0.3)
    reply = run(post(api, server.url + COMPLETIONS_PATH))
    assert reply.attempts == 2
    assert api.stats.timeouts == 1


def test_timeouts_spend_the_budget(server: ModelServer) -> None:
    server.fault = slow(2.0)
    error = post_error(client(timeout_s=0.2, max_retries=1), server.url + COMPLETIONS_PATH)
    assert (error.status, error.kind, error.attempts, error.retryable) == (None, "timeout", 2, True)
    assert "timed out after 2 attempt(s): ReadTimeout (timeout_s=0.2)" in str(error)


def test_a_delay_within_the_timeout_is_just_slow(server: ModelServer) -> None:
    server.fault = slow(0.2)
    reply = run(post(client(timeout_s=1.0), server.url + COMPLETIONS_PATH))
    assert reply.attempts == 1 and reply.elapsed_s >= 0.2


def test_a_refused_connection_is_a_connection_error() -> None:
    api = client(max_retries=2)
    error = post_error(api, f"http://127.0.0.1:{closed_port()}/v1/completions?key=hidden")
    assert (error.status, error.kind, error.attempts, error.retryable) == (None, "connection", 3, True)
    assert api.stats.connection_errors == 3
    assert "hidden" not in str(error)
    assert isinstance(error.__cause__, httpx.ConnectError)


def test_a_dropped_connection_is_retried(server: ModelServer) -> None:
    server.fault = drop({1})
    api = client()
    reply = run(post(api, server.url + COMPLETIONS_PATH))
    assert reply.attempts == 2
    assert api.stats.connection_errors == 1


# --- concurrency -----------------------------------------------------------------------------


def test_at_most_concurrency_requests_are_in_flight(server: ModelServer) -> None:
    server.fault = slow(0.25)
    api = client(concurrency=3)

    async def many() -> list[Any]:
        async with api:
            return await asyncio.gather(*(api.post(server.url + COMPLETIONS_PATH, completion_body(f"p{i}"), choices) for i in range(8)))

    replies = run(many())
    assert [r.value for r in replies] == [[f"reply 0 to: p{i}"] for i in range(8)]
    assert server.max_in_flight == 3


def test_a_request_waiting_out_its_backoff_holds_no_slot(server: ModelServer) -> None:
    # a 503's Retry-After delays only its own request (a 429's holds every request back: below)
    server.fault = lambda number, path, body: Fault(status=503, headers={"Retry-After": "30"}) if body.get("prompt") == "first" else None
    api = client(concurrency=1)

    async def two() -> None:
        async with api:
            first = asyncio.create_task(api.post(server.url + COMPLETIONS_PATH, completion_body("first"), choices))
            while api.stats.server_errors == 0:
                await asyncio.sleep(0.01)
            # the first request sleeps 30 s between attempts; the second must not wait for it
            await asyncio.wait_for(api.post(server.url + COMPLETIONS_PATH, completion_body("second"), choices), timeout=10)
            first.cancel()

    run(two())
    assert [r.body["prompt"] for r in server.requests] == ["first", "second"]


# --- secrets, proxies, lifecycle -----------------------------------------------------------


def test_the_key_never_shows(server: ModelServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.fault = script(Fault(500, message=f"upstream said: bad key {KEY}"), Fault(500, message=f"Bearer {KEY} rejected"))
    error = post_error(client(max_retries=1), server.url + COMPLETIONS_PATH)
    assert "***" in error.reason
    wrong = "sk-wrong-key-77777777"
    auth_error = post_error(client(key=wrong), server.url + COMPLETIONS_PATH)
    server.fault = slow(1.0)
    timeout_error = post_error(client(timeout_s=0.1, max_retries=0), server.url + COMPLETIONS_PATH)
    messages = [str(error), repr(error), str(auth_error), repr(auth_error), str(timeout_error), caplog.text]
    assert {"httpx", "httpcore.http11", "evalkit.http"} <= {record.name for record in caplog.records}
    for text in messages:
        assert KEY not in text and wrong not in text
    assert [r.headers["authorization"] for r in server.requests[:2]] == ["***", "***"]


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_loopback_is_never_proxied(server: ModelServer, monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, f"http://127.0.0.1:{closed_port()}")
    for url in (server.url, server.url.replace("127.0.0.1", "localhost")):
        assert run(post(client(), url + COMPLETIONS_PATH)).attempts == 1


def test_other_hosts_go_through_the_environments_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    with ModelServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        error = post_error(client(), "http://models.example/v1/completions")
    assert error.status == 404
    assert [r.path for r in proxy.requests] == ["http://models.example/v1/completions"]


def test_an_unusable_proxy_in_the_environment_is_the_users_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "ftp://proxy.example:21")
    with pytest.raises(UserInputError, match="HTTPS_PROXY or ALL_PROXY"):
        run(post(client(), "http://127.0.0.1:1/v1/completions"))


@pytest.mark.parametrize("key", [KEY + "\n", KEY + "\u2019", "sk-\r\nX-Injected: 1"])
def test_a_key_http_cannot_carry_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(UserInputError, match="'Authorization' has a line break, control or non-ASCII character") as caught:
        client(key=key)
    assert key.strip() not in str(caught.value) and "sk-" not in str(caught.value)


def test_a_broken_test_reply_is_reported_as_such(server: ModelServer) -> None:
    server.reply = lambda kind, prompt, index: str(1 / 0)
    error = post_error(client(max_retries=0), server.url + COMPLETIONS_PATH)
    assert error.reason == "model_server: ZeroDivisionError('division by zero')"


def test_api_error_survives_pickling() -> None:
    error = ApiError(url="http://x/v1", status=429, kind="throttled", reason="slow down", attempts=6, retryable=True)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.status, copy.kind, copy.attempts, copy.retryable) == (str(error), 429, "throttled", 6, True)


def test_post_needs_an_open_client_and_closing_twice_is_fine(server: ModelServer) -> None:
    api = client()

    async def misuse() -> None:
        with pytest.raises(RuntimeError, match="async with"):
            await api.post(server.url + COMPLETIONS_PATH, completion_body(), choices)
        async with api:
            await api.post(server.url + COMPLETIONS_PATH, completion_body(), choices)
        await api.aclose()
        with pytest.raises(RuntimeError):
            await api.post(server.url + COMPLETIONS_PATH, completion_body(), choices)

    run(misuse())


def test_chat_path_answers_through_the_client(server: ModelServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    reply = run(post(client(), server.url + CHAT_PATH, body, parse=lambda r: r["choices"][0]["message"]["content"]))
    assert reply.value == "reply 0 to: hello"


def test_a_throttle_holds_every_request_back_until_its_retry_after_and_halves_the_concurrency(server: ModelServer) -> None:
    server.fault = lambda number, path, body: Fault(status=429, headers={"Retry-After": "0.5"}) if number == 1 else None
    api = client(concurrency=4)

    async def two() -> float:
        async with api:
            first = asyncio.create_task(api.post(server.url + COMPLETIONS_PATH, completion_body("first"), choices))
            while api.stats.throttled == 0:
                await asyncio.sleep(0.01)
            told = time.monotonic()
            await api.post(server.url + COMPLETIONS_PATH, completion_body("second"), choices)
            await first
            return told

    told = run(two())
    second = next(r for r in server.requests if r.body["prompt"] == "second")
    assert second.arrived >= told + 0.4  # not sent before the API's Retry-After (less what had passed)
    assert api.stats.concurrency_decreases == 1 and api._limit.lowest == 2
