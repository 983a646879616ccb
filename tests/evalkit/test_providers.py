"""The openai and anthropic providers against the real model server: what goes on the wire
(endpoint, headers, body) and what comes back (completions, usage), plus the HumanEval replies
the server gives for later stages' tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from evalkit import Benchmark, ConfigError, Problem, make_provider
from evalkit._anthropic import AnthropicProvider
from evalkit._api import ApiProvider, Completion, GenerationRequest, MalformedReply
from evalkit._http import ApiClient, ApiError
from evalkit._openai import OpenAIProvider

from .model_server import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    MESSAGES_PATH,
    STYLES,
    UNKNOWN_REPLY,
    Fault,
    ModelServer,
    RecordedRequest,
    humaneval_chat_reply,
    humaneval_replies,
    iter_fenced_blocks,
    script,
)

KEY = "sk-provider-test-0123456789"


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(api_key=KEY) as model_server:
        yield model_server


def openai(server: ModelServer, **options: Any) -> OpenAIProvider:
    provider = make_provider({"provider": "openai", "name": "gpt-test", "base_url": server.url + "/v1", **options})
    assert isinstance(provider, OpenAIProvider)
    return provider


def anthropic(server: ModelServer, **options: Any) -> AnthropicProvider:
    provider = make_provider({"provider": "anthropic", "name": "claude-test", "base_url": server.url, **options})
    assert isinstance(provider, AnthropicProvider)
    return provider


def generate(provider: ApiProvider, request: GenerationRequest, key: str | None = KEY) -> list[Completion]:
    """What one request of ``provider`` gives, over HTTP, as the generation stage will do it."""

    async def main() -> list[Completion]:
        options = provider.api_options
        async with ApiClient(headers=provider.headers(key), timeout_s=5, max_retries=options.max_retries, backoff_s=0.01, concurrency=1) as api:
            return (await api.post(provider.endpoint(), provider.body(request), provider.parse)).value

    return asyncio.run(main())


def last(server: ModelServer) -> RecordedRequest:
    return server.requests[-1]


# --- OpenAI --------------------------------------------------------------------------------


def test_openai_options_defaults_and_validation() -> None:
    provider = make_provider({"provider": "openai", "name": "gpt-4o-mini"})
    assert isinstance(provider, OpenAIProvider)
    assert provider.endpoint() == "https://api.openai.com/v1/chat/completions"
    assert (provider.prompt_kind, provider.max_n_per_request, provider.api_options.api_key_env) == ("chat", 20, "OPENAI_API_KEY")
    legacy = make_provider({"provider": "openai", "name": "davinci", "api": "completions", "base_url": "http://h:1/v1/", "max_n_per_request": 1})
    assert isinstance(legacy, OpenAIProvider)
    assert (legacy.endpoint(), legacy.prompt_kind, legacy.max_n_per_request) == ("http://h:1/v1/completions", "completion", 1)
    with pytest.raises(ConfigError, match="model.max_n_per_request"):
        make_provider({"provider": "openai", "name": "m", "max_n_per_request": 0})
    with pytest.raises(ConfigError, match="model.api"):
        make_provider({"provider": "openai", "name": "m", "api": "responses"})


def test_openai_chat_body_on_the_wire(server: ModelServer) -> None:
    provider = openai(server)
    stops = ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\nassert"]
    completions = generate(provider, GenerationRequest(task_id="t/0", prompt="Write f.", system="You write Python.", stop=stops))
    sent = last(server)
    assert sent.path == CHAT_PATH
    assert sent.body == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Write f."}],
        "temperature": 0.0,
        "max_tokens": 1024,
        "stop": stops[:4],
    }
    assert sent.headers["authorization"] == "***" and sent.headers["content-type"] == "application/json"
    assert completions == [Completion(text="reply 0 to: Write f.", finish_reason="stop", input_tokens=7, output_tokens=7)]


def test_openai_sends_set_fields_and_n(server: ModelServer) -> None:
    provider = openai(server, temperature=0.8, top_p=0.95, max_tokens=None)
    completions = generate(provider, GenerationRequest(task_id="t/0", prompt="p", n=5, seed=1234))
    assert last(server).body == {
        "model": "gpt-test", "messages": [{"role": "user", "content": "p"}], "temperature": 0.8, "top_p": 0.95, "seed": 1234, "n": 5,
    }  # fmt: skip
    assert [c.text for c in completions] == [f"reply {i} to: p" for i in range(5)]
    assert {(c.input_tokens, c.output_tokens) for c in completions} == {(1, None)}


def test_a_server_that_ignores_n_gives_fewer(server: ModelServer) -> None:
    server.ignore_n = True
    completions = generate(openai(server), GenerationRequest(task_id="t/0", prompt="p", n=4))
    assert last(server).body["n"] == 4
    assert [c.text for c in completions] == ["reply 0 to: p"]


def test_extra_body_is_merged_last_and_null_removes(server: ModelServer) -> None:
    extra = {"max_tokens": None, "max_completion_tokens": 3, "temperature": 1.0, "reasoning_effort": "low", "seed": None}
    provider = openai(server, extra_body=extra, extra_headers={"OpenAI-Organization": "org-test"})
    completions = generate(provider, GenerationRequest(task_id="t/0", prompt="a b c d e", seed=7))
    sent = last(server)
    assert sent.body == {"model": "gpt-test", "messages": [{"role": "user", "content": "a b c d e"}], "temperature": 1.0, "max_completion_tokens": 3, "reasoning_effort": "low"}
    assert sent.headers["openai-organization"] == "org-test"
    assert completions[0].text == "reply 0 to"
    assert completions[0].finish_reason == "length"


def test_a_field_the_api_does_not_know_is_a_bad_request(server: ModelServer) -> None:
    provider = openai(server, extra_body={"best_of": 3})
    with pytest.raises(ApiError) as caught:
        generate(provider, GenerationRequest(task_id="t/0", prompt="p"))
    assert (caught.value.kind, caught.value.reason) == ("bad_request", "Unrecognized request argument supplied: best_of")


def test_no_key_sends_no_authorization(server: ModelServer) -> None:
    server.api_key = None
    provider = openai(server, api_key_env=None)
    assert "Authorization" not in provider.headers(None)
    assert generate(provider, GenerationRequest(task_id="t/0", prompt="p"), key=None)[0].text == "reply 0 to: p"
    assert "authorization" not in last(server).headers


def test_openai_completions_api_and_stop_sequences(server: ModelServer, humaneval: Benchmark) -> None:
    problem = humaneval.problems()[2]
    server.reply = humaneval_replies(humaneval.problems())
    provider = openai(server, api="completions")
    completions = generate(provider, GenerationRequest(task_id=problem.task_id, prompt=problem.prompt, stop=["\ndef", "\nclass"], n=2))
    sent = last(server)
    assert sent.path == COMPLETIONS_PATH
    assert sent.body["prompt"] == problem.prompt and "messages" not in sent.body
    assert [c.text for c in completions] == [f"{problem.canonical_solution}\n"] * 2
    unstopped = generate(provider, GenerationRequest(task_id=problem.task_id, prompt=problem.prompt))
    assert unstopped[0].text.endswith("def unrelated():\n    pass\n")


def test_choices_come_back_in_index_order(server: ModelServer) -> None:
    shuffled = [{"index": i, "message": {"role": "assistant", "content": f"c{i}"}, "finish_reason": "stop"} for i in (2, 0, 1)]
    server.fault = script(Fault(status=200, body={"object": "chat.completion", "choices": shuffled, "usage": {"prompt_tokens": 3, "completion_tokens": 6}}))
    completions = generate(openai(server), GenerationRequest(task_id="t/0", prompt="p", n=3))
    assert [c.text for c in completions] == ["c0", "c1", "c2"]


def test_content_parts_are_joined_and_thinking_skipped(server: ModelServer) -> None:
    server.chat_content = "parts"
    completions = generate(openai(server), GenerationRequest(task_id="t/0", prompt="two halves"))
    assert completions[0].text == "reply 0 to: two halves"


def test_a_refusal_is_empty_text(server: ModelServer) -> None:
    server.reply = lambda kind, prompt, index: None
    completions = generate(openai(server), GenerationRequest(task_id="t/0", prompt="p"))
    assert completions == [Completion(text="", finish_reason="stop", input_tokens=1, output_tokens=0)]


@pytest.mark.parametrize(
    "reply",
    [
        None,
        [],
        {"choices": None},
        {"choices": {"0": {}}},
        {"choices": ["text"]},
        {"choices": [{"index": 0}]},
        {"choices": [{"message": {"content": 7}}]},
        {"error": {"message": "upstream overloaded"}},
    ],
)
def test_openai_chat_parse_rejects_what_the_api_does_not_document(reply: Any) -> None:
    provider = make_provider({"provider": "openai", "name": "m"})
    assert isinstance(provider, OpenAIProvider)
    with pytest.raises(MalformedReply):
        provider.parse(reply)


def test_openai_parse_names_an_error_sent_with_2xx_and_reads_completions() -> None:
    chat = make_provider({"provider": "openai", "name": "m"})
    assert isinstance(chat, OpenAIProvider)
    with pytest.raises(MalformedReply, match="upstream overloaded"):
        chat.parse({"error": {"message": "upstream overloaded"}})
    assert chat.parse({"choices": []}) == []
    parts = [{"type": "reasoning", "text": "first I think"}, {"type": "text", "text": "an"}, {"type": "refusal", "refusal": "no"}, {"type": "text", "text": "swer"}]
    assert chat.parse({"choices": [{"index": 0, "message": {"content": parts}}]})[0].text == "answer"
    legacy = make_provider({"provider": "openai", "name": "m", "api": "completions"})
    assert isinstance(legacy, OpenAIProvider)
    assert legacy.parse({"choices": [{"text": None, "index": 0}]})[0].text == ""
    with pytest.raises(MalformedReply):
        legacy.parse({"choices": [{"text": ["x"], "index": 0}]})


# --- Anthropic -----------------------------------------------------------------------------


def test_anthropic_body_and_headers_on_the_wire(server: ModelServer) -> None:
    provider = anthropic(server, max_tokens=None, top_p=0.9)
    assert (provider.endpoint(), provider.prompt_kind, provider.max_n_per_request) == (server.url + MESSAGES_PATH, "chat", 1)
    stops = ["\ndef", "\nclass", "\n#", "\nif", "\nprint"]
    completions = generate(provider, GenerationRequest(task_id="t/0", prompt="Write def f", system="Be brief.", stop=stops, seed=99))
    sent = last(server)
    assert sent.body == {
        "model": "claude-test",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Write def f"}],
        "temperature": 0.0,
        "top_p": 0.9,
        "stop_sequences": stops,
    }
    assert (sent.headers["x-api-key"], sent.headers["anthropic-version"], sent.headers["content-type"]) == ("***", "2023-06-01", "application/json")
    assert completions == [Completion(text="reply 0 to: Write def f", finish_reason="end_turn", input_tokens=6, output_tokens=7)]


def test_anthropic_stop_sequence_and_max_tokens(server: ModelServer) -> None:
    stopped = generate(anthropic(server), GenerationRequest(task_id="t/0", prompt="one. two", stop=[". t"]))
    assert (stopped[0].text, stopped[0].finish_reason) == ("reply 0 to: one", "stop_sequence")
    cut = generate(anthropic(server, max_tokens=2), GenerationRequest(task_id="t/0", prompt="x"))
    assert (cut[0].text, cut[0].finish_reason, cut[0].output_tokens) == ("reply 0", "max_tokens", 2)


def test_anthropic_thinking_blocks_are_skipped(server: ModelServer) -> None:
    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    with pytest.raises(ApiError) as caught:
        generate(anthropic(server, extra_body=thinking), GenerationRequest(task_id="t/0", prompt="p"))
    assert (caught.value.kind, caught.value.attempts) == ("bad_request", 1)
    assert "temperature" in caught.value.reason
    completions = generate(anthropic(server, extra_body={**thinking, "temperature": None}), GenerationRequest(task_id="t/0", prompt="p"))
    assert "temperature" not in last(server).body
    assert completions[0].text == "reply 0 to: p"


def test_anthropic_wrong_key_and_refusal(server: ModelServer) -> None:
    with pytest.raises(ApiError) as caught:
        generate(anthropic(server), GenerationRequest(task_id="t/0", prompt="p"), key="sk-ant-wrong")
    assert (caught.value.status, caught.value.kind, caught.value.reason) == (401, "auth", "invalid x-api-key")
    server.reply = lambda kind, prompt, index: None
    assert generate(anthropic(server), GenerationRequest(task_id="t/0", prompt="p"))[0] == Completion(text="", finish_reason="refusal", input_tokens=1, output_tokens=0)


def test_anthropic_parse() -> None:
    provider = make_provider({"provider": "anthropic", "name": "c"})
    assert isinstance(provider, AnthropicProvider)
    reply = {
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Here:\n"},
            {"type": "tool_use", "id": "t", "name": "run", "input": {}},
            {"type": "text", "text": "code"},
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 5, "output_tokens": 4},
    }
    assert provider.parse(reply) == [Completion(text="Here:\ncode", finish_reason="end_turn", input_tokens=105, output_tokens=4)]
    for bad in (None, {"content": "text"}, {"content": [{"type": "text"}]}, {"type": "error", "error": {"message": "x"}}):
        with pytest.raises(MalformedReply):
            provider.parse(bad)
    with pytest.raises(ValueError, match="one completion per request"):
        provider.body(GenerationRequest(task_id="t/0", prompt="p", n=2))


# --- HumanEval replies ---------------------------------------------------------------------

_RUNNER = """
import contextlib, io, json, sys
failures = []
for task_id, program in json.load(sys.stdin):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(program, task_id, "exec"), {"__name__": "__main__"})
    except BaseException as exc:
        failures.append([task_id, repr(exc)[:200]])
