"""Reading rendered reports in tests: their visible text, their problem rows, the URLs they could
fetch, and a real run to render them from."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml

import evalkit

from ._mixed import LOOP, mixed_completions


def text_of(page: str) -> str:
    """The page's visible text, tags dropped and entities decoded, whitespace collapsed."""
    page = re.sub(r"<(script|style|svg)\b.*?</\1>", " ", page, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


class Rows(HTMLParser):
    """The problem rows of a report: for each ``<tbody class="problem">``, its attributes, the
    text of its main row, and the raw HTML of its detail row."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: dict[str, dict[str, Any]] = {}
        self._current: dict[str, Any] | None = None
        self._part = ""
        self.feed(page)
        for tbody in re.finditer(r'<tbody class="problem"[^>]*data-task="([^"]*)".*?</tbody>', page, re.S):
            detail = tbody.group(0).split('<tr class="detail">', 1)[1]
            self.rows[html.unescape(tbody.group(1))]["detail"] = detail

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "tbody" and values.get("class") == "problem":
            self._current = {**values, "main": ""}
            self.rows[values["data-task"] or ""] = self._current
        elif tag == "tr" and self._current is not None:
            self._part = values.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and self._part == "row":
            self._current["main"] = " ".join((self._current["main"] + " " + data).split())


class Links(HTMLParser):
    """Every attribute of a page that can make a browser fetch or navigate, and the page's CSP."""

    URL_ATTRIBUTES = {"src", "href", "xlink:href", "action", "formaction", "srcset", "poster", "data", "background", "ping"}

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self.csp: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [value or "" for name, value in attrs if name in self.URL_ATTRIBUTES]
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp.append(values.get("content") or "")
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def assert_self_contained(page: str) -> Links:
    links = Links(page)
    assert links.urls and all(url.startswith("#") for url in links.urls), [u for u in links.urls if not u.startswith("#")]
    assert "@import" not in page and not re.search(r"url\((?!#)", page)  # CSS fetches nothing either
    assert len(links.csp) == 1 and links.csp[0].startswith("default-src 'none'; style-src 'unsafe-inline'; script-src ")
    return links


def mixed_run_config(tmp_path: Path) -> Path:
    """A config evaluating passing, failing and looping samples of three HumanEval problems."""
    problems = evalkit.get_benchmark(evalkit.BenchmarkConfig(name="humaneval")).select(["HumanEval/0", "HumanEval/2", "HumanEval/53"], None)
    rows = [(p.task_id, completion) for p in problems for _, completion, _ in mixed_completions(p)[:5]]
    rows.append((problems[0].task_id, LOOP))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    config = {
        "name": "report-run",
        "benchmark": {"name": "humaneval", "ids": [p.task_id for p in problems]},
        "model": {"provider": "samples", "path": str(samples)},
        "sandbox": {"timeout_s": 2},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
