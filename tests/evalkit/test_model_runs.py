"""Whole runs against a model API: a real OpenAI- and Anthropic-compatible server on 127.0.0.1
(tests/evalkit/model_server.py) answering HumanEval prompts with reference solutions in chat
prose, real bubblewrap sandboxes and a real local Ray."""

from __future__ import annotations

import _thread
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import evalkit
from evalkit import BenchmarkConfig, ConfigError, InfraError, Problem, RunInterrupted

from .model_server import Fault, ModelServer, humaneval_replies

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.usefixtures("sandboxes", "ray_session")]

KEY = "sk-test-0123456789abcdef-never-on-disk"
KEY_ENV = "EVALKIT_TEST_MODEL_KEY"
EVALKIT = [sys.executable, "-m", "evalkit"]


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return evalkit.get_benchmark(BenchmarkConfig(name="humaneval")).problems()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def write_config(tmp_path: Path, server: ModelServer, *, ids: list[str] | None = None, limit: int | None = None,
                 n: int = 1, k: list[int] | None = None, **model: Any) -> Path:
    benchmark: dict[str, Any] = {"name": "humaneval"}
    if ids is not None:
        benchmark["ids"] = ids
    if limit is not None:
        benchmark["limit"] = limit
    provider = model.pop("provider", "openai")
    base = server.url + ("/v1" if provider == "openai" else "")
    options = {"provider": provider, "name": "test-model", "base_url": base, "api_key_env": KEY_ENV,
               "backoff_s": 0.01, "timeout_s": 10, "cache_dir": str(tmp_path / "cache"), **model}
    config = {"name": "api", "benchmark": benchmark, "model": options, "sampling": {"n": n, "k": k or [1]},
              "sandbox": {"timeout_s": 10}, "output_dir": str(tmp_path / "runs")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def prompt_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return str(body["messages"][-1]["content"])
    return str(body.get("prompt", ""))


def for_problem(problem: Problem, fault: Fault) -> Any:
    """A fault hook that hits every request about ``problem``."""
    return lambda number, path, body: fault if problem.prompt in prompt_of(body) else None


def assert_key_not_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"the API key was written to {path}"


def test_a_chat_model_solves_all_of_humaneval_through_prose_replies(tmp_path: Path, problems: list[Problem]) -> None:
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems, style="mixed")) as server:
        outcome = evalkit.run(write_config(tmp_path, server), progress=False)
        asked = len(server.requests)
    api = outcome.summary["generation"]["api"]
    assert asked == 164 + api["retries"], api  # a retry on a busy machine is fine; a lost or doubled request is not
    assert outcome.exit_code == 0, outcome.summary["counts"]
    assert outcome.summary["metrics"] == {"pass@1": 1.0}
    generation = outcome.summary["generation"]
    assert outcome.summary["run"]["model"] == "openai:test-model" and outcome.summary["run"]["model_params"]["temperature"] == 0.0
    assert generation["completions"] == 164 and generation["from_api"] == 164 and generation["failed_samples"] == 0
    frame = pd.read_parquet(outcome.run_dir / "samples.parquet")
    assert frame["prompt"].str.contains("def ").all() and frame["response"].str.len().gt(0).all()
    assert (frame["response"] != frame["completion"]).any()
    lines = (outcome.run_dir / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 164 and {json.loads(line)["source"] for line in lines} == {"api"}
    report = (outcome.run_dir / "report.html").read_text()
    assert "Model API" in report and "164 completions: 164 from the API" in report
    assert_key_not_in(outcome.run_dir)


def test_the_completions_api_with_stop_sequences(tmp_path: Path, problems: list[Problem]) -> None:
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems)) as server:
        outcome = evalkit.run(write_config(tmp_path, server, limit=20, api="completions"), progress=False)
        bodies = [r.body for r in server.requests]
    assert outcome.summary["metrics"] == {"pass@1": 1.0}
    assert sorted(body["prompt"] for body in bodies) == sorted(p.prompt for p in problems[:20])  # raw prompts, unstripped
    assert all(len(body["stop"]) <= 4 for body in bodies)


