"""The page at GET /, in a real headless browser (Debian's chromium driven by Playwright).

The server requires an API key: the page loads without it, says so when an image is sent without it, and
once the key is typed in keeps it in localStorage (never in the address) and sends it as X-API-Key. Uploads a
synthetic defective image, checks the page says "defective" and paints the overlay red, and keeps the
screenshot in out/test-artifacts/ (and the pytest tmp dir).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from asset.predictor import Predictor
from asset.serve import Settings, create_app
from tests import REPO, unavailable
from tests.asset.serve_helpers import LoopbackServer, exported_copy, split_images

KEY = "page-k3y"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def chromium():
    if not Path(CHROMIUM).exists():
        unavailable(f"no chromium at {CHROMIUM}: Debian's chromium is needed (apt-get install -y chromium; .ci/run "
                    "installs it)")


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    model = exported_copy(trained_model, tmp_path_factory.mktemp("page") / "model")
    with LoopbackServer(create_app(Settings(model=str(model), threads=1, api_key=KEY))) as url:
        yield url, model


def test_page_shows_defective_with_red_overlay(server, tiny_dataset, tmp_path):
    from playwright.sync_api import sync_playwright

    url, model = server
    with Predictor(model, threads=1) as predictor:
        candidates = [(sid, data) for sid, truth, data in split_images(tiny_dataset)
                      if truth and predictor.predict_bytes([data])[0].defective]
    assert candidates, "the tiny model found no defect in any defective test image"
    sample_id, data = candidates[0]
    image = tmp_path / "defective.png"
    image.write_bytes(data)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            page.goto(url + "/")
            answered = ("document.getElementById('decision').textContent !== 'analysing…' && "
                        "document.getElementById('decision').textContent !== ''")
            page.set_input_files("#file", str(image))  # no key yet: the server refuses, the page says why
            page.wait_for_function(answered, timeout=30000)
            without_key = page.text_content("#decision")
            page.fill("#apikey", KEY)
            page.dispatch_event("#apikey", "change")
            page.reload()  # the key survives in localStorage, not in the address
            stored = page.evaluate("() => localStorage.getItem('asset.apiKey')")
            prefilled = page.input_value("#apikey")
            page.set_input_files("#file", str(image))
            page.wait_for_function(answered, timeout=30000)
            decision = page.text_content("#decision")
            address = page.url
            overlay_pixels = int(page.get_attribute("#canvas", "data-overlay-pixels"))
            red = page.evaluate("""() => { const c = document.getElementById('canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i+1] < 120 && d[i+2] < 120) n++; return n; }""")
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    artifacts = REPO / "out" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "page-defective.png")
    assert "API key" in without_key, without_key
    assert stored == KEY and prefilled == KEY and KEY not in address
    assert decision == "defective", f"{sample_id}: page says {decision!r}"
    assert overlay_pixels > 0 and red > 0
