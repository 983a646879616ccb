"""What a piece of Python source defines and needs, and how to trim it to one function's needs.

Used on model output, so every function here accepts any text: code that does not parse is
answered with None, False or the text unchanged, never an exception. Stdlib only (ast).
"""

from __future__ import annotations

import ast
import functools
import re
import threading
import warnings
from collections.abc import Iterator

_Def = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_Scope = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_Comprehension = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_PARSE_LOCK = threading.Lock()  # warnings.catch_warnings swaps process-wide state
_LINE = re.compile(r".*?(?:\r\n|\r|\n)|.+", re.DOTALL)  # the line breaks ast counts, no others


@functools.lru_cache(maxsize=256)
def parse_module(code: str) -> ast.Module | None:
    """``code`` parsed as a module, or None if it does not parse.

    Shared, cached trees: callers must not modify them.
    """
    with _PARSE_LOCK, warnings.catch_warnings():
        # model code is full of "\d" in plain strings: Python 3.12 warns on every parse
        warnings.simplefilter("ignore")
        try:
            return ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes
            return None


def parses_as_body(code: str) -> bool:
    """Whether ``code`` is an indented function body, the continuation of a prompt's signature."""
    first = next((line for line in code.split("\n") if line.strip()), "")
    return first[:1] in (" ", "\t") and parse_module("def _body():\n" + code) is not None


def parses(code: str) -> bool:
    """Whether ``code`` parses as a module or as a function body."""
    return parse_module(code) is not None or parses_as_body(code)


def defines(tree: ast.Module, name: str) -> bool:
    """Whether the module binds ``name`` at top level by ``def``, ``class`` or assignment."""
    for stmt in tree.body:
        if isinstance(stmt, _Def) and stmt.name == name:
            return True
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def source_lines(text: str) -> list[str]:
    """``text`` split after each line break that ``ast`` counts (``str.splitlines`` counts more)."""
    return _LINE.findall(text)


def first_line(stmt: ast.stmt) -> int:
    """The line a statement starts on, counting its decorators."""
    decorators = stmt.decorator_list if isinstance(stmt, _Def) else []
    return min([stmt.lineno, *(d.lineno for d in decorators)])


def sanitize(code: str, entry_point: str) -> str:
    """``code`` without what would run besides defining ``entry_point``, when ``code`` defines it.

    Kept: every top-level import, ``sys.setrecursionlimit(...)`` calls, and the top-level
    statements that bind or modify a name the entry point needs, transitively (helpers,
    classes, constants, a table filled by a loop). Dropped: ``if __name__ == "__main__":``
    blocks (the test program runs as ``__main__``), and everything else: example calls,
    prints, asserts, input() demos, statements that use the entry point without defining it.
    Kept statements keep their text and order; comments between them go.

    Returns ``code`` unchanged when it does not parse as a module or does not define
    ``entry_point`` (a function body, a fragment), when nothing would be dropped, when the
    trimmed code would not parse or would lose the entry point (correct code is never lost),
    and when the code is nested too deeply to analyse.
    """
    tree = parse_module(code)
    if tree is None or not defines(tree, entry_point):
        return code
    try:
        kept = _needed(tree.body, entry_point)
    except RecursionError:  # an expression nested deeper than free_names recurses: leave it be
        return code
    if len(kept) == len(tree.body):
        return code
    trimmed = _join(code, tree.body, kept)
    check = parse_module(trimmed)
    return trimmed if check is not None and defines(check, entry_point) else code


def _needed(body: list[ast.stmt], entry_point: str) -> list[ast.stmt]:
    imported = {name for stmt in body if isinstance(stmt, (ast.Import, ast.ImportFrom)) for name in _bound(stmt)}
    keep = [isinstance(s, (ast.Import, ast.ImportFrom)) or _sets_recursion_limit(s) for s in body]
    candidates = [i for i, s in enumerate(body) if not keep[i] and not _is_main_guard(s)]
    needed = {entry_point}
    changed = True
    while changed:
        changed = False
        for i in candidates:
            stmt = body[i]
            if keep[i] or not (_bound(stmt) | (_modified(stmt) - imported)) & needed:
                continue
            uses = free_names(stmt)
            defining = isinstance(stmt, (*_Def, ast.Assign, ast.AnnAssign, ast.AugAssign))
            if not defining and entry_point in uses:
                continue  # example usage that happens to touch a needed name
            keep[i] = changed = True
            needed |= uses
    return [s for i, s in enumerate(body) if keep[i]]


