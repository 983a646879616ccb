"""What the infrastructure did during a run: counters of its faults and recoveries, and the
causes of the samples that ended ``infra_error``.

Workers count what their sandboxes did (`InfraCounts`) and send it with each batch's results;
the scheduler adds its own (workers that failed and were replaced) and the runner keeps the
running totals in run.json, across resumes. `infrastructure_summary` turns them, with the
results, into summary.json's ``infrastructure`` section.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ._types import SampleResult

__all__ = ["InfraCounts", "infra_cause", "infra_faults", "infrastructure_summary"]

CAUSE_CHARS = 160
START_FAILED = "sandbox failed to start: "


@dataclass
class InfraCounts:
    """Running counts of what the machinery did; all start at zero."""

    sandboxes_started: int = 0
    sandbox_start_failures: int = 0
    sandbox_replacements: int = 0  # discarded because it broke or its canaries misbehaved
    sample_retries: int = 0  # a sample run again after its sandbox broke
    canary_checks: int = 0
    canary_failures: int = 0
    samples_rerun_after_canary: int = 0  # held verdicts dropped and run again on a fresh sandbox
    worker_failures: int = 0  # a batch whose worker died or raised
    worker_replacements: int = 0
    batches_retried: int = 0  # resubmitted, spending the batch's retry budget
    batches_requeued: int = 0  # resubmitted without spending it (queued behind a failure, actor unavailable)

    def add(self, other: InfraCounts | Mapping[str, Any]) -> None:
        values = asdict(other) if isinstance(other, InfraCounts) else other
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + int(values.get(field.name, 0) or 0))

    def take(self) -> InfraCounts:
        """A copy of the counts, which start again from zero here."""
        taken = InfraCounts(**asdict(self))
        for field in fields(self):
            setattr(self, field.name, 0)
        return taken

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_RETRIED = re.compile(r"^(sandbox|worker) failed \d+ time\(s\); last: ")
_IDS = re.compile(r"\b(bwrap|microvm)-[0-9a-f]{12}\b")
_HEX = re.compile(r"\b(0x)?[0-9a-f]{8,}\b")
_PIDS = re.compile(r"\b(pid|PID|process) \d+")


def infra_cause(error: str | None) -> str:
    """The cause of an infra_error, normalised so that samples that failed alike group: its
    first line, without the retry count and without ids, pids and hashes."""
    lines = (error or "").strip().splitlines()
    cause = _RETRIED.sub("", lines[0] if lines else "unknown")
    start = cause.find(START_FAILED)
    cause = cause[start:] if start > 0 else cause  # not the exception type vmpool wrapped it in
    cause = _IDS.sub(r"\1-…", cause)
    cause = _PIDS.sub(r"\1 …", _HEX.sub("…", cause))
    return cause if len(cause) <= CAUSE_CHARS else cause[: CAUSE_CHARS - 1] + "…"


def infrastructure_summary(counts: Mapping[str, Any] | None, results: Iterable[SampleResult]) -> dict[str, Any]:
    """summary.json's ``infrastructure``: the counters (zeros included) and the infra_error
    samples grouped by cause, most frequent first."""
    totals = InfraCounts()
    totals.add(counts or {})
    causes = Counter(infra_cause(r.error) for r in results if r.status == "infra_error")
    section: dict[str, Any] = totals.as_dict()
    section["infra_error_causes"] = [{"cause": cause, "count": count} for cause, count in causes.most_common()]
    return section


_FAULTS = (
    ("sandbox_start_failures", "sandbox start failure(s)"),
    ("sandbox_replacements", "sandbox(es) replaced"),
    ("sample_retries", "sample retries"),
    ("canary_failures", "failed canary check(s)"),
    ("samples_rerun_after_canary", "sample(s) re-run after one"),
    ("worker_failures", "worker failure(s)"),
    ("worker_replacements", "worker(s) replaced"),
    ("batches_retried", "batch retries"),
    ("batches_requeued", "batch(es) requeued without cost"),
)


def infra_faults(infra: Mapping[str, Any]) -> list[str]:
    """The non-zero fault counters of an ``infrastructure`` section, as "N what" phrases."""
    return [f"{infra[key]} {label}" for key, label in _FAULTS if infra.get(key)]