def test_an_anthropic_model(tmp_path: Path, problems: list[Problem]) -> None:
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems, style="mixed")) as server:
        outcome = evalkit.run(write_config(tmp_path, server, provider="anthropic", limit=12, system_prompt="Be brief."), progress=False)
        bodies = [r.body for r in server.requests]
    assert outcome.summary["metrics"] == {"pass@1": 1.0}
    assert all(body["system"] == "Be brief." and body["max_tokens"] == 1024 for body in bodies)


def test_throttling_and_server_errors_are_retried_and_every_sample_passes(tmp_path: Path, problems: list[Problem]) -> None:
    def fault(number: int, path: str, body: dict[str, Any]) -> Fault | None:
        if number % 3 == 0:
            return Fault(status=429, headers={"Retry-After": "0.05"}, body='{"error": {"message": "slow down", "type": "rate_limit"}}')
        if number % 5 == 0:
            return Fault(status=500, body='{"error": {"message": "upstream hiccup", "type": "server_error"}}')
        if number % 7 == 0:
            return Fault(status=200, body="{not json")
        return None

    with ModelServer(api_key=KEY, reply=humaneval_replies(problems, style="mixed"), fault=fault) as server:
        outcome = evalkit.run(write_config(tmp_path, server, limit=15, max_retries=6), progress=False)
        asked = len(server.requests)
    assert outcome.exit_code == 0 and outcome.summary["metrics"] == {"pass@1": 1.0}
    api = outcome.summary["generation"]["api"]
    assert api["retries"] == asked - 15 > 0
    assert api["throttled"] > 0


def test_a_request_that_keeps_failing_is_infra_error_with_the_reason_and_resume_asks_only_for_it(tmp_path: Path, problems: list[Problem]) -> None:
    broken = problems[3]
    fault = for_problem(broken, Fault(status=503, body='{"error": {"message": "model overloaded", "type": "server_error"}}'))
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems), fault=fault) as server:
        config = write_config(tmp_path, server, limit=6, max_retries=2)
        outcome = evalkit.run(config, progress=False)
        assert outcome.exit_code == 3
        assert outcome.summary["counts"]["infra_error"] == 1 and outcome.summary["metrics"] == {"pass@1": 1.0}
        assert outcome.summary["generation"]["failed_samples"] == 1
        row = pd.read_parquet(outcome.run_dir / "samples.parquet").set_index("task_id").loc[broken.task_id]
        assert row.status == "infra_error" and row.completion == ""
        assert "HTTP 503" in row.error and "model overloaded" in row.error and server.url in row.error
        assert len([r for r in server.requests if broken.prompt in prompt_of(r.body)]) == 3

        server.fault = None
        before = len(server.requests)
        resumed = evalkit.resume(outcome.run_dir, progress=False)
        asked = server.requests[before:]
    assert resumed.exit_code == 0 and resumed.summary["counts"]["passed"] == 6
    assert len(asked) == 1 and broken.prompt in prompt_of(asked[0].body)


def test_a_slow_reply_past_the_timeout_is_retried(tmp_path: Path, problems: list[Problem]) -> None:
    seen: set[str] = set()

    def fault(number: int, path: str, body: dict[str, Any]) -> Fault | None:
        prompt = prompt_of(body)
        if prompt not in seen:
            seen.add(prompt)
            return Fault(delay_s=2.0)
        return None

    with ModelServer(api_key=KEY, reply=humaneval_replies(problems), fault=fault) as server:
        outcome = evalkit.run(write_config(tmp_path, server, limit=3, timeout_s=0.5), progress=False)
        assert len(server.requests) == 6
    assert outcome.exit_code == 0 and outcome.summary["generation"]["api"]["timeouts"] == 3


def test_a_wrong_key_stops_the_run_with_exit_3_naming_the_url(tmp_path: Path, problems: list[Problem]) -> None:
    with ModelServer(api_key="the-right-key", reply=humaneval_replies(problems)) as server:
        config = write_config(tmp_path, server, limit=5)
        url = server.url
        proc = subprocess.run([*EVALKIT, "run", str(config), "-q"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, KEY_ENV: KEY})
        asked = len(server.requests)
    assert proc.returncode == 3, proc.stderr
    assert f"{url}/v1/chat/completions" in proc.stderr and "401" in proc.stderr and KEY_ENV in proc.stderr
    assert "Traceback" not in proc.stderr and KEY not in proc.stderr + proc.stdout
    assert asked <= 8  # the concurrent first requests, none retried
    assert_key_not_in(tmp_path / "runs")


