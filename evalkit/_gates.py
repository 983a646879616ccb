"""Gates: the conditions a run must meet for a CI job to pass (the ``gates`` key of a config).

    gates:
      "pass@1": ">= 0.60"              # any pass@k the config reports (k in sampling.k)
      infra_error_rate: "<= 0.01"       # planned samples without a verdict, over planned samples
      timeout_rate: "<= 0.05"           # timeout (failed_rate, oom_rate: failed, oom) over samples with a verdict
      pass@1_delta: ">= -0.02"          # pass@1 minus the baseline's, over the problems both scored
      no_significant_regression: true   # fails when the paired test finds a significant drop (alpha 0.05)

A condition is one of ``>=``, ``>``, ``<=``, ``<``, ``==`` and a number, compared with a
tolerance of 1e-9 (so ``== 1.0`` holds for a pass@1 that rounding left at 0.9999999999).
Gates are parsed when the config loads; a metric that cannot be computed when the run ends
(a pass@k that was skipped, a baseline with no problem in common) fails its gate, with a note.

``infra_error_rate`` is also the run's tolerance for infrastructure failures: see
`evalkit._results.exit_code`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._compare import Comparison

RATES = {"infra_error_rate": "infra_error", "timeout_rate": "timeout", "failed_rate": "failed", "oom_rate": "oom"}
BASELINE_METRICS = ("pass@1_delta", "no_significant_regression")
INFRA_GATE = "infra_error_rate"

_OPERATORS = (">=", "<=", "==", ">", "<")
_CONDITION = re.compile(r"\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*")
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Gate:
    """One parsed gate: ``metric`` compared with ``threshold`` by ``operator``; a boolean gate
    (``no_significant_regression``) has operator ``"is"`` and threshold 1.0 (true)."""

    metric: str
    operator: str
    threshold: float
    condition: str  # as the user wrote it, normalised: ">= 0.60", or "true"

    def holds(self, value: float | bool) -> bool:
        if self.operator == "is":
            return bool(value)
        v, t = float(value), self.threshold
        close = math.isclose(v, t, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE)
        return {
            ">=": v > t or close,
            ">": v > t and not close,
            "<=": v < t or close,
            "<": v < t and not close,
            "==": close,
        }[self.operator]

    @property
    def needs_baseline(self) -> bool:
        return self.metric in BASELINE_METRICS


def known_metrics(ks: Sequence[int]) -> list[str]:
    return [*(f"pass@{k}" for k in ks), *RATES, *BASELINE_METRICS]


def parse_gate(metric: str, condition: object, ks: Sequence[int]) -> Gate:
    """Parse one ``metric: condition`` entry; ValueError with a sentence saying what is wrong."""
    if metric == "no_significant_regression":
        if condition is not True:
            raise ValueError(f"'gates.no_significant_regression' takes true (remove the key to turn the gate off), got {condition!r}")
        return Gate(metric, "is", 1.0, "true")
    if metric not in known_metrics(ks):
        pass_k = re.fullmatch(r"pass@([1-9]\d*)", metric)
        if pass_k:
            raise ValueError(f"gate 'gates.{metric}' needs {pass_k.group(1)} in sampling.k (now {list(ks)}): only those pass@k are reported")
        raise ValueError(f"unknown gate 'gates.{metric}' (known metrics: {', '.join(known_metrics(ks))})")
    if not isinstance(condition, str):
        raise ValueError(f"gate 'gates.{metric}' needs a condition in quotes, such as \">= 0.6\", got {condition!r}")
    match = _CONDITION.fullmatch(condition)
    if match is None:
        raise ValueError(f"gate 'gates.{metric}' has condition {condition!r}; write an operator ({', '.join(_OPERATORS)}) and a number, such as \">= 0.6\"")
    operator, number = match.groups()
    threshold = float(number)
    low = -1.0 if metric == "pass@1_delta" else 0.0
    if not low <= threshold <= 1.0:
        raise ValueError(f"gate 'gates.{metric}' compares a fraction between {low:g} and 1 with {number} (write 60% as 0.6)")
    return Gate(metric, operator, threshold, f"{operator} {number}")


def parse_gates(gates: Mapping[str, object], ks: Sequence[int]) -> list[Gate]:
    """Every gate of a config's ``gates`` mapping, in order (ValueError as `parse_gate`)."""
    return [parse_gate(metric, condition, ks) for metric, condition in gates.items()]


def metric_value(metric: str, summary: Mapping[str, Any], comparison: Comparison | None, why_no_comparison: str | None) -> tuple[float | bool | None, str | None]:
    """The value of ``metric`` for a run's summary (and its comparison with the baseline), or
    ``(None, why)`` when it cannot be computed."""
    if metric.startswith("pass@") and not metric.endswith("_delta"):
        value = summary["metrics"].get(metric)
        return (value, None) if value is not None else (None, f"{metric} not reported: {summary['skipped_k'].get(metric, 'no scored problem')}")
    counts = summary["counts"]
    if metric == INFRA_GATE:
        planned = summary["run"]["planned_samples"]
        without_verdict = planned - (summary["num_samples"] - counts["infra_error"])
        return (without_verdict / planned, None) if planned else (None, "the run planned no sample")
    if metric in RATES:
        with_verdict = summary["num_samples"] - counts["infra_error"]
        return (counts[RATES[metric]] / with_verdict, None) if with_verdict else (None, "no sample has a verdict")
    if comparison is None:
        return None, why_no_comparison or "no baseline run to compare with"
    if metric == "pass@1_delta":
        return comparison.delta, None
    return not comparison.significant_regression, None


def evaluate_gates(
    gates: Sequence[Gate], summary: Mapping[str, Any], comparison: Comparison | None = None, why_no_comparison: str | None = None
) -> list[dict[str, Any]]:
    """summary.json's ``gates``: ``{metric, condition, value, passed, note}`` per gate, in order.
    ``value`` is None (and ``passed`` false) when the metric cannot be computed; ``note`` says why."""
    judged = []
    for gate in gates:
        value, note = metric_value(gate.metric, summary, comparison, why_no_comparison)
        passed = value is not None and gate.holds(value)
        if gate.metric == "no_significant_regression" and comparison is not None and not passed:
            note = f"pass@1 {comparison.delta:+.4f}, p = {comparison.p_value:.4g} < {comparison.alpha:g}"
        judged.append({"metric": gate.metric, "condition": gate.condition, "value": value, "passed": passed, "note": note})
    return judged


def gate_name(gate: Mapping[str, Any]) -> str:
    """A gate of summary.json as the config wrote it: ``pass@1 >= 0.60``, ``no_significant_regression``."""
    return gate["metric"] if gate["condition"] == "true" else f"{gate['metric']} {gate['condition']}"


def describe(gate: Mapping[str, Any]) -> str:
    """One gate of summary.json in words: ``pass@1 = 0.5512, needs >= 0.60``."""
    value = gate["value"]
    if gate["metric"] == "no_significant_regression":
        shown = "no significant regression" if value else "significant regression"
        return shown + (f" ({gate['note']})" if gate["note"] and not gate["passed"] else "")
    if value is None:
        return f"{gate['metric']}: {gate['note']}"
    shown = f"{value:+.4f}" if gate["metric"] == "pass@1_delta" else f"{value:.4f}"
    return f"{gate['metric']} = {shown}, needs {gate['condition']}"
