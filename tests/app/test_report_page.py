"""The report page: self-contained, complete for a finished run, a progress page for a running one, and fine in a browser.

The browser test renders the page in headless Chromium (Debian's ``chromium``; CI installs
it) and skips with the reason where it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nas.app.cli import main
from nas.app.report_page import svg_chart, write_page
from nas.core.errors import ArtifactError
from nas.pipeline.runs import Run

FAST = ["--epochs", "2", "--eval-every", "1", "--quiet", "--fitness-users", "300"]
CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


class _Page(HTMLParser):
    """Tags, their attributes and the text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert main(["search", "--runs", str(runs), "--name", "r", "--controller", "random", "--trials", "3", *FAST]) == 0
    assert main(["report", str(runs / "r")]) == 0
    return runs / "r"


def test_the_page_of_a_finished_run_holds_everything_and_needs_nothing_outside_it(finished_run: Path):
    page = parse(finished_run / "report" / "index.html")
    text = " ".join(page.text)
    for heading in ("Quality against memory", "Metrics", "Where the budget went", "Fitness over trials", "Training", "Time",
                    "Configuration"):
        assert heading in text, heading
    points = [attrs["data-point"] for tag, attrs in page.tags if tag == "circle" and "data-point" in attrs]
    assert {"full", "allocated", "valid", "loss"} <= set(points)
    # No script, and nothing fetched: every image is inline data, no stylesheet or frame is linked.
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe")]
    sources = [attrs.get("src") or "" for tag, attrs in page.tags if tag == "img"]
    assert len(sources) == 2 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r"(src|href)=\"https?:", (finished_run / "report" / "index.html").read_text())
    assert "of the budget" in text and "test ndcg@20" in text


def test_a_running_search_gets_a_progress_page_that_reloads(tmp_path: Path):
    with Run.create(tmp_path, {"model": "mf", "controller": "bet", "budget": "0.9", "trials": 8}, name="r") as run:
        run.log_event("start")
        for trial, fitness in enumerate([0.61, 0.74, 0.69]):
            run.log_event("trial", round=trial, index=0, trial=trial, fingerprint=f"a{trial}", cost=10, fitness=fitness)
    page_path = write_page(tmp_path / "r")
    html = page_path.read_text()
    assert '<meta http-equiv="refresh"' in html
    text = " ".join(parse(page_path).text)
    assert "searching" in text and "3 of 8" in text and "0.7400" in text
    assert html.count('data-point="trial"') == 3


def test_watch_rewrites_the_page_until_the_run_is_done(finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    folder = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (folder / "report" / "index.html").unlink()
    assert main(["report", str(folder), "--watch", "0.5"]) == 0  # done already: one rewrite, then it returns
    assert "the run is done" in capsys.readouterr().out and (folder / "report" / "index.html").is_file()


def test_a_damaged_result_is_one_error_naming_the_file(finished_run: Path, tmp_path: Path):
    folder = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (folder / "metrics.json").write_text("[]")
    with pytest.raises(ArtifactError, match="metrics.json"):
        write_page(folder)


def test_charts_place_every_point_and_survive_one_point_or_a_flat_series():
    chart = svg_chart([("a", [(1.0, 0.5)], "points", "a"), ("b", [(1, 2), (2, 2), (3, 2)], "line", "b")],
                      x_label="x", y_label="y")
    assert chart.count('data-point="a"') == 1 and chart.count('data-point="b"') == 3
    assert "nan" not in chart and "inf" not in chart
    assert svg_chart([("empty", [], "points", "e")], x_label="x", y_label="y") == ""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y chromium (CI installs it)")
def test_the_page_renders_in_a_browser_without_errors(finished_run: Path):
    url = (finished_run / "report" / "index.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-point="full"' in dom.stdout and 'data-point="allocated"' in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line or "Failed to load" in line]
    assert not console, console
    screenshot = finished_run / "report" / "screenshot.png"  # for a person to look at
    shot = subprocess.run([CHROMIUM, *flags, "--window-size=1200,2600", f"--screenshot={screenshot}", url],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot.stderr[-2000:]
