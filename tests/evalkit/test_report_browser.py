"""The HTML report in a real browser: headless Chromium (Debian's chromium package) opens a real
run's report with no console messages, builds a row per problem, sorts, filters and opens rows,
fetches nothing, and leaves a screenshot.

Chromium is driven from the command line: ``--dump-dom`` prints the DOM after the page's
scripts ran, ``--screenshot`` writes a PNG, and ``--enable-logging=stderr`` copies every console
message (errors, uncaught exceptions, Content-Security-Policy violations) to stderr as a line
with ``CONSOLE`` in it.
"""

from __future__ import annotations

import html
import http.server
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

import evalkit
from evalkit import SampleResult, score
from evalkit._compare import Comparison, ProblemChange
from evalkit._report import render_comparison, render_report

from ..conftest import bwrap_missing_reason
from ._report_pages import Rows, mixed_run_config

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("needs headless Chromium: apt-get install chromium (scripts/setup.sh installs it)")
    return path


@dataclass
class Loaded:
    dom: str
    console: list[str]


@dataclass
class Browser:
    executable: str
    profiles: Path

    def open(self, url: str, *mode: str) -> Loaded:
        """Load `url` in a fresh headless Chromium with `mode` (``--dump-dom`` by default)."""
        profile = self.profiles / f"profile-{len(list(self.profiles.iterdir()))}"
        command = [
            self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *(mode or ["--dump-dom"]), url,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return Loaded(done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line])


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Browser:
    profiles = tmp_path / "chromium-profiles"
    profiles.mkdir()
    return Browser(chromium, profiles)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """The report of a real run: passing, failing and timing-out samples of three problems."""
    reason = bwrap_missing_reason()
    if reason:
        pytest.skip(reason)
    outcome = evalkit.run(mixed_run_config(tmp_path_factory.mktemp("report-run")), progress=False)
    assert outcome.summary["counts"]["timeout"] == 1, outcome.summary["counts"]
    return outcome.run_dir / "report.html"


def problem_bodies(dom: str) -> list[tuple[str, bool, bool]]:
    """(task id, hidden, open) of each problem row, in the order the DOM has them."""
    found = []
    for tag in re.findall(r'<tbody class="problem[^"]*"[^>]*>', dom):
        task = html.unescape(re.search(r'data-task="([^"]*)"', tag).group(1))  # type: ignore[union-attr]
        found.append((task, bool(re.search(r"\shidden(=|\s|>)", tag)), bool(re.search(r'class="problem open"', tag))))
    return found


def with_test_script(page: str, script: str) -> str:
    """The page with `script` appended, and its policy widened so that this one extra script
    runs (the page's own policy lets only the page's script run, which is what it is for)."""
    page, replaced = re.subn(r"script-src 'sha256-[^']+'", "script-src 'unsafe-inline'", page)
    assert replaced == 1
    return page.replace("</body>", f"<script>{script}</script>\n</body>")


# -- the real report ---------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.sandbox
def test_the_report_opens_without_console_messages_and_has_a_row_per_problem(browser: Browser, report: Path) -> None:
    loaded = browser.open(report.as_uri())
    assert loaded.console == []
    assert [task for task, _, _ in problem_bodies(loaded.dom)] == ["HumanEval/0", "HumanEval/2", "HumanEval/53"]
    assert len(Rows(loaded.dom).rows) == 3
    assert '<html lang="en" class="js">' in loaded.dom  # the page's script ran
    assert '<output id="filter-count" for="filter-text filter-status">3 problems</output>' in loaded.dom


@pytest.mark.ray
@pytest.mark.sandbox
def test_the_report_leaves_a_screenshot(browser: Browser, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    loaded = browser.open(report.as_uri(), f"--screenshot={shot}", "--window-size=1280,2400")
    print(f"screenshot of the report: {shot}")
    assert loaded.console == []
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=2**24) or []}
        # drawn, not blank: the status colours of the badges, bars and charts are on screen
        assert (0x1B, 0x7F, 0x3B) in colours and (0xC0, 0x39, 0x2B) in colours and (0xD9, 0x82, 0x2B) in colours
        assert len(colours) > 50


