"""The generation stage: asks a model API for the completions a run lacks, while the run goes on.

    planned samples (rendered prompts) ─► completion cache? ─► ApiClient (retries, concurrency)
        ─► code extraction ─► completions.jsonl + cache ─► Feed ─► scheduler (sandboxes)

It runs in a thread of its own with an asyncio loop, so requests overlap each other and the
sandboxes run each sample as soon as its completion is in. A request that fails for good makes
its samples ``infra_error`` verdicts carrying the URL, the last HTTP status and the API's message
(never an empty completion). A failure that every later request would share ends the run with
exit 3: a key the API refuses, an unknown model or endpoint, or an API that could not be reached
before any request had succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._api import ApiProvider, Completion, GenerationRequest
from ._benchmarks import Benchmark
from ._cache import CompletionCache, cache_key, default_cache_dir
from ._config import EvalConfig
from ._errors import ConfigError, InfraError, StorageError, UserInputError
from ._extract import extract_code, truncate_at_stops
from ._feed import Feed
from ._http import ApiClient, ApiError
from ._prompts import render_prompt
from ._store import Journal
from ._types import ExecRequest, Generation, Problem, Sample, SampleResult

_log = logging.getLogger("evalkit")
_STOP_GRACE_S = 10.0


def planned_samples(config: EvalConfig, benchmark: Benchmark, problems: Sequence[Problem], provider: ApiProvider) -> list[Sample]:
    """The samples of a model-API run before any completion: ``sampling.n`` per problem, each
    with its rendered prompt and an empty completion."""
    options = provider.api_options
    if options.prompt_template is not None:
        template, key = options.prompt_template, "model.prompt_template"
    elif provider.prompt_kind == "chat":
        template, key = benchmark.chat_template, f"{benchmark.name}'s chat template"
    else:
        template, key = benchmark.completion_template, f"{benchmark.name}'s completion template"
    if config.sampling.n > 1 and not options.temperature:
        _log.warning("sampling.n is %d but model.temperature is %s: the samples of a problem will be (nearly) the same", config.sampling.n, options.temperature)
    samples: list[Sample] = []
    for problem in problems:
        try:
            prompt = render_prompt(template, problem, key=key)
        except ConfigError as exc:
            raise ConfigError(f"{config.where('model', 'prompt_template')}: {exc}") from None
        samples.extend(Sample(task_id=problem.task_id, sample_idx=i, completion="", prompt=prompt) for i in range(config.sampling.n))
    return samples


def api_key(config: EvalConfig, provider: ApiProvider) -> str | None:
    """The key from the environment variable the config names; `ConfigError` if it is unset."""
    name = provider.api_options.api_key_env
    if name is None:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"{config.where('model', 'api_key_env')}: the API key is read from the environment variable {name}, which is not set (set it, or set 'model.api_key_env' to another variable, or null for a server without keys)")
    return key


def completion_stops(provider: ApiProvider, benchmark: Benchmark) -> list[str]:
    """Stop sequences sent with each request and applied to each reply."""
    stop = provider.api_options.stop
    if stop is not None:
        return list(stop)
    return list(benchmark.completion_stop) if provider.prompt_kind == "completion" else []


@dataclass
class GenerationCounts:
    """What the stage did: samples by where their completion came from, and the API's trouble."""

    from_api: int = 0
    from_cache: int = 0
    failed: int = 0
    api: dict[str, int | float] = field(default_factory=dict)