print(json.dumps(failures))
"""


def failing(programs: list[tuple[str, str]]) -> list[list[str]]:
    """The task_ids (and errors) of ``programs`` that raise, run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(programs), capture_output=True, text=True, timeout=120, check=True)
    result: list[list[str]] = json.loads(done.stdout)
    return result


def solution_program(problem: Problem, reply: str, style: str) -> str:
    """The program that checks ``reply``: its one fenced block that defines the entry point (the
    body block after the prompt, for ``body``; the whole reply for ``nofence``), then the tests."""
    if style == "nofence":
        code = reply
    else:
        blocks = list(iter_fenced_blocks(reply))
        if style == "body":
            assert len(blocks) == 1
            code = problem.prompt + blocks[0]
        else:
            defining = [b for b in blocks if f"def {problem.entry_point}(" in b]
            assert len(defining) == 1, (problem.task_id, style)
            code = defining[0]
    return f"{code}\n{problem.test}\ncheck({problem.entry_point})\n"


def test_every_style_of_reply_holds_a_correct_solution(humaneval: Benchmark) -> None:
    problems = humaneval.problems()
    programs = [(f"{p.task_id} {style}", solution_program(p, humaneval_chat_reply(p, style), style)) for style in STYLES for p in problems]
    assert failing(programs) == []


