"""Running samples in a sandbox and turning what happened into verdicts.

This is the part of a scheduler worker that knows nothing about Ray: it owns one sandbox,
replaces it when it breaks, and retries the sample that was running on a fresh one. A sample
that keeps breaking sandboxes ends as ``infra_error``, never as a model failure. With canaries
on (`evalkit._canary`), it also vets its sandbox and holds verdicts until the canaries vouch
for them (`SampleExecutor.run_batch`). What it did is counted in `SampleExecutor.counts`.

A sample whose verdict is ``failed``, ``timeout`` or ``oom`` runs once more
(``sandbox.recheck_failures``, on by default), in the same sandbox: each program runs in a
fresh child of the sandbox's agent anyway, and the same sandbox is what the next sample would
get (one that broke, or a microVM discarded after a timeout, is replaced as for any sample).
The re-run's verdict is the sample's; when it differs from the first, the sample is
``flaky`` and keeps the first verdict in ``first_status`` and ``first_error``. The re-run
decides because a failure that does not repeat was most likely the machine's (a timeout under
load), which must not count against the model; the price is that randomised code that fails
some of the time gets a second chance (its pass rate is inflated), which is why flaky samples
are always counted and listed. ``attempts`` counts every execution of the program: the
re-check's and infrastructure retries included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from vmpool import ExecResult, Limits, LocalSandbox, SandboxError, VmpoolError

from ._canary import CANARIES, Canaries, misbehaviour
from ._config import SandboxConfig
from ._errors import CanaryFailure
from ._infra import InfraCounts
from ._types import ExecRequest, SampleResult, Status, TimeLimits

MAX_PROGRAM_BYTES = 64 * 2**20 - 2**16
"""The largest program a sandbox takes, measured as vmpool's agent protocol carries it: a JSON
string (``\\u0001`` for a control character, six bytes) in one line of at most 64 MiB, less
room for the rest of the request. A larger program is the completion's doing (a model that
wrote megabytes), so its sample is ``failed`` without running, not an ``infra_error``."""

RECHECKED: frozenset[Status] = frozenset({"failed", "timeout", "oom"})
"""The verdicts that `SampleExecutor.run_one` re-checks with a second run."""

_STATUS: dict[str, Status] = {
    "ok": "passed",
    "timeout": "timeout",
    "oom": "oom",
    "error": "failed",
    "exited": "failed",
}


def limits_for(config: SandboxConfig) -> Limits:
    """The fixed limits of every program (``sandbox.time_limit: fixed``, and the problems a
    calibrated run has no reference time for)."""
    return Limits(
        wall_time_s=config.timeout_s,
        cpu_time_s=config.cpu_time_s,
        memory_mb=config.memory_mb,
        max_processes=config.max_processes,
        max_output_bytes=config.max_output_bytes,
    )


def with_time_limits(limits: Limits, time_limits: TimeLimits | None) -> Limits:
    """``limits`` with a problem's own time limits in place of its CPU and wall limits."""
    if time_limits is None:
        return limits
    return limits.model_copy(update={"cpu_time_s": time_limits.cpu_s, "wall_time_s": time_limits.wall_s})


def verdict(
    request: ExecRequest, result: ExecResult, driver: str, isolation: str, attempts: int, limits: Limits | None = None
) -> SampleResult:
    """The sample's verdict: passed only when the program ran to its end (its tests finished).
    ``limits``: what it ran under (recorded in the result)."""
    output_cap = limits.output_cap_bytes if limits is not None else None
    status = _STATUS[result.status]
    error = result.error
    if result.status == "exited":
        error = f"the program ended before its tests finished ({error or 'exit'})"
    if result.output_truncated and status != "passed":  # never a cause, but explains a cut-off stdout
        note = f"output truncated at {output_cap} bytes" if output_cap else "output truncated"
        error = f"{error} ({note})" if error else note
    sample = request.sample
    return SampleResult(
        task_id=sample.task_id,
        sample_idx=sample.sample_idx,
        completion=sample.completion,
        prompt=sample.prompt,
        response=sample.response,
        status=status,
        passed=status == "passed",
        duration_s=result.duration_s,
        driver=driver,
        isolation=isolation,
        error=None if status == "passed" else error,
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        output_truncated=result.output_truncated,
        cpu_time_s=result.cpu_time_s,
        max_rss_mb=result.max_rss_mb,
        attempts=attempts,
        cpu_limit_s=None if limits is None else (limits.cpu_time_s or limits.wall_time_s),
        wall_limit_s=None if limits is None else limits.wall_time_s,
    )


def infra_error(request: ExecRequest, driver: str, error: str, attempts: int) -> SampleResult:
    return _not_run(request, "infra_error", driver, error, attempts)


