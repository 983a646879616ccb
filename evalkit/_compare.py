"""Comparing two runs problem by problem: what flipped each way, and whether the difference is
more than noise (a paired test over the problems both runs scored).

(Contract first; the functions that fill it come with the comparison work of issue 6.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProblemChange:
    """One problem whose pass rate differs between the runs (rates are c/n, infra_error excluded)."""

    task_id: str
    rate_a: float
    rate_b: float
    n_a: int
    n_b: int


@dataclass(frozen=True)
class Comparison:
    """Run B compared with run A (the baseline), over the problems both runs scored."""

    a: str = field(metadata={"doc": "label of run A (the baseline): run name and folder"})
    b: str = field(metadata={"doc": "label of run B"})
    problems: int = field(metadata={"doc": "problems both runs scored"})
    only_a: list[str] = field(metadata={"doc": "problems scored in A only (left out of the comparison)"})
    only_b: list[str] = field(metadata={"doc": "problems scored in B only"})
    metrics: dict[str, tuple[float, float]] = field(metadata={"doc": "e.g. 'pass@1': (A, B), over the common problems"})
    delta: float = field(metadata={"doc": "pass@1 of B minus pass@1 of A"})
    delta_ci: tuple[float, float] = field(metadata={"doc": "95% paired bootstrap interval of delta"})
    p_value: float = field(metadata={"doc": "two-sided p-value of the paired test"})
    test: str = field(metadata={"doc": "which paired test gave p_value"})
    alpha: float = field(metadata={"doc": "significance level"})
    significant: bool = field(metadata={"doc": "p_value < alpha"})
    regressed: list[ProblemChange] = field(metadata={"doc": "rate_b < rate_a, largest drop first"})
    improved: list[ProblemChange] = field(metadata={"doc": "rate_b > rate_a, largest gain first"})

    @property
    def significant_regression(self) -> bool:
        return self.significant and self.delta < 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        values = dict(data)
        values["metrics"] = {k: (float(v[0]), float(v[1])) for k, v in data["metrics"].items()}
        values["delta_ci"] = (float(data["delta_ci"][0]), float(data["delta_ci"][1]))
        values["regressed"] = [ProblemChange(**c) for c in data["regressed"]]
        values["improved"] = [ProblemChange(**c) for c in data["improved"]]
        return cls(**values)
