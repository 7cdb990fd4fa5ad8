"""The playground's API: the same numbers as the library, bounded work, and refusals that name the field."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the playground needs the web extra: pip install 'optimlab[web]'")
pytest.importorskip("pebble", reason="the playground needs the web extra: pip install 'optimlab[web]'")

from fastapi.testclient import TestClient

from optimlab.web import PAGES, create_app
from optimlab.web.pool import Failed, Pool

STATIC = Path(__file__).resolve().parents[1] / "src" / "optimlab" / "web" / "static"


@pytest.fixture(scope="module")
def client():
    # one worker and one place in the queue: the cap tests below reach it with three requests
    with TestClient(create_app(workers=1, queue=1)) as c:
        yield c


@pytest.fixture
def pool(client) -> Pool:
    """The app's own pool (starting worker processes takes seconds: the tests share one)."""
    return client.app.state.pool


def refusal(response, field: str) -> str:
    """The message of a 422 whose location names `field`."""
    assert response.status_code == 422, response.text
    found = [d for d in response.json()["detail"] if field in d["loc"]]
    assert found, f"no error located at {field!r}: {response.json()}"
    return found[0]["msg"]


def test_race_answers_the_numbers_optimlab_race_computes(client):
    from optimlab.lab.races import race

    body = {"landscape": "canyon", "optimizers": ["sgd", "momentum", "adam"], "steps": 100}
    answer = client.post("/api/race", json=body).json()
    expected = race("canyon", ["sgd", "momentum", "adam"], steps=100)
    assert [r["optimizer"] for r in answer["runs"]] == ["sgd", "momentum", "adam"]
    for got, want, row in zip(answer["runs"], expected.runs, expected.table()):
        assert got["settings"] == want.settings
        assert got["positions"] == want.positions.tolist()
        assert got["losses"] == want.losses.tolist()
        assert got["final_position"] == row["final_position"] and got["final_loss"] == row["final_loss"]
    # the lesson's hand-computed bounce: SGD at α = 0.01 flips x every step, y shrinks by 2 %
    assert answer["runs"][0]["positions"][:3] == [[1.0, 1.0], [-1.0, 0.98], [1.0, 0.9604]]
    assert answer["runs"][0]["hyper"] == {"lr": 0.01}


def test_a_one_dimensional_landscape_and_a_chosen_start(client):
    answer = client.post("/api/race", json={"landscape": "reddi", "optimizers": ["adam", "amsgrad"],
                                            "steps": 300, "start": [0.5]}).json()
    assert answer["dim"] == 1 and answer["start"] == [0.5]
    assert all(len(r["positions"]) == 301 and r["positions"][0] == [0.5] for r in answer["runs"])


@pytest.mark.parametrize("body, field, words", [
    ({"landscape": "canyn"}, "landscape", "did you mean 'canyon'"),
    ({"optimizers": ["adm"]}, "optimizers", "did you mean 'adam'"),
    ({"optimizers": ["adam:lr=-1"]}, "optimizers", "lr"),
    ({"optimizers": ["adam:betaz=(0.9,0.9)"]}, "optimizers", "betaz"),
    ({"optimizers": ["sgd"] * 7}, "optimizers", "at most 6"),
    ({"optimizers": ["sgd,adam,lion,lamb,nadam,radam,rmsprop"]}, "optimizers", "at most 6"),
    ({"steps": 100_000}, "steps", "less than or equal to 2000"),
    ({"steps": 0}, "steps", "greater than or equal to 1"),
    ({"landscape": "reddi", "start": [0.1, 0.2]}, "start", "1-D"),
    ({"start": [1e300, 0]}, "start", "finite"),
    ({"optimizers": "sgd"}, "optimizers", "list"),
    ({"optimizers": ["sgd"], "steps": 10, "learning_rate": 1}, "learning_rate", "Extra"),
])
def test_invalid_race_input_is_a_422_naming_the_field(client, body, field, words):
    assert words.lower() in refusal(client.post("/api/race", json=body), field).lower()


