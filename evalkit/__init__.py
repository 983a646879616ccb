"""evalkit: evaluate code-generation models in isolated sandboxes, scheduled by Ray.

    >>> import evalkit
    >>> outcome = evalkit.run("configs/humaneval.yaml")
    >>> outcome.summary["metrics"]["pass@1"]
    >>> run = evalkit.load_run(outcome.run_dir)   # pandas frames for a notebook
    >>> run.problems.sort_values("pass_rate").head()
"""

from ._analysis import Run, load_run, load_runs
from ._api import ApiOptions, ApiProvider, Completion, GenerationRequest, MalformedReply
from ._benchmarks import Benchmark, benchmark_names, get_benchmark
from ._compare import Comparison, ProblemChange, compare_results, compare_runs, format_comparison
from ._config import (
    BenchmarkConfig,
    EvalConfig,
    ModelConfig,
    SamplingConfig,
    SandboxConfig,
    SchedulerConfig,
    load_config,
    parse_config,
)
from ._errors import (
    ConfigError,
    EvalkitError,
    InfraError,
    RunInterrupted,
    RunStoreError,
    SamplesError,
    StorageError,
    UserInputError,
)
from ._http import ApiError
from ._models import ModelProvider, ProviderOptions, make_provider, provider_names
from ._recheck import RecheckOutcome, recheck
from ._results import RunOutcome
from ._runner import latest_unfinished, report, resume, run
from ._samples import read_samples, write_samples
from ._scoring import pass_at_k, score
from ._stats import pass_at_k_ci
from ._store import RunStore
from ._types import STATUSES, ExecRequest, Generation, Problem, Sample, SampleResult, Status, TimeLimits
from ._version import __version__

__all__ = [
    "ApiError",
    "ApiOptions",
    "ApiProvider",
    "Benchmark",
    "BenchmarkConfig",
    "Comparison",
    "Completion",
    "ConfigError",
    "EvalConfig",
    "EvalkitError",
    "ExecRequest",
    "Generation",
    "GenerationRequest",
    "InfraError",
    "MalformedReply",
    "ModelConfig",
    "ModelProvider",
    "Problem",
    "ProblemChange",
    "ProviderOptions",
    "RecheckOutcome",
    "Run",
    "RunInterrupted",
    "RunOutcome",
    "RunStore",
    "RunStoreError",
    "STATUSES",
    "Sample",
    "SampleResult",
    "SamplesError",
    "SamplingConfig",
    "SandboxConfig",
    "SchedulerConfig",
    "Status",
    "StorageError",
    "TimeLimits",
    "UserInputError",
    "__version__",
    "benchmark_names",
    "compare_results",
    "compare_runs",
    "format_comparison",
    "get_benchmark",
    "latest_unfinished",
    "load_config",
    "load_run",
    "load_runs",
    "make_provider",
    "parse_config",
    "pass_at_k",
    "pass_at_k_ci",
    "provider_names",
    "read_samples",
    "recheck",
    "report",
    "resume",
    "run",
    "score",
    "write_samples",
]
