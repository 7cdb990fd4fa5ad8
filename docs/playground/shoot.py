"""Screenshots of every playground page, for docs/playground.md (Debian's chromium, 256-colour PNGs).

    PYTHONPATH=src python docs/playground/shoot.py          # writes docs/playground/*.png
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))
from web_support import served

# page -> (address, what to do once it has drawn); then wait until the page has drawn again
SHOTS = {
    "race": ("/race?landscape=canyon&opt=sgd&opt=momentum&opt=adam&steps=100", None),
    "race-rosenbrock": (("/race?landscape=rosenbrock&opt=adam%3Alr%3D0.05&opt=momentum%3Alr%3D0.001"
                         "&opt=nadam%3Alr%3D0.05&steps=600"), None),
    "precondition": ("/precondition", None),
    "breakit": ("/breakit", lambda p: (p.locator("#break-bias-correction").check(),
                                       p.locator("#break-warmup").check())),
    "schedules": ("/schedules", lambda p: (p.select_option("#name", "wsd"),
                                           p.fill("[data-arg=decay_steps]", "200"),
                                           p.fill("[data-arg=warmup_steps]", "50"))),
    "sweep": ("/sweep", None),
    "memory": ("/memory", None),
    "diff": ("/diff", None),
    "claims": ("/claims", lambda p: (p.fill("#filter", "lion"), p.click("#measure-shown"),
                                     p.wait_for_selector("#claims strong"))),
}


def renders(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.renders || 0)"))


def main() -> None:
    with served() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        for name, (path, act) in SHOTS.items():
            page.goto(url + path)
            page.wait_for_function("Number(document.body.dataset.renders || 0) > 0", timeout=120_000)
            if act:
                drawn = renders(page)
                act(page)
                more = 2 if name == "breakit" else 1  # two ablations switched
                page.wait_for_function(f"Number(document.body.dataset.renders || 0) >= {drawn + more}",
                                       timeout=120_000)
            page.wait_for_timeout(400)  # let plotly finish its transitions
            picture = Image.open(io.BytesIO(page.screenshot())).convert("RGB").quantize(256)
            picture.save(HERE / f"{name}.png", optimize=True)
            print(f"{name}.png  {(HERE / f'{name}.png').stat().st_size // 1024} KiB")
        browser.close()


if __name__ == "__main__":
    main()
