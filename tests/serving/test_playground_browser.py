"""The playground at / in a real headless browser (Debian's chromium, driven by selenium
through its chromedriver) against the real server process, as a person would use it:
the page loads and asks for the API key, a generation shows an image, "compare" shows
one image per loaded precision with its latency, and a video job shows its progress
(fed by the job's server-sent events) and then plays inline.

With TRDQ_WRITE_SCREENSHOT=1 the last test writes docs/playground.png (the README's
screenshot); otherwise the screenshot goes to a temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers.serving import free_port
from trdq.tools.loadsuite import local_server

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
KEY = "playground-test-key"
PRECISIONS = ["fp", "w8a8"]
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
    "--window-size=1100,1300",
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver "
               "(apt-get install chromium chromium-driver; .ci/run installs them)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m server` as a user starts it: both zoo models, two precisions, a key."""
    env = {
        "TRDQ_QUANT": ",".join(PRECISIONS), "TRDQ_API_KEY": KEY, "TRDQ_LOG_LEVEL": "warning",
        "TRDQ_CACHE_DIR": str(tmp_path_factory.mktemp("playground-cache")),
        # oneDNN's int8 kernels run the tiny zoo model's small GEMMs 10-20x slower than fp32
        # on the AVX-512 VNNI EPYCs CI runs on; the fp32 GEMM of the same integers gives the
        # same images, and this test is about the page, not the kernel.
        "TRDQ_CPU_INT_MM": "0", "TRDQ_CPU_PREPACK": "0",
    }
    log = tmp_path_factory.mktemp("playground-log") / "server.log"
    with local_server(env, free_port(), log, ready_timeout_s=120) as (base, _):
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout_s: float = 60.0):
    """Poll a JavaScript expression until it is truthy; its value."""
    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return {script};"))
    except TimeoutException:
        status = driver.execute_script("return document.getElementById('status').textContent")
        pytest.fail(f"not reached in {timeout_s} s: {script}; page status: {status!r}")


def set_field(driver, field_id: str, value) -> None:
    driver.execute_script(
        "const field = document.getElementById(arguments[0]);"
        "field.value = arguments[1]; field.dispatchEvent(new Event('change'));",
        field_id, str(value))


def cards(driver) -> list[dict]:
    return driver.execute_script("""
        return [...document.querySelectorAll('#results .result')].map(card => {
          const image = card.querySelector('img');
          return {quant: card.dataset.quant, state: card.dataset.state,
                  width: image.naturalWidth, loaded: image.complete && image.naturalWidth > 0,
                  caption: card.querySelector('figcaption').textContent};
        });""")


def test_the_page_loads_and_asks_for_the_key(server, browser):
    browser.get(f"{server}/")
    assert browser.title == "trdq-server playground"
    wait_for(browser, "document.body.dataset.ready === 'true'")
    status = browser.find_element(By.ID, "status")
    assert "API key" in status.text and "error" in status.get_attribute("class")
    assert not browser.find_element(By.ID, "generate").is_enabled()

    set_field(browser, "api-key", KEY)
    wait_for(browser, "document.getElementById('server-info').textContent.includes('fp, w8a8')")
    options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#quant option")]
    assert options == PRECISIONS
    assert browser.find_element(By.ID, "generate").is_enabled()
    for field, value in (("width", 128), ("height", 128), ("steps", 8), ("seed", 7)):
        set_field(browser, field, value)


def test_a_generation_shows_an_image(server, browser):
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, "document.querySelector('#results .result')?.dataset.state === 'done'")
    [card] = cards(browser)
    assert card["quant"] == "fp" and card["loaded"] and card["width"] == 128
    assert "seed 7" in card["caption"]


def test_compare_shows_one_image_per_precision_with_its_latency(server, browser):
    browser.find_element(By.ID, "compare").click()
    wait_for(browser, "[...document.querySelectorAll('#results .result')]"
                      ".filter(c => c.dataset.state === 'done').length === 2", timeout_s=90)
    shown = cards(browser)
    assert [card["quant"] for card in shown] == PRECISIONS
    for card in shown:
        assert card["loaded"] and card["width"] == 128, card
        assert re.search(r"\d+\.\d\d s \(server \d+\.\d\d s\) · seed 7", card["caption"]), card


def test_a_video_shows_progress_and_plays(server, browser, tmp_path):
    for field, value in (("frames", 8), ("steps", 12)):
        set_field(browser, field, value)
    browser.find_element(By.ID, "video").click()
    wait_for(browser, "!document.getElementById('video-player').hidden", timeout_s=90)
    steps_seen = [int(step) for step in browser.execute_script(
        "return document.getElementById('video-progress').dataset.stepsSeen").split(",")]
    assert steps_seen[-1] == 12 and len(steps_seen) >= 2, steps_seen
    assert steps_seen == sorted(steps_seen), steps_seen
    progress = browser.execute_script(
        "const p = document.getElementById('video-progress'); return [p.value, p.max];")
    assert progress == [12, 12]
    # The MP4 decodes and plays inline: frames available, time moving, no media error.
    wait_for(browser, "document.getElementById('video-player').readyState >= 2")
    wait_for(browser, "document.getElementById('video-player').currentTime > 0", timeout_s=20)
    assert browser.execute_script("return document.getElementById('video-player').error") is None
    assert browser.execute_script(  # the video model's default size
        "return document.getElementById('video-player').videoWidth") == 64

    path = README_SCREENSHOT if os.environ.get("TRDQ_WRITE_SCREENSHOT") == "1" \
        else tmp_path / "playground.png"
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
