"""The playground served for real (`optimlab serve` on 127.0.0.1): Debian's chromium driven by Playwright,
and the API fuzzed by schemathesis from its own OpenAPI schema.

CI installs the browser with `apt-get install -y chromium` (Playwright's own download cannot reach the
internet here) and the extras with `pip install -e '.[lab,web,test]'`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi", reason="the playground needs the web extra: pip install 'optimlab[web]'")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install 'optimlab[test]'")
schemathesis = pytest.importorskip("schemathesis", reason="pip install 'optimlab[test]'")

from hypothesis import HealthCheck, settings  # noqa: E402
from web_support import served  # noqa: E402

from optimlab.web import PAGES, create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must install Debian's chromium ({CHROMIUM}): apt-get install -y chromium")
    pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def url():
    with served(workers=2) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url):
    """A fresh page that records console errors, page errors and any request off this machine."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.problems = []
    tab.on("console", lambda m: m.type == "error" and tab.problems.append(f"console error: {m.text}"))
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))

    def local_only(route):
        if urlparse(route.request.url).hostname != "127.0.0.1":
            tab.problems.append(f"request off this machine: {route.request.url}")
            return route.abort()
        return route.continue_()

    tab.route("**/*", local_only)
    yield tab
    context.close()


def renders(tab) -> int:
    return int(tab.evaluate("Number(document.body.dataset.renders || 0)"))


def wait_for_render(tab, after: int = 0, timeout: float = 60_000) -> None:
    tab.wait_for_function(f"Number(document.body.dataset.renders || 0) > {after}", timeout=timeout)


@pytest.mark.parametrize("name", ["", *PAGES])
def test_every_page_loads_and_draws_without_console_errors(page, url, name):
    page.goto(f"{url}/{name}")
    wait_for_render(page)
    assert page.title().endswith("optimlab playground")
    assert page.locator("#nav a").count() == len(PAGES) + 1
    assert page.problems == []


def path_points(tab, i: int) -> list:
    """The drawn trajectory of the i-th optimizer, read from the plot itself."""
    return tab.evaluate("""i => {
        const t = document.getElementById('paths').data.filter(d => d.mode === 'lines')[i];
        return t.x.map((x, k) => [x, t.y[k]]);
    }""", i)


def test_moving_a_slider_reruns_the_race_and_redraws(page, url):
    page.goto(f"{url}/race?landscape=canyon&opt=sgd&opt=adam&steps=40")
    wait_for_render(page)
    before, drawn = path_points(page, 0), renders(page)
    slider = page.locator(".opt").first.locator("input[data-key=lr]")
    slider.evaluate("s => { s.value = Number(s.value) - 0.5; s.dispatchEvent(new Event('input')); }")
    wait_for_render(page, drawn)
    label = page.locator(".opt-text").first.input_value()
    assert re.fullmatch(r"sgd:lr=0\.00316?\d*", label), label
    after = path_points(page, 0)
    assert after != before and after[0] == before[0]  # same start, another path
    assert "opt=sgd%3Alr%3D0.00316" in page.url  # the URL follows the state
    assert page.problems == []


def test_a_shared_url_restores_the_race(page, url, browser):
    shared = f"{url}/race?landscape=rosenbrock&opt=adam%3Alr%3D0.05&opt=momentum&steps=50&start=-1.5%2C2.5"
    page.goto(shared)
    wait_for_render(page)
    assert page.locator("#landscape").input_value() == "rosenbrock"
    assert [t.input_value() for t in page.locator(".opt-text").all()] == ["adam:lr=0.05", "momentum"]
    drawn = path_points(page, 0)
    assert drawn[0] == [-1.5, 2.5] and len(drawn) == 51
    # the very numbers the API computes for that race
    answer = page.request.post(f"{url}/api/race", data={"landscape": "rosenbrock", "steps": 50,
                                                        "optimizers": ["adam:lr=0.05", "momentum"],
                                                        "start": [-1.5, 2.5]}).json()
    assert drawn == answer["runs"][0]["positions"]
    assert page.problems == []


def test_adding_an_unknown_optimizer_shows_the_server_s_message(page, url):
    page.goto(f"{url}/race?landscape=canyon&opt=sgd&steps=10")
    wait_for_render(page)
    page.fill("#add-text", "adm:lr=0.1")
    page.click("#add")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "optimizers: Value error, unknown optimizer 'adm' (did you mean 'adam'?)" in error.inner_text()
    page.wait_for_function("document.querySelectorAll('.opt-text').length === 1")
    page.fill("#add-text", "adam:lr=0.1")
    drawn = renders(page)
    page.click("#add")
    wait_for_render(page, drawn)
    assert error.is_hidden()
    assert [t.input_value() for t in page.locator(".opt-text").all()] == ["sgd", "adam:lr=0.1"]


def test_clicking_the_contours_moves_the_start(page, url):
    page.goto(f"{url}/race?landscape=canyon&opt=adam&steps=20")
    wait_for_render(page)
    drawn = renders(page)
    box = page.locator("#paths .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3)
    wait_for_render(page, drawn)
    start = path_points(page, 0)[0]
    assert start != [1.0, 1.0] and -1.5 <= start[0] <= 1.5
    assert "start=" in page.url


def test_toggling_break_it_runs_the_ablation_and_plots_it(page, url):
    page.goto(f"{url}/breakit")
    wait_for_render(page)
    drawn = renders(page)
    page.locator("#break-decoupled-decay").check()
    wait_for_render(page, drawn)
    card = page.locator(".card", has=page.locator("#break-decoupled-decay"))
    assert re.search(r"measured → (confirmed|refuted|depends)", card.inner_text())
    curves = page.evaluate("document.getElementById('plot-decoupled-decay').data.length")
    assert curves >= 2
    drawn = renders(page)
    page.locator("#break-decoupled-decay").uncheck()
    wait_for_render(page, drawn)
    assert "intact" in card.inner_text()
    assert page.problems == []


def test_the_preconditioning_sliders_redraw(page, url):
    page.goto(f"{url}/precondition")
    wait_for_render(page)
    before, drawn = path_points(page, 2), renders(page)
    page.locator("#angle").evaluate("s => { s.value = 0; s.dispatchEvent(new Event('input')); }")
    wait_for_render(page, drawn)
    assert path_points(page, 2) != before
    assert page.problems == []


# --- API fuzzing: whatever the schema allows (and some it does not), never a server error ---------------

HEAVY = "/api/(breakit|claims|sweep)$"  # seconds per valid request
# The schema is the app's own (the one /openapi.json serves); the cases go to the live server. Bounded:
# 15 random examples an endpoint, and the coverage phase's boundary cases, except for the heavy endpoints
# (4 random examples, no coverage phase) to keep CI quick.
schema = schemathesis.openapi.from_dict(create_app().openapi(), config=schemathesis.Config.from_dict({
    "generation": {"max-examples": 15, "deterministic": True},
    "operations": [{"include-path-regex": HEAVY, "generation": {"max-examples": 4},
                    "phases": {"coverage": {"enabled": False}}}]}))


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_never_answers_a_server_error(case, url):
    response = case.call(base_url=url, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path} {case.body!r}: {response.text[:300]}"