@pytest.mark.ray
@pytest.mark.sandbox
def test_a_fragment_filters_sorts_and_opens(browser: Browser, report: Path) -> None:
    url = report.as_uri()
    # problems with a failing sample, highest pass rate first: HumanEval/0 has the loop on top of the others
    failing = problem_bodies(browser.open(url + "#status=failing&sort=rate&dir=desc").dom)
    visible = [task for task, hidden, _ in failing if not hidden]
    assert visible == ["HumanEval/2", "HumanEval/53", "HumanEval/0"]
    assert problem_bodies(browser.open(url + "#status=timeout").dom) == [
        ("HumanEval/0", False, False), ("HumanEval/2", True, False), ("HumanEval/53", True, False),
    ]  # fmt: skip
    searched = browser.open(url + "#q=humaneval/53").dom
    assert [task for task, hidden, _ in problem_bodies(searched) if not hidden] == ["HumanEval/53"]
    assert "1 of 3 problems</output>" in searched
    opened = browser.open(url + "#p1")
    assert opened.console == []
    assert [is_open for _, _, is_open in problem_bodies(opened.dom)] == [False, True, False]


@pytest.mark.ray
@pytest.mark.sandbox
def test_clicks_sort_filter_and_open_rows(browser: Browser, report: Path, tmp_path: Path) -> None:
    """The real event handlers, driven by a script the test adds: header clicks, typing in the
    filter, picking a status, clicking and pressing Enter on rows."""
    script = """
document.addEventListener("DOMContentLoaded", function () {
  function order() {
    return Array.prototype.map.call(document.querySelectorAll("#problems tbody"), function (b) { return b.getAttribute("data-task"); });
  }
  function visible() {
    return Array.prototype.filter.call(document.querySelectorAll("#problems tbody"), function (b) { return !b.hidden; })
      .map(function (b) { return b.getAttribute("data-task"); });
  }
  function shown(id) { return getComputedStyle(document.querySelector("#" + id + " tr.detail")).display; }
  var out = {};
  var rate = document.querySelector('th[data-sort="rate"]');
  rate.click();
  out.byRate = order();
  out.ariaSort = rate.getAttribute("aria-sort");
  rate.click();
  out.byRateDesc = order();
  out.hashAfterSort = location.hash;
  document.querySelector('th[data-sort="order"]').click();
  out.byTask = order();
  var query = document.getElementById("filter-text");
  query.value = "HumanEval/5";
  query.dispatchEvent(new Event("input"));
  out.typed = visible();
  query.value = "";
  query.dispatchEvent(new Event("input"));
  var status = document.getElementById("filter-status");
  status.value = "timeout";
  status.dispatchEvent(new Event("change"));
  out.picked = visible();
  out.count = document.getElementById("filter-count").textContent;
  out.hashAfterFilter = location.hash;
  out.closed = shown("p0");
  document.querySelector("#p0 td.gist").click();
  out.clicked = shown("p0");
  out.expanded = document.querySelector("#p0 tr.row").getAttribute("aria-expanded");
  document.querySelector("#p0 td.task").click();
  out.clickedAgain = shown("p0");
  document.querySelector("#p2 tr.row").dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true}));
  out.entered = shown("p2");
  out.firstSampleOpen = document.querySelector("#p2 details.sample").open;
  var pre = document.createElement("pre");
  pre.id = "test-results";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
"""
    page = tmp_path / "report-under-test.html"
    page.write_text(with_test_script(report.read_text(encoding="utf-8"), script), encoding="utf-8")
    loaded = browser.open(page.as_uri())
    assert loaded.console == []
    found = re.search(r'<pre id="test-results">(.*?)</pre>', loaded.dom, re.S)
    assert found, loaded.dom[-2000:]
    out = json.loads(html.unescape(found.group(1)))
    # pass rates: HumanEval/0 2/6, HumanEval/2 2/5, HumanEval/53 2/5 (ties keep task order)
    assert out["byRate"] == ["HumanEval/0", "HumanEval/2", "HumanEval/53"]
    assert out["ariaSort"] == "ascending"
    assert out["byRateDesc"] == ["HumanEval/2", "HumanEval/53", "HumanEval/0"]
    assert out["hashAfterSort"] == "#sort=rate&dir=desc"
    assert out["byTask"] == ["HumanEval/0", "HumanEval/2", "HumanEval/53"]
    assert out["typed"] == ["HumanEval/53"]
    assert out["picked"] == ["HumanEval/0"] and out["count"] == "1 of 3 problems"
    assert out["hashAfterFilter"] == "#status=timeout"
    assert (out["closed"], out["clicked"], out["expanded"], out["clickedAgain"]) == ("none", "table-row", "true", "none")
    assert out["entered"] == "table-row" and out["firstSampleOpen"] is True


