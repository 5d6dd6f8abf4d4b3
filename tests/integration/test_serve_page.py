"""The drawing page in a real browser: Debian's Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rotmnist.config import ServeConfig
from rotmnist.serving.app import create_app
from rotmnist.serving.auth import Access
from rotmnist.serving.model_source import Keeper, ModelSource
from rotmnist.storage.request_log import RequestLog
from tests.support.serving import STROKES, champion_store, drawing, ellipse_points, serving
from tests.support.tools import require

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module", autouse=True)
def chromium_installed():
    require(CHROMIUM.exists(), "Chromium", "chromium")


TOKEN = "page-token-7"


@pytest.fixture(scope="module")
def keeper(tmp_path_factory, empty_store):
    with champion_store(tmp_path_factory.mktemp("page-store"), empty_store, "digits"):
        source = ModelSource("digits")
        yield Keeper(source, source.load_initial())


@pytest.fixture(scope="module")
def url(keeper):
    with serving(create_app(keeper, ServeConfig(poll_seconds=0))) as base:
        yield base


@pytest.fixture(scope="module")
def protected_url(keeper):
    """A server whose scoring needs the token."""
    settings = ServeConfig(poll_seconds=0, require_token_for_scoring=True)
    access = Access.decide(settings, TOKEN, "127.0.0.1")
    with serving(create_app(keeper, settings, access)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def draw(page, lines: list[list[tuple[int, int]]]) -> None:
    """Mouse strokes through the points of `lines` (coordinates of the 280 px pad, scaled to its size on screen)."""
    box = page.locator("#pad").bounding_box()
    sx, sy = box["width"] / 280, box["height"] / 280
    for line in lines:
        page.mouse.move(box["x"] + line[0][0] * sx, box["y"] + line[0][1] * sy)
        page.mouse.down()
        for x, y in line[1:]:
            page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=8)
        page.mouse.up()


@pytest.mark.parametrize("width", [1024, 390])  # a desktop window and a phone
def test_a_digit_drawn_with_the_mouse_is_predicted(browser, url, width):
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.goto(url)
    page.wait_for_function("document.getElementById('model').textContent.includes('version 1')")
    for digit, lines in [(1, STROKES[1]), (0, [ellipse_points()]), (7, STROKES[7])]:
        page.click("#clear")
        draw(page, lines)
        page.click("#predict")
        page.wait_for_function(f"document.getElementById('digit').textContent === '{digit}'", timeout=10_000)
        assert page.locator("#bars .bar").count() == 10
        assert page.locator("#bars .bar.best").count() == 1
        assert page.inner_text("#probability").endswith("%")
    assert page.inner_text("#model") == "model: digits version 1"
    assert page.inner_text("#error") == ""
    page.close()


def test_an_uploaded_png_is_predicted_and_predict_on_an_empty_pad_asks_for_a_drawing(browser, url, tmp_path):
    page = browser.new_page()
    page.goto(url)
    page.click("#predict")
    assert page.inner_text("#error") == "Draw a digit first."
    drawing(4).resize((120, 160)).save(tmp_path / "four.png")
    page.set_input_files("#upload", str(tmp_path / "four.png"))
    page.wait_for_function("document.getElementById('digit').textContent === '4'", timeout=10_000)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    page.set_input_files("#upload", str(tmp_path / "bad.png"))
    page.wait_for_function("document.getElementById('error').textContent.includes('Could not score')")
    assert "not an image that can be decoded" in page.inner_text("#error")
    page.close()


def test_with_scoring_protected_the_page_asks_for_the_token_once_and_keeps_it_for_the_tab(browser, protected_url):
    context = browser.new_context()
    page = context.new_page()
    asked: list[str] = []
    answers = iter(["wrong", TOKEN])

    def answer(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept(next(answers))

    page.on("dialog", answer)
    page.goto(protected_url)
    draw(page, STROKES[1])
    page.click("#predict")  # asked, given a wrong token: refused, and forgotten
    page.wait_for_function("document.getElementById('error').textContent.includes('Could not score')")
    assert "needs the server's token" in page.inner_text("#error") and TOKEN not in page.content()
    for _ in range(3):  # asked once more, then never again in this tab
        page.click("#predict")
        page.wait_for_function("document.getElementById('digit').textContent === '1'", timeout=10_000)
        page.evaluate("document.getElementById('digit').textContent = ''")
    assert len(asked) == 2 and "token" in asked[0]
    assert page.evaluate("sessionStorage.getItem('rotmnist-token')") == TOKEN
    second = context.new_page()  # a new tab asks for itself
    second.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    second.goto(protected_url)
    draw(second, STROKES[1])
    second.click("#predict")
    second.wait_for_function("document.getElementById('error').textContent.includes('Could not score')")
    assert len(asked) == 3
    context.close()


# ---- corrections: "Wrong? It was:" ---------------------------------------------------------------


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    return RequestLog.open(f"sqlite:///{tmp_path_factory.mktemp('page-log') / 'requests.db'}")


@pytest.fixture(scope="module")
def logged_url(keeper, log):
    """A server that records what it scores, its scoring protected by the token."""
    settings = ServeConfig(poll_seconds=0, require_token_for_scoring=True)
    access = Access.decide(settings, TOKEN, "127.0.0.1")
    with serving(create_app(keeper, settings, access, log)) as base:
        yield base


def predict(page, lines: list[list[tuple[int, int]]], digit: int) -> None:
    page.click("#clear")
    draw(page, lines)
    page.click("#predict")
    page.wait_for_function(f"document.getElementById('digit').textContent === '{digit}'", timeout=10_000)


def test_after_a_prediction_the_page_stores_a_correction_with_the_tabs_token(browser, logged_url, log):
    page = browser.new_page()
    asked: list[str] = []
    page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept(TOKEN)))
    page.goto(logged_url)
    assert page.locator("#feedback").is_hidden()
    predict(page, STROKES[1], 1)
    assert page.locator("#feedback").is_visible() and page.inner_text("#feedback").startswith("Wrong? It was:")
    assert page.locator("#feedback button").all_inner_texts() == [str(d) for d in range(10)]
    page.click("#feedback button[data-label='7']")
    page.wait_for_function("document.getElementById('stored').textContent === 'Stored: it was a 7'")
    assert page.locator("#feedback button:disabled").count() == 10 and len(asked) == 1  # the token, asked once
    assert log.flush()
    corrected = log.store.corrected()
    assert corrected.sources == ["page"] and corrected.routes == ["/score"]
    assert corrected.digits.tolist() == [1] and corrected.labels.tolist() == [7]
    page.evaluate("document.querySelectorAll('#feedback button').forEach(b => { b.disabled = false; })")
    page.click("#feedback button[data-label='1']")  # the same prediction again: refused, and said so
    page.wait_for_function("document.getElementById('stored').textContent.startsWith('Could not store')")
    assert "corrected before (as 7)" in page.inner_text("#stored")
    predict(page, STROKES[7], 7)  # a new prediction: the buttons again, nothing stored yet
    assert page.inner_text("#stored") == "" and page.locator("#feedback button:disabled").count() == 0
    page.click("#clear")
    assert page.locator("#feedback").is_hidden() and len(asked) == 1
    page.close()


def test_a_server_that_records_nothing_offers_no_correction(browser, url):
    page = browser.new_page()
    page.goto(url)
    predict(page, STROKES[1], 1)
    assert page.locator("#feedback").is_hidden()
    page.close()