def test_other_endpoints_refuse_naming_the_field(client):
    assert "did you mean" in refusal(client.post("/api/diff", json={"a": "adamm"}), "a")
    assert "total_steps" in refusal(client.post("/api/schedule", json={"name": "cosine", "args": {}}), "args")
    assert "at most 2400" in refusal(client.post("/api/sweep", json={"lrs": "1e-4:1:8", "steps": 300,
                                                                       "seeds": 2}), "seeds")
    refusal(client.post("/api/claims", json={"ids": ["lion-half-state"] * 9}), "ids")
    assert "sets lr" in refusal(client.post("/api/sweep", json={"optimizers": ["adam:lr=0.1"]}), "optimizers")
    refusal(client.post("/api/breakit", json={"name": "everything"}), "name")
    refusal(client.post("/api/claims", json={"ids": ["no-such-claim"]}), "ids")
    refusal(client.post("/api/memory", json={"precision": "fp8"}), "precision")
    assert client.post("/api/race", content=b"{not json").status_code == 422


def test_memory_schedule_and_diff_are_the_library_s(client):
    from optimlab import schedules
    from optimlab.memory import plan
    from optimlab.source import diff

    answer = client.post("/api/memory", json={"params": 13e9, "optimizer": "adamw", "precision": "bf16-mixed",
                                              "zero": 2, "ranks": 8}).json()
    assert answer["plan"]["total_bytes"] == plan(13e9, "adamw", "bf16-mixed", zero=2, ranks=8).total_bytes
    assert answer["stages"][0]["total_bytes"] == plan(13e9, "adamw", "bf16-mixed").total_bytes
    curve = client.post("/api/schedule", json={"name": "wsd", "args": {"total_steps": 100, "warmup_steps": 10,
                                                                        "decay_steps": 20}, "lr": 0.1}).json()
    wsd = schedules.wsd(total_steps=100, warmup_steps=10, decay_steps=20)
    assert curve["t"] == list(range(101)) and curve["values"] == [wsd(t) for t in range(101)]
    assert curve["lr"] == [0.1 * wsd(t) for t in range(101)]
    assert client.post("/api/diff", json={"a": "adam", "b": "adamw"}).json()["diff"] == diff("adam", "adamw")


def test_break_it_runs_the_real_ablation_at_reduced_size(client):
    from optimlab.lab import ablations

    answer = client.post("/api/breakit", json={"name": "decoupled-decay"}).json()
    (expected,) = ablations.breakit(["decoupled-decay"], quick=True, seeds=1)
    assert answer["value"] == expected.value and answer["verdict"] == expected.verdict
    assert answer["panel"]["curves"].keys() == expected.panel.curves.keys()
    assert not re.search(r"\b00\d\b", answer["claim"]), "lessons are named by topic, not file number"


def test_meta_lists_what_is_registered(client):
    import optimlab
    from optimlab import landscapes

    m = client.get("/api/meta").json()
    assert [L["name"] for L in m["landscapes"]] == landscapes.available()
    assert {o["name"] for o in m["optimizers"]} == {*optimlab.available(), *optimlab.presets}
    from optimlab.lab import ablations

    assert len(m["ablations"]) == len(ablations.names()) and m["limits"]["optimizers"] == 6
    shown = [a["claim"] for a in m["ablations"]] + [c["claim"] + c["experiment"] for c in m["claims"]]
    assert not [t for t in shown if re.search(r"\b00\d\b", t)], "lessons are named by topic, not file number"


def test_lesson_numbers_go_but_other_numbers_stay():
    from optimlab.web.compute import no_lesson_numbers

    assert no_lesson_numbers("'slower initial progress' (seed 000)") == "'slower initial progress'"
    said = no_lesson_numbers("'adapts' (000, 001); also seed 003's table")
    assert said == "'adapts'; also the lesson's table"
    assert no_lesson_numbers("a 256→512 MLP (512 units)") == "a 256→512 MLP (512 units)"


