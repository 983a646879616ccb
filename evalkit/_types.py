"""The typed records that flow between evalkit's stages (DESIGN.md, "data flow")."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["passed", "failed", "timeout", "oom", "infra_error"]
"""Verdict of one sample. ``infra_error`` means the harness or sandbox failed: it is retried,
never counted as a model failure, and always reported."""

STATUSES: tuple[Status, ...] = ("passed", "failed", "timeout", "oom", "infra_error")


class Problem(BaseModel):
    """One benchmark problem, in HumanEval's terms."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str | None = None
    language: str = "python"
    metadata: dict[str, Any] = Field(default_factory=dict)


class Sample(BaseModel):
    """One completion to evaluate: the ``sample_idx``-th completion for ``task_id``."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    sample_idx: int = Field(ge=0)
    completion: str
    prompt: str | None = Field(None, description="the rendered prompt the model was given (model APIs only)")
    response: str | None = Field(None, description="the model's raw reply, before code extraction (model APIs only)")

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.sample_idx)


class Generation(BaseModel):
    """One completion a model API produced for a sample: a line of the run folder's ``completions.jsonl``."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    sample_idx: int = Field(ge=0)
    prompt: str
    response: str = Field(description="the raw reply text")
    completion: str = Field(description="the code evaluated: extracted from a chat reply, or the text cut at the stop sequences")
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    source: Literal["api", "cache"] = Field("api", description="asked of the API by this run, or reused from the completion cache")
    latency_s: float = Field(0.0, description="wall time of the request that produced it, retries included")

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.sample_idx)

    def sample(self) -> Sample:
        return Sample(task_id=self.task_id, sample_idx=self.sample_idx, completion=self.completion, prompt=self.prompt, response=self.response)


class TimeLimits(BaseModel):
    """A problem's own time limits (``sandbox.time_limit: calibrated``, `evalkit._calibrate`),
    in place of the sandbox config's ``cpu_time_s`` and ``timeout_s``."""

    model_config = ConfigDict(frozen=True)

    cpu_s: float = Field(gt=0, allow_inf_nan=False, description="CPU-time limit of the program")
    wall_s: float = Field(gt=0, allow_inf_nan=False, description="wall-clock limit of the program")


class ExecRequest(BaseModel):
    """A sample with the program the benchmark assembled for it, ready for a sandbox."""

    model_config = ConfigDict(frozen=True)

    sample: Sample
    program: str
    time_limits: TimeLimits | None = Field(None, description="this problem's own time limits; None: the sandbox config's")


class SampleResult(BaseModel):
    """The verdict on one sample: one line of the journal, one row of ``samples.parquet``."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    sample_idx: int
    completion: str
    prompt: str | None = Field(None, description="the rendered prompt the model was given (model APIs only)")
    response: str | None = Field(None, description="the model's raw reply, before code extraction (model APIs only)")
    status: Status
    passed: bool
    duration_s: float = Field(description="wall time of the program in the sandbox")
    driver: str = Field(description="sandbox driver that ran the program, e.g. 'bwrap'")
    isolation: str = Field("", description="isolation level the driver reported")
    error: str | None = Field(None, description="why it did not pass, or the infrastructure failure")
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = Field(False, description="stdout/stderr beyond the output cap were dropped")
    cpu_time_s: float = 0.0
    max_rss_mb: float = 0.0
    attempts: int = Field(1, description="executions of the program: infrastructure retries and the re-check of a failure included")
    cpu_limit_s: float | None = Field(None, description="the CPU-time limit it ran under (None: not run, or a run from before evalkit recorded it)")
    wall_limit_s: float | None = Field(None, description="the wall-clock limit it ran under")
    flaky: bool = Field(False, description="re-run after a failed, timeout or oom verdict, and the re-run's verdict differed; `status` is the re-run's")
    first_status: Status | None = Field(None, description="the first run's verdict when the sample was re-run (sandbox.recheck_failures), else None")
    first_error: str | None = Field(None, description="the first run's error when the sample was re-run")

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.sample_idx)


def task_order(task_id: str) -> tuple[str, int, str]:
    """Sort key for task ids: HumanEval/2 before HumanEval/10; other ids by name."""
    prefix, _, number = task_id.rpartition("/")
    numbered = (prefix, int(number)) if prefix and number.isdecimal() else (task_id, -1)
    return (*numbered, task_id)  # the id itself breaks ties, so "t/a" and "t/b" never interleave