def _not_run(request: ExecRequest, status: Status, driver: str, error: str, attempts: int) -> SampleResult:
    sample = request.sample
    return SampleResult(
        task_id=sample.task_id,
        sample_idx=sample.sample_idx,
        completion=sample.completion,
        prompt=sample.prompt,
        response=sample.response,
        status=status,
        passed=False,
        duration_s=0.0,
        driver=driver,
        error=error,
        attempts=attempts,
    )


def _sent_size(program: str) -> int:
    """The program's length as a JSON string, or its length in characters when that cannot
    exceed `MAX_PROGRAM_BYTES` (one character is at most 12 bytes escaped: a surrogate pair)."""
    if 12 * len(program) + 2 <= MAX_PROGRAM_BYTES:
        return len(program)
    return len(json.dumps(program))


class SampleExecutor:
    """Runs requests one at a time in a sandbox it owns (created lazily, replaced when broken).

    canary_every: run the canaries (`evalkit._canary`) on every new sandbox and after every
    that many samples; 0: never, and `run_batch` returns every verdict at once. canary_hold_s:
    also check, between samples, once a held verdict has waited this long (None: no bound), so
    that slow samples reach the journal (and survive a Ctrl-C) soon after they finish.
    canaries: the program pair to run (tests pass one that this sandbox cannot satisfy).
    """

    def __init__(self, config: SandboxConfig, driver: str, max_retries: int, canary_every: int = 0,
                 canaries: Canaries = CANARIES, canary_hold_s: float | None = None) -> None:
        self.config = config
        self.driver = driver
        self.max_retries = max_retries
        self.limits = limits_for(config)
        self.canary_every = canary_every
        self.canary_hold_s = canary_hold_s
        self.canaries = canaries
        self.counts = InfraCounts()
        self._sandbox: LocalSandbox | None = None
        self._vetted: LocalSandbox | None = None  # the sandbox whose canaries last passed
        self._held: list[tuple[ExecRequest, int, SampleResult]] = []  # (request, prior attempts, verdict)
        self._vouched: list[SampleResult] = []  # vouched for, not yet returned
        self._since_check = 0
        self._held_since = 0.0  # time.monotonic() when the oldest held verdict came

    def _sandbox_ready(self) -> LocalSandbox:
        """The sandbox, started if there is none. A start that fails is a `SandboxError` whose
        message begins "sandbox failed to start: " (what infra_error causes are grouped by)."""
        if self._sandbox is not None and not self._sandbox.is_running():
            self._discard_sandbox(broken=False)  # e.g. a microVM discarded after a timeout: not a failure
        if self._sandbox is None:
            try:
                self._sandbox = LocalSandbox.create(driver=self.driver, python=self.config.python, template=self.config.template)
            except VmpoolError as exc:
                self.counts.sandbox_start_failures += 1
                first = (str(exc).strip().splitlines() or [""])[0]
                raise SandboxError(f"sandbox failed to start: {type(exc).__name__}: {first}") from exc
            self.counts.sandboxes_started += 1
        return self._sandbox

    def _discard_sandbox(self, broken: bool = True) -> None:
        if self._sandbox is not None:
            self._sandbox.kill()
            self._sandbox = None
            self.counts.sandbox_replacements += broken

    def run_one(self, request: ExecRequest, prior_attempts: int = 0) -> SampleResult:
        """The sample's verdict, re-checked once if it is failed, timeout or oom (see the module's
        docstring); ``prior_attempts``: executions an earlier worker already spent on it."""
        size = _sent_size(request.program)
        if size > MAX_PROGRAM_BYTES:
            error = f"not run: the program is {size} bytes as sent to a sandbox (JSON-escaped), more than the {MAX_PROGRAM_BYTES} it takes"
            return _not_run(request, "failed", self.driver, error, prior_attempts + 1)
        first = self._run(request, prior_attempts)
        if not self.config.recheck_failures or first.status not in RECHECKED:
            return first
        second = self._run(request, 0)  # a retry budget of its own: the first run's retries were spent
        attempts = first.attempts + second.attempts
        if second.status == "infra_error":  # the re-run says nothing: the first verdict stands
            return first.model_copy(update={"attempts": attempts})
        return second.model_copy(update={
            "attempts": attempts,
            "flaky": second.status != first.status,
            "first_status": first.status,
            "first_error": first.error,
        })

    def _run(self, request: ExecRequest, prior_attempts: int) -> SampleResult:
        """One verdict on the sample: runs until the sandbox does not break, at most
        ``max_retries`` retries in all (counting ``prior_attempts``), then ``infra_error``."""
        limits = with_time_limits(self.limits, request.time_limits)
        attempts = prior_attempts
        last_error = ""
        while attempts <= self.max_retries:
            attempts += 1
            try:
                sandbox = self._sandbox_ready()
                result = sandbox.run_program(request.program, limits)
            except VmpoolError as exc:  # a sandbox that broke or cannot start: never the sample's fault
                last_error = f"{type(exc).__name__}: {exc}"
                self._discard_sandbox()
                continue
            except Exception as exc:  # the harness cannot handle this one sample; retrying won't help
                self._discard_sandbox()
                return infra_error(request, self.driver, f"{type(exc).__name__}: {exc}", attempts)
            return verdict(request, result, sandbox.driver, sandbox.isolation, attempts, limits)
        return infra_error(request, self.driver, f"sandbox failed {attempts} time(s); last: {last_error}", attempts)

    def run_batch(self, requests: Sequence[ExecRequest], prior_attempts: int = 0) -> list[SampleResult]:
        """Run ``requests`` and return the verdicts that are final: all of them without canaries.
        With canaries, the verdicts since the last good check are held (`flush` returns them
        once the canaries vouched for them) and come back with a later call; infra_error
        results are never held (no sandbox gave them).

        If a check fails, the sandbox is discarded and the held samples run again on a fresh,
        vetted one, without spending their retry budget: they did nothing wrong, and the
        verdicts thrown away were never seen. Raises `CanaryFailure` (dropping what it held)
        when the fresh sandbox misbehaves too: then the worker, not one sandbox, is suspect.
        """
        for request in requests:
            # before the next sample on a sandbox not yet vetted, or after every canary_every
            # samples: so nothing is released unvouched, and no start is spent on canaries alone
            if self.canary_every and self._held and (
                self._vetted is not self._sandbox_if_running() or self._since_check >= self.canary_every or self._overdue()
            ):
                self._check()
            result = self.run_one(request, prior_attempts)
            self.counts.sample_retries += max(0, result.attempts - prior_attempts - 1)
            if result.status == "infra_error":
                self._vouched.append(result)  # no sandbox's verdict: nothing to vouch for
                continue
            if not self._held:
                self._held_since = time.monotonic()
            self._held.append((request, prior_attempts, result))
            self._since_check += 1
        if not self.canary_every:
            self._confirm(self._held)
        elif self._held and self._overdue():
            self._check()
        return self._release()

    def flush(self) -> list[SampleResult]:
        """Check the sandbox now if verdicts are held, and return them all (`CanaryFailure` as
        for `run_batch`)."""
        if self._held:
            self._check()
        return self._release()

    @property
    def holding(self) -> int:
        """How many verdicts wait for the canaries."""
        return len(self._held)

    def _overdue(self) -> bool:
        """Whether the oldest held verdict has waited ``canary_hold_s`` or longer."""
        return self.canary_hold_s is not None and time.monotonic() - self._held_since >= self.canary_hold_s

    def _sandbox_if_running(self) -> LocalSandbox | None:
        return self._sandbox if self._sandbox is not None and self._sandbox.is_running() else None

    def _release(self) -> list[SampleResult]:
        released, self._vouched = self._vouched, []
        return released

    def _vet(self) -> str | None:
        """Run the canaries in the sandbox (started if needed): None if they behaved, else what
        went wrong (a sandbox that cannot start cannot vouch for anything either)."""
        try:
            sandbox = self._sandbox_ready()
        except VmpoolError as exc:
            return str(exc)
        self.counts.canary_checks += 1
        problem = misbehaviour(sandbox, self.limits, self.canaries)
        if problem is None:
            self._vetted = sandbox
        else:
            self.counts.canary_failures += 1
            self._discard_sandbox()
        return problem

    def _check(self) -> None:
        """Vouch for the held verdicts, or run them again on a fresh sandbox vetted before and
        after them; `CanaryFailure` if that one misbehaves too."""
        problem = self._vet()
        if problem is None:
            self._confirm(self._held)
            return
        again = self._vet()
        if again is None:
            rerun = [(request, prior, self.run_one(request, prior)) for request, prior, _ in self._held]
            self.counts.samples_rerun_after_canary += len(rerun)
            self._vouched.extend(result for _, _, result in rerun if result.status == "infra_error")
            again = self._vet()
            if again is None:
                self._confirm([entry for entry in rerun if entry[2].status != "infra_error"])
                return
        self._held = []
        self._since_check = 0
        raise CanaryFailure(f"canaries misbehaved in two sandboxes in a row: {problem}; then: {again}")

    def _confirm(self, vouched: list[tuple[ExecRequest, int, SampleResult]]) -> None:
        self._vouched.extend(result for _, _, result in vouched)
        self._held = []
        self._since_check = 0

    def close(self) -> None:
        self._discard_sandbox(broken=False)