def test_an_unreachable_api_stops_the_run_naming_the_url(tmp_path: Path, problems: list[Problem]) -> None:
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems)) as server:
        config = write_config(tmp_path, server, limit=5, max_retries=1)
        url = server.url
    # the server is gone: nothing listens on its port now
    with pytest.raises(InfraError) as caught:
        evalkit.run(config, progress=False)
    assert "unreachable" in str(caught.value) and f"{url}/v1/chat/completions" in str(caught.value)


def test_an_unset_key_variable_is_a_config_error_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problems: list[Problem]) -> None:
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems)) as server:
        config = write_config(tmp_path, server, limit=2)
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(ConfigError, match=f"{re.escape(str(config))}, line \\d+: .*{KEY_ENV}.* not set"):
            evalkit.run(config, progress=False)
        assert server.requests == []
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_the_cache_answers_a_second_run_and_no_cache_asks_again(tmp_path: Path, problems: list[Problem]) -> None:
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems, style="mixed")) as server:
        config = write_config(tmp_path, server, limit=8)
        first = evalkit.run(config, progress=False)
        assert len(server.requests) == 8
        second = evalkit.run(config, progress=False)
        assert len(server.requests) == 8
        third = evalkit.run(config, progress=False, use_cache=False)
        assert len(server.requests) == 16
    assert second.summary["generation"]["from_cache"] == 8 and second.summary["metrics"] == first.summary["metrics"] == {"pass@1": 1.0}
    assert third.summary["generation"]["from_api"] == 8
    assert second.run_dir != first.run_dir


def test_an_interrupted_run_resumes_without_asking_again_for_any_completion_it_has(tmp_path: Path, problems: list[Problem]) -> None:
    replies = humaneval_replies(problems)
    interrupted = []

    def fault(number: int, path: str, body: dict[str, Any]) -> Fault | None:
        if number == 4 and not interrupted:
            interrupted.append(number)
            _thread.interrupt_main()  # Ctrl-C, while completions and verdicts are arriving
        return Fault(delay_s=0.2)

    with ModelServer(api_key=KEY, reply=replies, fault=fault) as server:
        config = write_config(tmp_path, server, limit=12, concurrency=1, cache=False)
        with pytest.raises(RunInterrupted) as caught:
            evalkit.run(config, progress=False)
        run_dir = Path(str(caught.value.run_dir))
        have = {json.loads(line)["prompt"] for line in (run_dir / "completions.jsonl").read_text().splitlines()}
        assert 0 < len(have) < 12
        before = len(server.requests)
        outcome = evalkit.resume(run_dir, progress=False)
        asked = [prompt_of(r.body) for r in server.requests[before:]]
    assert outcome.exit_code == 0 and outcome.summary["counts"]["passed"] == 12
    assert not have & set(asked), "resume asked again for a completion the run folder holds"
    assert len(asked) == 12 - len(have)


def test_samples_run_while_later_completions_are_still_being_generated(tmp_path: Path, problems: list[Problem]) -> None:
    """The last request is held until a verdict is in the journal: without overlap of generation
    and execution the run could not finish (the request would fail after 60 s)."""
    replies = humaneval_replies(problems)
    last = problems[5]

    def fault(number: int, path: str, body: dict[str, Any]) -> Fault | None:
        if last.prompt not in prompt_of(body):
            return None
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(p.stat().st_size > 0 for p in (tmp_path / "runs").glob("*/samples.jsonl")):
                return None
            time.sleep(0.05)
        return Fault(status=400, body='{"error": {"message": "no verdict arrived while generating", "type": "test"}}')

    with ModelServer(api_key=KEY, reply=replies, fault=fault) as server:
        outcome = evalkit.run(write_config(tmp_path, server, limit=6, concurrency=6, max_retries=0), progress=False)
    assert outcome.exit_code == 0 and outcome.summary["counts"]["passed"] == 6