def _join(code: str, body: list[ast.stmt], kept: list[ast.stmt]) -> str:
    lines = source_lines(code)
    spans = {id(s): range(first_line(s), (s.end_lineno or s.lineno) + 1) for s in body}
    owners: dict[int, int] = {}
    for span in spans.values():
        for line in span:
            owners[line] = owners.get(line, 0) + 1
    parts: list[str] = []
    previous: ast.stmt | None = None
    for stmt in kept:
        span = spans[id(stmt)]
        if any(owners[line] > 1 for line in span):  # shares a line with another statement (a; b)
            text = ast.get_source_segment(code, stmt) or ""
        else:
            text = "".join(lines[span.start - 1 : span.stop - 1])
        imports = (ast.Import, ast.ImportFrom)
        if previous is not None:
            parts.append("\n" if isinstance(previous, imports) and isinstance(stmt, imports) else "\n\n")
        parts.append(text.strip("\r\n"))
        previous = stmt
    return "".join(parts) + "\n"


def _is_main_guard(stmt: ast.stmt) -> bool:
    if not (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare)):
        return False
    test = stmt.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = (test.left, test.comparators[0])
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _sets_recursion_limit(stmt: ast.stmt) -> bool:
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return False
    func = stmt.value.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name == "setrecursionlimit"


def _same_scope(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and its descendants that run in its scope: not the insides of nested functions,
    lambdas, classes or comprehensions (nested ``def`` and ``class`` statements are yielded)."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        if current is not node and isinstance(current, (*_Scope, *_Comprehension)):
            continue
        todo.extend(ast.iter_child_nodes(current))


def _bound(stmt: ast.AST) -> set[str]:
    """Names a statement binds in its own scope."""
    if isinstance(stmt, _Def):
        return {stmt.name}
    names: set[str] = set()
    for node in _same_scope(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, _Def):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _modified(stmt: ast.stmt) -> set[str]:
    """Names whose object a top-level statement may change: ``x[i] = ...``, ``x.a = ...``,
    ``x.append(...)`` (any method call, as it may mutate). Defining a function changes nothing."""
    names: set[str] = set()
    if isinstance(stmt, _Def):
        return names
    for node in _same_scope(stmt):
        if isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names |= _base_name(node.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            names |= _base_name(node.func.value)
    return names


def _base_name(node: ast.expr) -> set[str]:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return {node.id} if isinstance(node, ast.Name) else set()


def free_names(node: ast.AST) -> set[str]:
    """Names ``node`` reads from the enclosing scope: a superset (a name that may be local is
    counted as read), so that what a function needs is never missed."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return set(node.names)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return _function_free_names(node)
    if isinstance(node, _Comprehension):
        first, *others = node.generators
        inner = set().union(*(free_names(c) for c in ast.iter_child_nodes(node) if c is not first))
        inner |= free_names(first.target) | set().union(*(free_names(c) for c in first.ifs))
        targets = set().union(*(_bound(g.target) for g in node.generators))
        return (inner - targets) | free_names(first.iter)
    return set().union(*(free_names(child) for child in ast.iter_child_nodes(node)))


def _function_free_names(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, [args.vararg, args.kwarg])]
    outside: list[ast.AST] = [*args.defaults, *filter(None, args.kw_defaults)]
    outside += [a.annotation for a in every if a.annotation is not None]
    body: list[ast.AST] = [node.body] if isinstance(node, ast.Lambda) else [*node.body]
    if not isinstance(node, ast.Lambda):
        outside += [*node.decorator_list, *filter(None, [node.returns])]
    local = {a.arg for a in every} | set().union(*(_bound(stmt) for stmt in body))
    declared_global = {name for stmt in body for n in _same_scope(stmt) if isinstance(n, ast.Global) for name in n.names}
    inner = set().union(*(free_names(stmt) for stmt in body))
    return set().union(*(free_names(n) for n in outside)) | (inner - (local - declared_global))
