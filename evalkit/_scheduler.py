"""Fanning samples out to sandboxes with Ray (the only module that imports Ray).

Each worker is a Ray actor that owns one sandbox (`SampleExecutor`). The driver cuts the
requests into batches as they arrive from a `Feed`, keeps at most ``max_in_flight`` batches
submitted, gives each to the least-busy worker, and yields results in completion order. A batch whose worker dies (the
actor process crashed, the node went away) is resubmitted, up to ``max_retries`` times, then
its samples become ``infra_error``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ._config import SandboxConfig, SchedulerConfig
from ._errors import InfraError
from ._executor import SampleExecutor, infra_error
from ._feed import Feed
from ._types import ExecRequest, SampleResult, TimeLimits

_log = logging.getLogger("evalkit")
CLOSE_GRACE_S = 5.0  # how long workers get to close their sandboxes before they are killed


class _Worker:
    """The Ray actor body: one sandbox, batches run one after another. The sandbox is started
    with die-with-parent, so killing the actor (`RayScheduler.close`) also ends the sandbox."""

    def __init__(self, sandbox: SandboxConfig, driver: str, max_retries: int) -> None:
        self.executor = SampleExecutor(sandbox, driver, max_retries)

    def run(self, batch: list[ExecRequest], prior_attempts: int) -> list[SampleResult]:
        return self.executor.run_batch(batch, prior_attempts)

    def close(self) -> None:
        """Kill the sandbox tidily (a VM's run folder goes with it) before the actor is killed."""
        self.executor.close()


def _quiet_ray_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while Ray starts, then act on them.

    Interrupted half-way, ray.init leaves orphaned Ray processes and can crash the interpreter;
    afterwards, `RayScheduler.close` can shut down what it started. Our own handlers (the CLI
    turns SIGTERM into an interrupt) are restored too: ray.init replaces the SIGTERM handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


class RayScheduler:
    """Runs `ExecRequest`s on a local Ray instance or a cluster; a context manager.

    Raises `InfraError` when Ray cannot be started or joined.
    """

    def __init__(self, scheduler: SchedulerConfig, sandbox: SandboxConfig, driver: str) -> None:
        _quiet_ray_env()
        import ray as ray_module

        ray: Any = ray_module  # Ray's own annotations are partial; keep them out of our types
        self._ray = ray
        self.config = scheduler
        self.driver = driver
        self._workers: list[Any] = []
        self._owns_ray = not ray.is_initialized()
        try:
            if self._owns_ray:
                self._start_ray(scheduler.address)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.num_workers = scheduler.workers or max(1, cpus)
            self.max_in_flight = scheduler.max_in_flight or 2 * self.num_workers
            actor = ray.remote(_Worker).options(num_cpus=min(1, cpus / self.num_workers), max_restarts=-1, max_task_retries=0)
            self._workers = [actor.remote(sandbox, driver, scheduler.max_retries) for _ in range(self.num_workers)]
        except BaseException:  # Ctrl-C during start-up too: never leave a half-started Ray behind
            self.close()
            raise

    def _start_ray(self, address: str | None) -> None:
        local = {"object_store_memory": 512 * 2**20} if address is None else {}  # results are small
        with _signals_deferred():
            try:
                self._ray.init(
                    address=address,
                    **local,
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    configure_logging=True,
                )
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
                hint = " (ray:// addresses need Ray's client: pip install 'ray[client]')" if (address or "").startswith("ray://") else ""
                raise InfraError(f"cannot start or join Ray ({address or 'a local instance'}): {exc}{hint}") from exc

    def run(self, requests: Feed | Sequence[ExecRequest], time_limits: Mapping[str, TimeLimits] | None = None) -> Iterator[SampleResult]:
        """Yield one result per request, in the order they finish.

        ``requests`` may be a `Feed` that a producer is still filling: requests are batched as
        they arrive (a partial batch goes out whenever a worker is free), verdicts already in
        the feed are passed through, and a producer's error is raised once everything taken
        before it has finished. ``time_limits``: per task_id, the limits its requests run under
        (calibrated limits, `evalkit._calibrate`); other requests keep their own.
        """
        feed = requests if isinstance(requests, Feed) else Feed.of(requests)
        size = self.config.batch_size
        waiting: deque[ExecRequest] = deque()
        retries: deque[tuple[list[ExecRequest], int]] = deque()
        pending: dict[Any, tuple[int, list[ExecRequest], int]] = {}
        load = [0] * len(self._workers)
        failure: BaseException | None = None
        while True:
            if failure is None and not feed.exhausted and len(waiting) < size * self.max_in_flight:
                idle = not (pending or retries or waiting)
                try:
                    taken = feed.take(size * self.max_in_flight, timeout=1.0 if idle else 0.0)
                except Exception as exc:  # the producer failed: finish what was taken, then raise
                    failure, taken = exc, []
                for item in taken:
                    if isinstance(item, SampleResult):
                        yield item
                    elif time_limits and item.sample.task_id in time_limits:
                        waiting.append(item.model_copy(update={"time_limits": time_limits[item.sample.task_id]}))
                    else:
                        waiting.append(item)
            while (retries or waiting) and len(pending) < self.max_in_flight:
                if retries:
                    batch, attempts = retries.popleft()
                else:
                    batch, attempts = [waiting.popleft() for _ in range(min(size, len(waiting)))], 0
                worker = min(range(len(load)), key=load.__getitem__)
                pending[self._workers[worker].run.remote(batch, attempts)] = (worker, batch, attempts)
                load[worker] += 1
            if not pending:
                if failure is not None:
                    raise failure
                if feed.exhausted and not waiting and not retries:
                    return
                continue
            more_coming = failure is None and not feed.exhausted
            try:
                ready, _ = self._ray.wait(list(pending), num_returns=1, timeout=0.05 if more_coming else None)
            except self._ray.exceptions.RaySystemError as exc:
                raise InfraError(f"Ray stopped working mid-run: {exc}") from exc
            for ref in ready:
                worker, batch, attempts = pending.pop(ref)
                load[worker] -= 1
                try:
                    results: list[SampleResult] = self._ray.get(ref)
                except (self._ray.exceptions.RayError, OSError) as exc:
                    yield from self._retry_or_fail(retries, batch, attempts + 1, exc)
                    continue
                yield from results

    def _retry_or_fail(
        self, queue: deque[tuple[list[ExecRequest], int]], batch: list[ExecRequest], attempts: int, exc: BaseException
    ) -> Iterator[SampleResult]:
        cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the worker's own exception
        text = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {text[0] if text else ''}"
        if attempts <= self.config.max_retries:
            _log.warning("a worker failed (%s); retrying %d sample(s)", reason, len(batch))
            queue.append((batch, attempts))
            return
        for request in batch:
            yield infra_error(request, self.driver, f"worker failed {attempts} time(s); last: {reason}", attempts)

    def close(self) -> None:
        """Stop the workers (their sandboxes die with them) and Ray, if this scheduler started it.
        Workers first get a few seconds to close their sandboxes themselves."""
        try:
            closing = [worker.close.remote() for worker in self._workers]
            self._ray.wait(closing, num_returns=len(closing), timeout=CLOSE_GRACE_S)
        except Exception:  # a dead worker or Ray going down: killing below is enough
            pass
        for worker in self._workers:
            try:
                self._ray.kill(worker)
            except Exception:  # already dead: nothing to stop
                pass
        self._workers = []
        if self._owns_ray:  # even if ray.init was interrupted half-way: shutdown stops what it started
            self._ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