def test_n_samples_come_from_one_request_or_repeated_ones(tmp_path: Path, problems: list[Problem]) -> None:
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems)) as server:
        outcome = evalkit.run(write_config(tmp_path, server, limit=3, n=4, k=[1, 4], temperature=0.8, seed=7), progress=False)
        assert sorted(r.body["n"] for r in server.requests) == [4, 4, 4]
        assert {r.body["seed"] for r in server.requests} == {7}
    assert outcome.summary["metrics"] == {"pass@1": 1.0, "pass@4": 1.0} and outcome.summary["num_samples"] == 12

    with ModelServer(api_key=KEY, reply=humaneval_replies(problems), ignore_n=True) as server:
        outcome = evalkit.run(write_config(tmp_path, server, limit=3, n=4, k=[4], seed=7, cache=False), progress=False)
        per_problem = sorted(r.body.get("n", 1) for r in server.requests)
        seeds = sorted(r.body["seed"] for r in server.requests)
    assert per_problem == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]  # asked again for the rest each time
    assert seeds == [7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10, 10]
    assert outcome.summary["num_samples"] == 12 and outcome.exit_code == 0


def test_the_shipped_api_configs_load_and_name_their_key_variables(repo_root: Path) -> None:
    for name, env in (("openai.yaml", "OPENAI_API_KEY"), ("anthropic.yaml", "ANTHROPIC_API_KEY"), ("local-openai.yaml", None)):
        config = evalkit.load_config(repo_root / "configs" / name)
        assert (config.model.model_extra or {}).get("api_key_env") == env, name


def test_a_broken_prompt_template_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nbenchmark: {name: humaneval}\nmodel:\n  provider: openai\n  name: m\n  prompt_template: 'Solve {{ promt }}'\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 6: model.prompt_template: .*promt"):
        evalkit.load_config(path)


def test_a_custom_prompt_template_and_system_prompt_reach_the_model(tmp_path: Path, problems: list[Problem]) -> None:
    template = "Write {{ entry_point }} ({{ task_id }}) in Python.\n```python\n{{ prompt }}```\n"
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems, style="full")) as server:
        outcome = evalkit.run(write_config(tmp_path, server, limit=3, prompt_template=template, system_prompt="You write Python."), progress=False)
        messages = [r.body["messages"] for r in server.requests]
    assert outcome.summary["metrics"] == {"pass@1": 1.0}
    assert all(m[0] == {"role": "system", "content": "You write Python."} for m in messages)
    assert sorted(m[1]["content"] for m in messages) == sorted(f"Write {p.entry_point} ({p.task_id}) in Python.\n```python\n{p.prompt}```\n" for p in problems[:3])
    stored = [json.loads(line)["prompt"] for line in (outcome.run_dir / "plan.jsonl").read_text().splitlines()]
    assert stored == [f"Write {p.entry_point} ({p.task_id}) in Python.\n```python\n{p.prompt}```\n" for p in problems[:3]]


@pytest.mark.slow
def test_a_killed_run_resumes_without_asking_again_for_any_completion_it_has(tmp_path: Path, problems: list[Problem]) -> None:
    """kill -9 of the whole `evalkit run` (Ray included) while completions arrive."""
    with ModelServer(api_key=KEY, reply=humaneval_replies(problems, style="mixed"), fault=lambda *_: Fault(delay_s=0.3)) as server:
        config = write_config(tmp_path, server, limit=16, concurrency=2, cache=False)
        env = {**os.environ, KEY_ENV: KEY}
        proc = subprocess.Popen([*EVALKIT, "run", str(config), "-q"], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        journal = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = list((tmp_path / "runs").glob("*/completions.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 4:
                journal = found[0]
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert journal is not None, "no completions arrived"
        have = {json.loads(line)["prompt"] for line in journal.read_bytes().decode().splitlines() if line.endswith("}")}
        assert 4 <= len(have) < 16
        before = len(server.requests)
        resumed = subprocess.run([*EVALKIT, "resume", str(journal.parent), "-q"], env=env, capture_output=True, text=True, timeout=300)
        asked = [prompt_of(r.body) for r in server.requests[before:]]
    assert resumed.returncode == 0, resumed.stderr
    assert not have & set(asked), "resume asked again for a completion the run folder holds"
    summary = json.loads((journal.parent / "summary.json").read_text())
    assert summary["counts"]["passed"] == 16 and summary["generation"]["completions"] == 16