def test_every_page_and_script_is_served_from_the_package(client):
    for page in ["", *PAGES]:
        html = client.get("/" + page)
        assert html.status_code == 200 and "<nav" in html.text
        for ref in re.findall(r'(?:src|href)="([^"]+)"', html.text):
            assert ref.startswith(("/", "data:")), f"{page}: {ref} is not served by the playground"
            if ref.startswith("/static"):
                assert client.get(ref).status_code == 200, ref
    assert client.get("/static/vendor/plotly.min.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/no-such-page").status_code == 404
    assert client.get("/docs").status_code == 404  # FastAPI's explorer would load scripts from a CDN
    for script in STATIC.glob("*.js"):  # no CDN, no fetch of anything but our own API
        assert "http" not in script.read_text(), script.name


def test_repeated_requests_come_from_the_cache_and_simultaneous_ones_share_a_computation(pool):
    body = {"landscape": "canyon", "optimizers": ["adam"], "steps": 5}
    first = asyncio.run(pool.run("race", body))
    assert asyncio.run(pool.run("race", dict(reversed(body.items())))) is first

    async def four_at_once():  # one worker and one place in the queue, but one computation: none refused
        same = {"landscape": "rosenbrock", "optimizers": ["adam"], "steps": 300}
        return await asyncio.gather(*(pool.run("race", same) for _ in range(4)))

    answers = asyncio.run(four_at_once())
    assert all(a is answers[0] for a in answers)


def test_races_waiting_together_are_one_computation_with_each_ones_own_answer():
    from optimlab.web import compute

    pool = Pool(workers=1, queue=4)  # not warmed: the first computation waits for the worker to start
    try:
        long = {"landscape": "rosenbrock", "optimizers": ["adam"], "steps": 1500}
        clicks = [{"landscape": "canyon", "optimizers": ["sgd", "lamb", "adam"], "steps": 40,
                   "start": [x, 0.5]} for x in (0.3, -0.7, 1.2)]

        async def together():  # the long race takes the worker; the three clicks wait for it side by side
            return await asyncio.gather(*(pool.run("race", r) for r in [long, *clicks]))

        answers = asyncio.run(together())
        assert pool.computations == 2  # the long race, then the three clicks at once
        for request, answer in zip([long, *clicks], answers):
            assert answer == compute.race(request)  # each its own race, as if computed alone
        assert [a["runs"][0]["positions"][0] for a in answers[1:]] == [[0.3, 0.5], [-0.7, 0.5], [1.2, 0.5]]
    finally:
        pool.close()


def test_beyond_the_cap_a_request_is_turned_away_at_once(client):
    from concurrent.futures import ThreadPoolExecutor

    def race(i):  # distinct starts: no answer from the cache
        body = {"landscape": "rosenbrock", "optimizers": ["adam"], "steps": 400, "start": [-2.0, 2.0 + i]}
        return client.post("/api/race", json=body)

    with ThreadPoolExecutor(3) as threads:  # one worker, one waiting: the third is refused
        answers = list(threads.map(race, range(3)))
    assert sorted(a.status_code for a in answers) == [200, 200, 429]
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.headers["retry-after"] == "1" and "try again" in busy.json()["detail"][0]["msg"]


def test_past_its_time_limit_a_computation_is_stopped_and_the_pool_goes_on(client, pool):
    pool.time_scale = 1e-4  # every limit a fraction of a millisecond
    try:
        body = {"landscape": "rosenbrock", "optimizers": ["adam"], "steps": 1999}
        answer = client.post("/api/race", json=body)
        assert "ran past its limit" in refusal(answer, "body")
    finally:
        pool.time_scale = 1.0
    # a fresh worker replaced the killed one: the pool goes on
    answer = client.post("/api/race", json={"landscape": "canyon", "optimizers": ["sgd"], "steps": 3}).json()
    assert answer["runs"][0]["positions"][1] == [-1.0, 0.98]


def test_serve_is_a_verb():
    from optimlab.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "8123"])
    assert (args.host, args.port, args.open) == ("127.0.0.1", 8123, False)


def test_a_race_naming_no_optimizer_is_the_librarys_refusal_not_a_hang():
    pool = Pool(workers=1, queue=1)  # the pool itself, below the request model (which refuses it first)
    try:
        with pytest.raises(Failed, match="no optimizers to race"):
            asyncio.run(pool.run("race", {"landscape": "canyon", "optimizers": [], "steps": 5}))
    finally:
        pool.close()