def test_the_think_draft_is_wrong_and_fenced_blocks_are_the_only_code(humaneval: Benchmark) -> None:
    problems = humaneval.problems()[:20]
    drafts = []
    for p in problems:
        reply = humaneval_chat_reply(p, "think")
        thought = reply.split("</think>")[0]
        drafts.append((p.task_id, thought.split("```python\n")[1].split("```")[0] + f"\n{p.test}\ncheck({p.entry_point})\n"))
        assert "```python" not in humaneval_chat_reply(p, "nofence")
        assert humaneval_chat_reply(p, "helpers").count('if __name__ == "__main__":') == 1
        usage = next(iter_fenced_blocks(humaneval_chat_reply(p, "two_blocks")))
        assert usage.startswith(f"print({p.entry_point}(")
    assert [task_id for task_id, _ in failing(drafts)] == [p.task_id for p in problems]


def test_humaneval_replies_through_the_server(server: ModelServer, humaneval: Benchmark) -> None:
    problems = humaneval.problems()
    server.reply = humaneval_replies(problems)
    provider = openai(server)
    chosen = [problems[i] for i in range(6)]
    texts = [generate(provider, GenerationRequest(task_id=p.task_id, prompt=f"Complete this function:\n```python\n{p.prompt.strip()}\n```\n"))[0].text for p in chosen]
    assert texts == [humaneval_chat_reply(p, STYLES[i]) for i, p in enumerate(chosen)]
    assert generate(provider, GenerationRequest(task_id="x", prompt="What is the meaning of life?"))[0].text == UNKNOWN_REPLY


def test_the_longest_matching_prompt_wins() -> None:
    short = Problem(task_id="T/0", prompt="def f(x):\n", entry_point="f", test="", canonical_solution="    return 0\n")
    long = Problem(task_id="T/1", prompt="import math\n\n\ndef f(x):\n", entry_point="f", test="", canonical_solution="    return 1\n")
    reply = humaneval_replies([short, long])
    assert reply("completion", "import math\n\n\ndef f(x):\n", 0).startswith("    return 1\n")
    assert reply("completion", "def f(x):\n", 0).startswith("    return 0\n")
