"""evalkit's public surface: ``__all__`` is sorted, complete and importable."""

from __future__ import annotations

import importlib.metadata
import inspect
import types

import evalkit


def public_attributes() -> set[str]:
    return {name for name, value in vars(evalkit).items() if not name.startswith("_") and not isinstance(value, types.ModuleType)}


def test_all_is_sorted_and_unique() -> None:
    assert evalkit.__all__ == sorted(evalkit.__all__)
    assert len(evalkit.__all__) == len(set(evalkit.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in evalkit.__all__ if not hasattr(evalkit, name)]
    assert missing == []


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from evalkit import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(evalkit.__all__)


def test_no_public_attribute_is_left_out_of_all() -> None:
    assert public_attributes() - set(evalkit.__all__) == set()


def test_exported_classes_and_functions_are_evalkits_own() -> None:
    for name in evalkit.__all__:
        value = getattr(evalkit, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("evalkit."), (name, value.__module__)


def test_version_is_the_distributions() -> None:
    assert evalkit.__version__ == importlib.metadata.version("evalkit")


def test_error_hierarchy() -> None:
    for cls in (evalkit.ConfigError, evalkit.SamplesError, evalkit.RunStoreError):
        assert issubclass(cls, evalkit.UserInputError)
    for cls in (evalkit.UserInputError, evalkit.InfraError, evalkit.RunInterrupted):
        assert issubclass(cls, evalkit.EvalkitError)
    assert not issubclass(evalkit.InfraError, evalkit.UserInputError)
    assert issubclass(evalkit.StorageError, evalkit.InfraError)  # exit code 3: the run is continued with resume
    assert not issubclass(evalkit.RunInterrupted, evalkit.UserInputError)