class GenerationStage:
    """Generates the completions of a model-API run into `feed`, in its own thread.

    Use as a context manager: leaving it (normally, on an error, or on Ctrl-C) cancels requests
    still in flight and waits for the thread; every completion received is already in
    ``completions.jsonl`` by then.
    """

    def __init__(
        self,
        provider: ApiProvider,
        benchmark: Benchmark,
        problems: Sequence[Problem],
        journal: Callable[[], Journal[Generation]],
        *,
        key: str | None,
        stops: list[str],
        driver: str,
        cache_dir: Path | None,
        read_cache: bool,
    ) -> None:
        self.provider = provider
        self.benchmark = benchmark
        self.problems = {p.task_id: p for p in problems}
        self.feed = Feed()
        self.counts = GenerationCounts()
        self._journal_factory = journal
        self._key = key
        self._stops = stops
        self._driver = driver
        self._cache_dir = cache_dir
        self._read_cache = read_cache
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._succeeded = False
        self._journal: Journal[Generation] | None = None
        self._cache: CompletionCache | None = None

    def start(self, samples: Sequence[Sample]) -> None:
        """Generate ``samples`` (planned ones, with prompts); the feed closes when all are done."""
        self._thread = threading.Thread(target=self._thread_main, args=(list(samples),), name="evalkit-generation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel what is in flight and wait for the thread. Idempotent."""
        if self._thread is None:
            return
        loop, task = self._loop, self._main_task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(_STOP_GRACE_S)
        if self._thread.is_alive():
            _log.warning("the generation thread did not stop within %.0f s", _STOP_GRACE_S)
        self._thread = None

    def __enter__(self) -> GenerationStage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self, samples: list[Sample]) -> None:
        error: BaseException | None = None
        try:
            asyncio.run(self._main(samples))
        except _Fatal as exc:
            error = exc.error
        except UserInputError as exc:  # e.g. an API key or header HTTP cannot carry: exit 2, as before the run
            error = exc
        except StorageError as exc:  # completions.jsonl could not be written: the run says which file and why
            error = exc
        except asyncio.CancelledError:
            error = InfraError("generation was cancelled")
        except BaseException as exc:  # a bug: surface it to the run instead of dying silently
            error = InfraError(f"the generation stage failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        finally:
            self.feed.close(error)

    async def _main(self, samples: list[Sample]) -> None:
        self._loop = asyncio.get_running_loop()
        self._main_task = asyncio.current_task()
        options = self.provider.api_options
        with self._resources():
            requests = self._from_cache(samples)
            headers = self.provider.headers(self._key)
            async with ApiClient(headers=headers, timeout_s=options.timeout_s, max_retries=options.max_retries,
                                 backoff_s=options.backoff_s, concurrency=options.concurrency) as client:
                try:
                    tasks = [asyncio.create_task(self._ask(client, prompt_samples)) for prompt_samples in requests]
                    for done in asyncio.as_completed(tasks):
                        await done
                except BaseException:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
                finally:
                    self.counts.api = client.stats.as_dict()

    @contextlib.contextmanager
    def _resources(self) -> Iterator[None]:
        self._journal = self._journal_factory()
        self._cache = CompletionCache(self._cache_dir) if self._cache_dir is not None else None
        try:
            yield
        finally:
            self._journal.close()
            if self._cache is not None:
                self._cache.close()

    def _from_cache(self, samples: list[Sample]) -> list[list[Sample]]:
        """Feed the samples the cache answers; group the rest into requests (one prompt, up to
        ``max_n_per_request`` consecutive samples each)."""
        requests: list[list[Sample]] = []
        for sample in samples:
            cached = self._cache.get(self._cache_key(sample)) if self._cache is not None and self._read_cache else None
            if cached is not None:
                self._record(sample, cached, source="cache", latency_s=0.0)
                continue
            last = requests[-1] if requests else None
            if (last is not None and last[-1].task_id == sample.task_id and last[-1].prompt == sample.prompt
                    and len(last) < self.provider.max_n_per_request):
                last.append(sample)
            else:
                requests.append([sample])
        return requests

    async def _ask(self, client: ApiClient, samples: list[Sample]) -> None:
        remaining = samples
        options = self.provider.api_options
        while remaining:
            first = remaining[0]
            request = GenerationRequest(
                task_id=first.task_id,
                prompt=first.prompt or "",
                system=options.system_prompt,
                stop=self._stops,
                n=len(remaining),
                seed=None if options.seed is None else options.seed + first.sample_idx,
            )
            try:
                reply = await client.post(self.provider.endpoint(), self.provider.body(request), self.provider.parse)
            except ApiError as exc:
                self._failed(exc, remaining)
                return
            self._succeeded = True
            completions: list[Completion] = list(reply.value)[: len(remaining)]
            if not completions:
                self._failed_samples(remaining, f"model API: POST {self.provider.endpoint()} returned no completion (an empty 'choices' list)")
                return
            for sample, completion in zip(remaining, completions):
                self._record(sample, completion, source="api", latency_s=reply.elapsed_s)
            remaining = remaining[len(completions):]  # a server that ignores n: ask again for the rest

    def _failed(self, exc: ApiError, samples: list[Sample]) -> None:
        if exc.kind in ("auth", "not_found"):
            hint = f" (check the key in ${self.provider.api_options.api_key_env})" if exc.kind == "auth" and self.provider.api_options.api_key_env else ""
            raise _Fatal(InfraError(f"the model API refused the run: {exc}{hint}"))
        if exc.kind in ("connection", "timeout") and not self._succeeded:
            raise _Fatal(InfraError(f"the model API is unreachable: {exc}"))
        self._failed_samples(samples, f"model API: {exc}", attempts=exc.attempts)

    def _failed_samples(self, samples: list[Sample], error: str, attempts: int = 1) -> None:
        for sample in samples:
            self.counts.failed += 1
            self.feed.put(SampleResult(
                task_id=sample.task_id, sample_idx=sample.sample_idx, completion="", prompt=sample.prompt,
                status="infra_error", passed=False, duration_s=0.0, driver=self._driver, error=error, attempts=attempts,
            ))

    def _record(self, sample: Sample, completion: Completion, *, source: str, latency_s: float) -> None:
        problem = self.problems[sample.task_id]
        if self.provider.prompt_kind == "chat":
            code = extract_code(completion.text, problem.entry_point)
        else:
            code = truncate_at_stops(completion.text, self._stops)
        generation = Generation(
            task_id=sample.task_id, sample_idx=sample.sample_idx, prompt=sample.prompt or "", response=completion.text,
            completion=code, finish_reason=completion.finish_reason, input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens, source="cache" if source == "cache" else "api", latency_s=latency_s,
        )
        assert self._journal is not None
        self._journal.append(generation)
        if source == "api":
            self.counts.from_api += 1
            if self._cache is not None:
                self._cache.put(self._cache_key(sample), completion)
        else:
            self.counts.from_cache += 1
        ready = generation.sample()
        self.feed.put(ExecRequest(sample=ready, program=self.benchmark.program(problem, ready.completion)))

    def _cache_key(self, sample: Sample) -> str:
        options = self.provider.api_options
        identity_request = GenerationRequest(task_id=sample.task_id, prompt=sample.prompt or "", system=options.system_prompt, stop=self._stops)
        identity: dict[str, Any] = {
            "provider": options.provider,
            "endpoint": self.provider.endpoint(),
            "body": self.provider.body(identity_request),
            "seed": options.seed,
        }
        return cache_key(identity, sample.sample_idx)


class _Fatal(Exception):
    def __init__(self, error: InfraError) -> None:
        super().__init__(str(error))
        self.error = error


def cache_folder(provider: ApiProvider) -> Path | None:
    """Where the provider's completion cache is, or None when its config turns the cache off."""
    options = provider.api_options
    if not options.cache:
        return None
    return Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir()
