"""From a model's reply to the code to evaluate: `extract_code` for chat replies,
`truncate_at_stops` for completions.

A chat reply is prose around markdown code blocks, sometimes after a reasoning section, and the
code in it is often more than the solution: a demo under ``if __name__ == "__main__":``,
prints, asserts. The test program runs as ``__main__``, so such code would run before the
tests; `extract_code` keeps what the entry point needs (`evalkit._pycode.sanitize`). Pure
functions of their arguments, stdlib only.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections.abc import Iterator, Sequence

from ._pycode import defines, parse_module, parses, sanitize

PYTHON_TAGS = frozenset({"", "python", "py", "python3", "py3"})
"""Language tags of the fenced blocks taken as Python (lowercased; empty: no tag)."""

_THINK_PAIR = re.compile(r"<(think|thinking)>.*?</\1>", re.IGNORECASE | re.DOTALL)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"\s*<think(?:ing)?>", re.IGNORECASE)
_FENCE_OPEN = re.compile(r"(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)")
_FENCE_CLOSE = re.compile(r"[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*")
_TAG = re.compile(r"[\w+#.-]*")
_DEFINITION = r"^(?:(?:async[ \t]+)?def|class)[ \t]+{0}\b|^{0}[ \t]*[:=]"
_MAX_RUN_LINES = 200_000  # lines parsed in all while searching an unfenced reply (~0.3 s)


def extract_code(reply: str, entry_point: str) -> str:
    """The code to evaluate from a chat reply that should define ``entry_point``.

    1. ``<think>``/``<thinking>`` sections go, as does an unterminated one at the start (the
       reply ran out of tokens while reasoning: nothing is left) and everything up to a
       closing tag that was never opened (servers that strip the opening tag).
    2. Fenced blocks (```` ``` ```` or ``~~~``, closed by a fence of the same kind at least
       as long; a block left open runs to the end, as when ``max_tokens`` cut the reply) tagged
       with a `PYTHON_TAGS` language are candidates; blocks of other languages are ignored.
       The choice: the last block that parses and defines ``entry_point`` at top level
       (models restate, then correct); else the longest block that parses as a module or as
       an indented function body; else the first.
    3. Without Python blocks, the reply outside any fence: all of it if it parses, else its
       longest run of whole lines that parses, preferring runs that define ``entry_point``
       ("Here is the code:" before the function and an explanation after it).
    4. Code that defines ``entry_point`` is trimmed to what it needs (`evalkit._pycode.sanitize`:
       imports, helpers, constants; no ``__main__`` block, prints or example calls). Other code,
       such as an indented body that continues the prompt, is returned as is (not dedented).

    Line ends are normalised to ``\\n``; leading blank lines and trailing whitespace go. An
    empty reply, or one with nothing but reasoning, gives "".
    """
    text = _strip_thinking(reply.replace("\r\n", "\n").replace("\r", "\n"))
    blocks, outside = _fenced_blocks(text)
    python = [code for tag, code in blocks if tag in PYTHON_TAGS]
    code = _choose(python, entry_point) if python else _unfenced(outside, entry_point)
    return sanitize(code, entry_point)


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any of ``stops`` (excluded); empty stops are ignored."""
    cut = min((i for stop in stops if stop and (i := text.find(stop)) >= 0), default=len(text))
    return text[:cut]


def _strip_thinking(text: str) -> str:
    text = _THINK_PAIR.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    return "" if _THINK_OPEN.match(text) else text


def _fenced_blocks(text: str) -> tuple[list[tuple[str, str]], str]:
    """The (language tag, code) of each fenced block, and the text outside them."""
    lines = text.split("\n")
    blocks: list[tuple[str, str]] = []
    outside: list[str] = []
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.fullmatch(lines[i])
        i += 1
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            outside.append(lines[i - 1])
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        tag = _TAG.match(opening["info"].strip())
        body: list[str] = []
        while i < len(lines) and not _closes(lines[i], fence):
            line = lines[i]
            # a fence indented in a list item: its code is indented as much (CommonMark)
            body.append(line[min(indent, len(line) - len(line.lstrip(" \t"))) :])
            i += 1
        i += 1
        blocks.append(((tag.group() if tag else "").lower(), _tidy("\n".join(body))))
    return blocks, "\n".join(outside)


def _closes(line: str, fence: str) -> bool:
    closing = _FENCE_CLOSE.fullmatch(line)
    return closing is not None and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence)


def _tidy(code: str) -> str:
    """Without leading blank lines (indentation stays) and trailing whitespace; ends with a newline."""
    lines = code.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    body = "\n".join(lines).rstrip()
    return body + "\n" if body else ""


def _choose(blocks: list[str], entry_point: str) -> str:
    for code in reversed(blocks):
        tree = parse_module(code)
        if tree is not None and defines(tree, entry_point):
            return code
    parsing = [code for code in blocks if parses(code)]
    return max(parsing, key=len) if parsing else blocks[0]


def _unfenced(text: str, entry_point: str) -> str:
    code = _tidy(text)
    if not code or parses(code):
        return code
    return _longest_parsing_run(code.split("\n"), entry_point) or code


def _longest_parsing_run(lines: list[str], entry_point: str) -> str | None:
    """The longest run of lines that parses as a module: among those that define
    ``entry_point`` if any does, else among all; runs start and end at unindented lines."""
    top = [i for i, line in enumerate(lines) if line.strip() and not line[0].isspace()]
    ends = [*top[1:], len(lines)]
    weight = [0]  # weight[i]: non-blank lines before line i
    for line in lines:
        weight.append(weight[-1] + bool(line.strip()))
    definition = re.compile(_DEFINITION.format(re.escape(entry_point)))
    defining = [i for i, line in enumerate(lines) if definition.match(line)]
    budget = _MAX_RUN_LINES
    for must_contain in (defining, None):
        for start, end in _runs_longest_first(top, ends, weight, must_contain):
            budget -= end - start
            if budget < 0:
                return None
            code = _tidy("\n".join(lines[start:end]))
            tree = parse_module(code)
            if tree is not None and (must_contain is None or defines(tree, entry_point)):
                return code
    return None


def _runs_longest_first(starts: list[int], ends: list[int], weight: list[int], must_contain: list[int] | None) -> Iterator[tuple[int, int]]:
    """Runs [start, end) by decreasing weight, then increasing start; with ``must_contain``,
    only runs that hold one of its lines. Lazy: a long reply is never paired out in full."""
    heap: list[tuple[int, int, int, int]] = []  # (-weight, start, index into ends, lowest index)
    for start in starts:
        floor = start if must_contain is None else next((d for d in must_contain if d >= start), None)
        if floor is None:
            continue
        lowest = bisect.bisect_right(ends, floor)
        if lowest < len(ends):
            last = len(ends) - 1
            heapq.heappush(heap, (weight[start] - weight[ends[last]], start, last, lowest))
    while heap:
        _, start, index, lowest = heapq.heappop(heap)
        yield start, ends[index]
        if index > lowest:
            heapq.heappush(heap, (weight[start] - weight[ends[index - 1]], start, index - 1, lowest))
