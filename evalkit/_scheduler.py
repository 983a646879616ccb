"""Fanning samples out to sandboxes with Ray (the only module that imports Ray).

Each worker is a Ray actor that owns one sandbox (`SampleExecutor`). The driver cuts the
requests into batches as they arrive from a `Feed`, keeps at most ``max_in_flight`` batches
submitted, gives each to the least-busy worker, and yields results in completion order.

Faults: a worker that fails (its process died, its node went away, or its canaries misbehaved
in two fresh sandboxes: `CanaryFailure`) is killed and a new one takes its slot. The batch it
was running is resubmitted, spending one of the batch's ``max_retries``; beyond them its
samples become ``infra_error``. The batches queued behind it, and the verdicts it held for its
canaries, are lost with it through no fault of theirs: they are resubmitted without spending
anything. So is a batch sent to an actor Ray reports unavailable (``ActorUnavailableError``:
restarting or unreachable; Ray's docs say the task may not have run at all), up to
`FREE_REQUEUES` times, so that a worker in a crash loop still ends its samples as infra_error.
What happened is counted in `RayScheduler.counts` (`evalkit._infra`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._config import SandboxConfig, SchedulerConfig
from ._errors import CanaryFailure, InfraError
from ._executor import SampleExecutor, infra_error
from ._feed import Feed
from ._infra import InfraCounts
from ._types import ExecRequest, SampleResult, TimeLimits

_log = logging.getLogger("evalkit")
CLOSE_GRACE_S = 5.0  # how long workers get to close their sandboxes before they are killed
FREE_REQUEUES = 5  # resubmissions of one batch that spend nothing (see the module docstring)

_Returned = tuple[list[SampleResult], dict[str, int]]


class _Worker:
    """The Ray actor body: one sandbox, batches run one after another. The sandbox is started
    with die-with-parent, so killing the actor (`RayScheduler.close`) also ends the sandbox.
    Each call returns the verdicts that are final (the canaries may hold some back for a later
    call: `SampleExecutor.run_batch`) and what the sandboxes did meanwhile."""

    def __init__(self, sandbox: SandboxConfig, driver: str, max_retries: int, canary_every: int, canary_hold_s: float) -> None:
        self.executor = SampleExecutor(sandbox, driver, max_retries, canary_every, canary_hold_s=canary_hold_s)

    def run(self, batch: list[ExecRequest], prior_attempts: int) -> _Returned:
        try:
            return self.executor.run_batch(batch, prior_attempts), self.executor.counts.take().as_dict()
        except BaseException as exc:
            self._failed(exc)
            raise

    def flush(self) -> _Returned:
        try:
            return self.executor.flush(), self.executor.counts.take().as_dict()
        except BaseException as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: BaseException) -> None:
        """The scheduler replaces this worker: leave no sandbox behind, and let the counts so
        far travel with the exception (`CanaryFailure.counts`)."""
        self.executor.close()
        if isinstance(exc, CanaryFailure):
            exc.counts = self.executor.counts.take().as_dict()

    def close(self) -> None:
        """Kill the sandbox tidily (a VM's run folder goes with it) before the actor is killed."""
        self.executor.close()


@dataclass(eq=False)  # tasks are compared by identity
class _Task:
    """A call submitted to the worker in ``slot``; ``batch`` is empty for a flush."""

    slot: int
    batch: list[ExecRequest]
    attempts: int
    requeues: int
    order: int
    flush: bool = False


@dataclass
class _Slot:
    """A place for a worker; ``held``: the requests whose verdicts it holds for its canaries."""

    actor: Any
    load: int = 0
    held: dict[tuple[str, int], _Task] = field(default_factory=dict)  # key -> the task it came in


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


def _note_held(slot: _Slot, task: _Task, results: list[SampleResult]) -> None:
    """After ``task`` came back with ``results``: what its worker holds now."""
    returned = {result.key for result in results}
    for key in returned:
        slot.held.pop(key, None)
    slot.held.update((r.sample.key, task) for r in task.batch if r.sample.key not in returned)


class RayScheduler:
    """Runs `ExecRequest`s on a local Ray instance or a cluster; a context manager.

    Raises `InfraError` when Ray cannot be started or joined. ``counts``: what the workers and
    their sandboxes did so far (the counts of a worker that died since its last reply are lost).
    """

    def __init__(self, scheduler: SchedulerConfig, sandbox: SandboxConfig, driver: str) -> None:
        _quiet_ray_env()
        import ray as ray_module

        ray: Any = ray_module  # Ray's own annotations are partial; keep them out of our types
        self._ray = ray
        self.config = scheduler
        self.driver = driver
        self._workers: list[Any] = []
        self.counts = InfraCounts()
        self._owns_ray = not ray.is_initialized()
        try:
            if self._owns_ray:
                self._start_ray(scheduler.address)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.num_workers = scheduler.workers or max(1, cpus)
            self.max_in_flight = scheduler.max_in_flight or 2 * self.num_workers
            # no restarts by Ray: a failed worker is replaced by a new actor (`_replace`), and calls
            # sent to a restarting one would only fail with ActorUnavailableError
            self._actor = ray.remote(_Worker).options(num_cpus=min(1, cpus / self.num_workers), max_restarts=0, max_task_retries=0)
            self._worker_args = (sandbox, driver, scheduler.max_retries, scheduler.canary_every, scheduler.canary_hold_s)
            self._workers = [self._actor.remote(*self._worker_args) for _ in range(self.num_workers)]
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
        (calibrated limits, `evalkit._calibrate`); other requests keep their own. A worker left
        idle with verdicts held for its canaries is asked for them (`_Worker.flush`).
        """
        feed = requests if isinstance(requests, Feed) else Feed.of(requests)
        size = self.config.batch_size
        waiting: deque[ExecRequest] = deque()
        retries: deque[_Task] = deque()
        pending: dict[Any, _Task] = {}
        slots = [_Slot(actor) for actor in self._workers]
        order = 0
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
                    task = retries.popleft()
                else:
                    task = _Task(-1, [waiting.popleft() for _ in range(min(size, len(waiting)))], 0, 0, 0)
                task.slot = min(range(len(slots)), key=lambda i: slots[i].load)
                task.order, order = order, order + 1
                pending[slots[task.slot].actor.run.remote(task.batch, task.attempts)] = task
                slots[task.slot].load += 1
            if not (retries or waiting):
                for index, slot in enumerate(slots):
                    if slot.held and not slot.load:
                        pending[slot.actor.flush.remote()] = _Task(index, [], 0, 0, order, flush=True)
                        order += 1
                        slot.load += 1
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
                if ref not in pending:  # dropped with its failed worker meanwhile
                    continue
                task = pending.pop(ref)
                slot = slots[task.slot]
                slot.load -= 1
                try:
                    results, counts = self._ray.get(ref)
                except (self._ray.exceptions.RayError, OSError) as exc:
                    yield from self._worker_failed(task, exc, slots, pending, retries)
                    continue
                self.counts.add(counts)
                _note_held(slot, task, results)
                yield from results

    def _worker_failed(
        self, task: _Task, exc: BaseException, slots: list[_Slot], pending: dict[Any, _Task], retries: deque[_Task]
    ) -> Iterator[SampleResult]:
        """Replace the worker of ``task``, resubmit what it lost, and fail what is beyond budget."""
        self.counts.worker_failures += 1
        self.counts.add(getattr(getattr(exc, "cause", None), "counts", None) or {})
        slot = slots[task.slot]
        lost = [task] + [pending.pop(ref) for ref in [ref for ref, t in pending.items() if t.slot == task.slot]]
        culprit = min(lost, key=lambda t: t.order)  # a worker runs its calls in the order they were sent
        unavailable = getattr(self._ray.exceptions, "ActorUnavailableError", ())
        # the verdicts it held come back as tasks of their own; if a flush (the canaries that
        # were to vouch for them) was what failed, they were its batch
        held: dict[int, _Task] = {}
        for key, source in slot.held.items():
            request = next(r for r in source.batch if r.sample.key == key)
            held.setdefault(id(source), _Task(-1, [], source.attempts, source.requeues, 0)).batch.append(request)
        for lost_task in lost + list(held.values()):
            if lost_task.flush:
                continue
            was_held = lost_task not in lost
            free = lost_task is not culprit and not (culprit.flush and was_held)
            if isinstance(exc, unavailable) or free:
                free = lost_task.requeues < FREE_REQUEUES  # bounded: a crash loop still ends
            if free:
                self._requeue(retries, lost_task.batch, lost_task.attempts, lost_task.requeues + 1)
            else:
                yield from self._retry_or_fail(retries, lost_task, exc)
        slots[task.slot] = _Slot(self._replace(task.slot))

    def _requeue(self, retries: deque[_Task], batch: list[ExecRequest], attempts: int, requeues: int) -> None:
        self.counts.batches_requeued += 1
        retries.append(_Task(-1, batch, attempts, requeues, 0))

    def _replace(self, index: int) -> Any:
        """Kill the worker in slot ``index`` and start a new one there."""
        try:
            self._ray.kill(self._workers[index], no_restart=True)
        except Exception:  # already dead
            pass
        self._workers[index] = self._actor.remote(*self._worker_args)
        self.counts.worker_replacements += 1
        return self._workers[index]

    def _retry_or_fail(self, queue: deque[_Task], task: _Task, exc: BaseException) -> Iterator[SampleResult]:
        attempts = task.attempts + 1
        cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the worker's own exception
        text = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {text[0] if text else ''}"
        if attempts <= self.config.max_retries:
            _log.warning("a worker failed (%s); retrying %d sample(s)", reason, len(task.batch))
            self.counts.batches_retried += 1
            queue.append(_Task(-1, task.batch, attempts, task.requeues, 0))
            return
        for request in task.batch:
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