# -- what the checks catch ---------------------------------------------------------------------------


class Probe(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        Probe.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe() -> Iterator[str]:
    """The base URL of a local HTTP server that records every request it gets."""
    Probe.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def small_report(make_result) -> str:
    results: list[SampleResult] = [make_result("HumanEval/0", 0), make_result("HumanEval/1", 0, "failed")]
    summary = score(results, [1])
    summary["run"] = {"name": "probe", "benchmark": "humaneval", "model": "samples", "driver": "bwrap", "isolation": "namespaces",
                      "duration_s": 1.0, "evalkit_version": evalkit.__version__}  # fmt: skip
    return render_report(summary, results)


def test_the_console_check_catches_a_script_error(browser: Browser, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><title>broken</title><p>hi</p><script>undefinedFunction();</script>")
    console = browser.open(page.as_uri()).console
    assert len(console) == 1 and "Uncaught ReferenceError: undefinedFunction is not defined" in console[0]


def test_the_report_fetches_nothing_even_when_its_content_asks(browser: Browser, tmp_path: Path, probe: str, make_result) -> None:
    """A report into which something slipped that would fetch (an image, a script, a style sheet)
    fetches none of it: its policy blocks all three, and the console says so, which is what the
    console check above would fail on. Without the policy, the same page does fetch: the probe sees it."""
    fetching = f'<img src="{probe}/image.png"><script src="{probe}/script.js"></script><link rel="stylesheet" href="{probe}/style.css">'
    report = small_report(make_result)
    page = tmp_path / "fetching.html"
    page.write_text(report.replace("</body>", fetching + "</body>"))
    loaded = browser.open(page.as_uri())
    assert Probe.requests == []
    assert len(loaded.console) == 3 and all("violates the following Content Security Policy directive" in line for line in loaded.console)

    no_policy = tmp_path / "no-policy.html"
    no_policy.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report).replace("</body>", fetching + "</body>"))
    browser.open(no_policy.as_uri())
    assert sorted(Probe.requests) == ["/image.png", "/script.js", "/style.css"]


def test_a_report_without_results_and_the_comparison_page_open_cleanly(browser: Browser, tmp_path: Path) -> None:
    summary = score([], [1])
    summary["run"] = {"name": "empty", "benchmark": "humaneval", "model": "samples", "driver": "bwrap", "isolation": "namespaces",
                      "duration_s": 0.0, "evalkit_version": evalkit.__version__}  # fmt: skip
    empty = tmp_path / "empty.html"
    empty.write_text(render_report(summary, []))
    loaded = browser.open(empty.as_uri())
    assert loaded.console == [] and "No problem has a result yet." in loaded.dom

    change = ProblemChange(task_id="HumanEval/3", rate_a=1.0, rate_b=0.0, n_a=1, n_b=1)
    comparison = Comparison(a="a", b="b", problems=2, only_a=[], only_b=[], metrics={"pass@1": (1.0, 0.5)}, delta=-0.5, delta_ci=(-1.0, 0.0),
                            p_value=0.5, test="paired bootstrap", alpha=0.05, significant=False, regressed=[change], improved=[])  # fmt: skip
    page = tmp_path / "comparison.html"
    page.write_text(render_comparison(comparison))
    loaded = browser.open(page.as_uri())
    assert loaded.console == [] and "No significant difference" in loaded.dom
