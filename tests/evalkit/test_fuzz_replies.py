"""Fuzzing model replies through a real OpenAI- and Anthropic-compatible server on 127.0.0.1
(tests/evalkit/model_server.py), real bubblewrap sandboxes and a real local Ray.

Whatever comes back, each sample ends with a recorded outcome and the run completes: a
useless reply (empty, blank, prose, a refusal, broken code, megabytes) is the model's answer,
so it is judged like any other (``failed``, or ``passed`` when the code is in there); a 2xx
body that is not what the API documents (wrong types, HTML, truncated or binary, nested too
deeply) is retried, then ``infra_error`` with the reason; a reply that trickles in for ever
ends as a timeout. Never a crash of the generation stage, never a hang. Limits are small:
two attempts per request (max_retries 1), backoff 0.01 s, timeout_s 1 or 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import evalkit
from evalkit import BenchmarkConfig, InfraError, Problem, RunOutcome, UserInputError

from .model_server import Fault, Kind, ModelServer, humaneval_chat_reply

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.usefixtures("sandboxes", "ray_session")]

KEY_ENV = "EVALKIT_FUZZ_MODEL_KEY"


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return evalkit.get_benchmark(BenchmarkConfig(name="humaneval")).problems()


def run(tmp_path: Path, server: ModelServer, problems: list[Problem], count: int, **model: Any) -> tuple[RunOutcome, dict[str, dict[str, Any]]]:
    """Run the first ``count`` HumanEval problems against ``server``; the outcome and each
    problem's journal record by task_id."""
    provider = model.pop("provider", "openai")
    options = {"provider": provider, "name": "fuzz-model", "base_url": server.url + ("/v1" if provider == "openai" else ""),
               "api_key_env": None, "max_retries": 1, "backoff_s": 0.01, "timeout_s": 2, "cache": False, **model}
    config = {"name": "fuzz", "benchmark": {"name": "humaneval", "limit": count}, "model": options,
              "sandbox": {"timeout_s": 10}, "output_dir": str(tmp_path / "runs")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    outcome = evalkit.run(path, progress=False)
    records = [json.loads(line) for line in (outcome.run_dir / "samples.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert len(records) == count, "every sample has exactly one outcome"
    return outcome, {r["task_id"]: r for r in records}


def prompt_of(body: dict[str, Any]) -> str:
    messages = body.get("messages") or [{}]
    return str(messages[-1].get("content", "")) + str(body.get("prompt", ""))


def per_problem(problems: list[Problem], table: list[Any]) -> Callable[[str], Any]:
    """The entry of ``table`` for the problem a prompt is about (problem i gets table[i])."""

    def pick(prompt_text: str) -> Any:
        for problem, entry in zip(problems, table):
            if problem.prompt.strip() in prompt_text:
                return entry
        raise AssertionError("a prompt about no problem of the table")

    return pick


def test_useless_replies_are_the_models_answer(tmp_path: Path, problems: list[Problem]) -> None:
    def solution(i: int) -> str:
        return humaneval_chat_reply(problems[i], "full")

    replies: list[tuple[str | None, str]] = [  # (the reply, the verdict it must get)
        ("", "failed"),
        (" \n\t \n", "failed"),
        ("I would write a loop over the list and compare each pair of numbers. " * 20, "failed"),
        (None, "failed"),  # a refusal: content null, a 'refusal' message
        ("```python\ndef f():\n    return '\x00'\n```", "failed"),  # NUL in code: Python will not compile it
        ("```python\nx = '\ud800'\n```", "failed"),  # a lone surrogate, escaped in the JSON
        ("\x00\ud83d\u2028\x85\ufeff" + solution(6) + "\U0001f600 \x1b[31m", "passed"),  # odd characters around a good answer
        ("```python\n" + "def broken(:\n" * 1000 + "```", "failed"),
        ("<think>" + "hmm " * 10_000, "failed"),  # reasoning cut off by max_tokens: no code at all
        (solution(9) + "\n" + "and some more prose " * 5000, "passed"),
    ]
    pick = per_problem(problems, replies)

    def reply(kind: Kind, prompt_text: str, index: int) -> str | None:
        text: str | None = pick(prompt_text)[0]
        return text

    with ModelServer(reply=reply) as server:
        outcome, results = run(tmp_path, server, problems, len(replies), max_tokens=None)
    for problem, (text, verdict) in zip(problems, replies):
        record = results[problem.task_id]
        assert record["status"] == verdict, (problem.task_id, record["status"], record.get("error"))
    assert outcome.exit_code == 0 and outcome.summary["counts"]["infra_error"] == 0
    responses = {json.loads(line)["task_id"]: json.loads(line)["response"] for line in (outcome.run_dir / "completions.jsonl").read_text(encoding="utf-8").split("\n") if line}
    assert "\ud800" not in responses[problems[5].task_id] and "\ufffd" in responses[problems[5].task_id]
    assert responses[problems[3].task_id] == ""


MALFORMED: list[tuple[str, Fault, str]] = [  # (name, the 200 answer, what the error says)
    ("choices-not-a-list", Fault(status=200, body={"choices": {"0": {"message": {"content": "x"}}}}), "reply has no list of 'choices'"),
    ("content-an-int", Fault(status=200, body={"choices": [{"index": 0, "message": {"role": "assistant", "content": 5}}]}), "'content' is a int"),
    ("no-message", Fault(status=200, body={"choices": [{"index": 0, "finish_reason": "stop"}]}), "a choice has no 'message' object"),
    ("empty-choices", Fault(status=200, body={"choices": []}), "no completion (an empty 'choices' list)"),
    ("html", Fault(status=200, body="<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"), "reply is not JSON: <!DOCTYPE html>"),
    ("truncated", Fault(status=200, body='{"choices": [{"index": 0, "message": {"content": "def f'), "reply is not JSON"),
    ("json-null", Fault(status=200, body="null"), "reply has no list of 'choices'"),
    ("binary", Fault(status=200, body=bytes(range(256)) * 8), "reply is not JSON"),
    ("deep", Fault(status=200, body="[" * 100_000 + "]" * 100_000), "reply is not JSON"),
    ("huge-number", Fault(status=200, body='{"choices": [], "id": ' + "9" * 5000 + "}"), "reply is not JSON"),
    ("error-with-200", Fault(status=200, body={"error": {"message": "upstream model crashed", "type": "server_error"}}), "reply has no list of 'choices': upstream model crashed"),
]


def test_malformed_api_bodies_are_infra_errors_with_the_reason(tmp_path: Path, problems: list[Problem]) -> None:
    pick = per_problem(problems, MALFORMED)
    with ModelServer(fault=lambda number, path, body: pick(prompt_of(body))[1]) as server:
        outcome, results = run(tmp_path, server, problems, len(MALFORMED))
    for problem, (name, _, reason) in zip(problems, MALFORMED):
        record = results[problem.task_id]
        assert record["status"] == "infra_error" and reason in record["error"], (name, record["error"])
        assert record["error"].startswith("model API: POST http://127.0.0.1:")
        if name != "empty-choices":  # an empty list is a reply, not retried
            assert record["attempts"] == 2 and "after 2 attempt(s)" in record["error"], (name, record["error"])
    generation = outcome.summary["generation"]
    assert generation["failed_samples"] == len(MALFORMED) and generation["api"]["malformed"] == 2 * (len(MALFORMED) - 1)
    assert outcome.exit_code == 3  # samples without a verdict: the run says so, and resume can ask again


def test_odd_but_usable_fields_are_tolerated(tmp_path: Path, problems: list[Problem]) -> None:
    code = humaneval_chat_reply(problems[0], "full")
    odd = {"choices": [{"index": 10**400, "message": {"content": code}, "finish_reason": 5}], "usage": {"prompt_tokens": -1e300, "completion_tokens": True}}
    with ModelServer(fault=lambda number, path, body: Fault(status=200, body=odd)) as server:
        outcome, results = run(tmp_path, server, problems, 1)
    assert results[problems[0].task_id]["status"] == "passed" and outcome.exit_code == 0


def test_malformed_anthropic_bodies(tmp_path: Path, problems: list[Problem]) -> None:
    bodies: list[tuple[Any, str]] = [
        ({"type": "message", "content": "def f(): pass"}, "reply has no list of 'content' blocks"),
        ({"type": "message", "content": [{"type": "text"}]}, "a text block has no 'text'"),
        ("[" * 50_000, "reply is not JSON"),
        ({"type": "message", "content": [{"type": "text", "text": "```python\nx = '\ud83d'\n```"}]}, ""),  # usable: U+FFFD
    ]
    pick = per_problem(problems, bodies)
    with ModelServer(fault=lambda number, path, body: Fault(status=200, body=pick(prompt_of(body))[0])) as server:
        outcome, results = run(tmp_path, server, problems, len(bodies), provider="anthropic")
    for problem, (_, reason) in zip(problems, bodies):
        record = results[problem.task_id]
        if reason:
            assert record["status"] == "infra_error" and reason in record["error"], record["error"]
        else:
            assert record["status"] == "failed" and "\ufffd" in record["completion"], record
    assert outcome.exit_code == 3


@pytest.mark.slow
def test_a_5_mb_reply(tmp_path: Path, problems: list[Problem]) -> None:
    """A reply of 5 MB: the solution with megabytes of prose after it, and a solution with a
    5 MB comment in its code. Both are extracted and run."""
    padded = humaneval_chat_reply(problems[0], "full") + "\n" + "filler " * (5 * 2**20 // 7)
    commented = f"```python\n{problems[1].prompt}{problems[1].canonical_solution}# {'x' * 5 * 2**20}\n```"
    pick = per_problem(problems, [padded, commented])
    with ModelServer(reply=lambda kind, prompt_text, index: pick(prompt_text)) as server:
        started = time.monotonic()
        outcome, results = run(tmp_path, server, problems, 2, max_tokens=None, timeout_s=30)
    assert [results[p.task_id]["status"] for p in problems[:2]] == ["passed", "passed"], [r.get("error") for r in results.values()]
    assert len(results[problems[1].task_id]["completion"]) > 5 * 2**20
    assert outcome.exit_code == 0 and time.monotonic() - started < 120


@pytest.mark.slow
def test_a_reply_that_trickles_in_for_ever_times_out(tmp_path: Path, problems: list[Problem]) -> None:
    """One byte every 0.3 s: no single read waits the 1 s timeout_s, so only a limit on the
    whole request ends it (before, the run waited for the whole body: ~10 minutes here)."""
    replies = [humaneval_chat_reply(problem, "full") for problem in problems[:3]]
    pick = per_problem(problems, [None, Fault(trickle_s=0.3), None])
    with ModelServer(reply=lambda kind, prompt_text, index: per_problem(problems, replies)(prompt_text),
                     fault=lambda number, path, body: pick(prompt_of(body))) as server:
        started = time.monotonic()
        outcome, results = run(tmp_path, server, problems, 3, timeout_s=1)
        elapsed = time.monotonic() - started
    trickled = results[problems[1].task_id]
    assert trickled["status"] == "infra_error" and trickled["attempts"] == 2, trickled
    assert "timed out after 2 attempt(s): no whole reply within 2 s" in trickled["error"], trickled["error"]
    assert [results[p.task_id]["status"] for p in (problems[0], problems[2])] == ["passed", "passed"]
    assert outcome.exit_code == 3 and elapsed < 60, elapsed


@pytest.mark.slow
def test_an_api_whose_every_reply_trickles_stops_the_run(tmp_path: Path, problems: list[Problem]) -> None:
    with ModelServer(fault=lambda number, path, body: Fault(trickle_s=0.3)) as server:
        started = time.monotonic()
        with pytest.raises(InfraError, match="the model API is unreachable: .*no whole reply within 2 s"):
            run(tmp_path, server, problems, 2, timeout_s=1)
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("model", "env"),
    [({"extra_headers": {"X-Team": "a\nb"}}, None), ({"api_key_env": KEY_ENV}, "sk-abc\r\nX-Injected: 1")],
    ids=["extra-header", "api-key"],
)
def test_a_header_http_cannot_carry_is_a_user_error(tmp_path: Path, problems: list[Problem], monkeypatch: pytest.MonkeyPatch,
                                                    model: dict[str, Any], env: str | None) -> None:
    """Before, the generation stage wrapped it: 'infrastructure failure: the generation stage
    failed: UserInputError: ...' and exit 3. It is the user's input: exit 2."""
    if env is not None:
        monkeypatch.setenv(KEY_ENV, env)
    with ModelServer() as server, pytest.raises(UserInputError, match=r"the HTTP header '[\w-]+' has a line break") as caught:
        run(tmp_path, server, problems, 1, **model)
    assert not isinstance(caught.value, InfraError)
    assert env is None or env not in str(caught.value)
