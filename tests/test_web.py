"""The web page in a real headless Chromium over a real server (uvicorn) and a real index.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and ``selenium``; skipped otherwise.
Selenium never downloads a browser or driver here: both paths are given explicitly.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "headless Chromium not installed (apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
uvicorn = pytest.importorskip("uvicorn")

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from test_api import open_pipeline  # noqa: E402

from api.app import create_app  # noqa: E402

SCREENSHOT_DIR = Path(tempfile.gettempdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("web")
    pipeline, settings, media = open_pipeline(root)
    port = _free_port()
    config = uvicorn.Config(
        create_app(pipeline, settings=settings), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/", "media": media, "root": root}
    srv.should_exit = True
    thread.join(10)
    pipeline.close()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(drv: Any, condition: Callable[[Any], Any], what: str, timeout: float = 30) -> Any:
    def safe(d: Any) -> Any:
        try:
            return condition(d)
        except StaleElementReferenceException:
            return False

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.1).until(safe)
    except TimeoutException:
        status = drv.find_element(By.ID, "status").text
        error = drv.find_element(By.ID, "error").text
        pytest.fail(f"timed out waiting for {what} (status={status!r}, error={error!r})")


def card_ids(drv: Any) -> list[str]:
    return [c.get_attribute("data-id") for c in drv.find_elements(By.CSS_SELECTOR, "#grid .card")]


def status_text(drv: Any) -> str:
    return drv.find_element(By.ID, "status").text


def open_page(drv: Any, url: str) -> None:
    drv.get(url)
    wait_for(drv, lambda d: "result" in status_text(d) and card_ids(d), "the first (browse) results")


def search_text(drv: Any, text: str) -> None:
    box = drv.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text, Keys.ENTER)
    wait_for(drv, lambda d: f"“{text}”" in status_text(d), f"results for {text!r}")


def test_text_search_shows_cards_with_images(server: dict[str, Any], driver: Any) -> None:
    open_page(driver, server["url"])
    search_text(driver, "black hoodie")
    assert card_ids(driver)[0] == "hoodie-black"
    first = driver.find_element(By.CSS_SELECTOR, "#grid .card")
    assert "Black Cotton Hoodie" in first.text and "NORTHWIND" in first.text and "$49.00" in first.text
    assert status_text(driver).split()[1].startswith("result") and " ms" in status_text(driver)
    # the first row's photos really load (lazy loading fetches what is on screen)
    wait_for(
        driver,
        lambda d: d.execute_script(
            "const imgs = Array.from(document.querySelectorAll('#grid .card img')).slice(0, 3);"
            "return imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth > 0);"
        ),
        "the result photos to load",
    )
    assert driver.find_element(By.CSS_SELECTOR, "#grid .card img").get_attribute("loading") == "lazy"
    driver.save_screenshot(str(SCREENSHOT_DIR / "shopsearch_text_search.png"))


def test_misspelled_query_shows_the_correction_and_can_be_searched_as_typed(
    server: dict[str, Any], driver: Any
) -> None:
    open_page(driver, server["url"])
    search_text(driver, "black hoddie")
    wait_for(driver, lambda d: "showing results for black hoodie" in status_text(d), "the correction line")
    assert card_ids(driver)[0] == "hoodie-black"
    driver.find_element(By.CSS_SELECTOR, "#status a.search-exact").click()
    wait_for(driver, lambda d: "showing results for" not in status_text(d), "the query searched as typed")
    assert "“black hoddie”" in status_text(driver)
    search_text(driver, "grey hodie")  # a new query is corrected again
    wait_for(driver, lambda d: "showing results for grey hoodie" in status_text(d), "the next correction")
    # a common word the catalog lacks is searched as typed, and the catalog's word is offered
    search_text(driver, "woman")
    wait_for(driver, lambda d: "did you mean women?" in status_text(d), "the suggestion")
    assert "showing results for" not in status_text(driver)
    driver.find_element(By.CSS_SELECTOR, "#status a.search-suggestion").click()
    wait_for(driver, lambda d: "“women”" in status_text(d), "the suggestion searched")
    assert driver.find_element(By.ID, "q").get_attribute("value") == "women"
    assert "did you mean" not in status_text(driver)


def test_facet_click_filters_results(server: dict[str, Any], driver: Any) -> None:
    open_page(driver, server["url"])
    search_text(driver, "black")
    before = card_ids(driver)
    brand_buttons = driver.find_elements(By.CSS_SELECTOR, "#facet-brand .facet-btn")
    luma = next(b for b in brand_buttons if b.find_element(By.CSS_SELECTOR, ".name").text == "Luma")
    luma.click()
    wait_for(driver, lambda d: card_ids(d) != before and card_ids(d), "filtered results")
    brands = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#grid .card .card-brand")]
    assert brands and set(brands) == {"LUMA"}  # shown upper-case by CSS
    pressed = driver.find_element(By.CSS_SELECTOR, "#facet-brand .facet-btn[aria-pressed='true']")
    assert "Luma" in pressed.text
    assert "Luma" in driver.find_element(By.ID, "active-filters").text
    # a category facet narrows further; clicking the pill removes it again
    cats = driver.find_elements(By.CSS_SELECTOR, "#facet-category .facet-btn")
    women = next(b for b in cats if b.find_element(By.CSS_SELECTOR, ".name").text == "Women")
    women.click()
    wait_for(driver, lambda d: card_ids(d) == ["tee-black"], "Luma + Women results")
    driver.find_element(By.CSS_SELECTOR, "#active-filters .pill").click()  # the category pill comes first
    wait_for(driver, lambda d: len(card_ids(d)) > 1, "the category filter to be removed")


def test_show_scores_toggle(server: dict[str, Any], driver: Any) -> None:
    open_page(driver, server["url"])
    search_text(driver, "black hoodie")
    assert not driver.find_elements(By.CSS_SELECTOR, ".scores")
    driver.find_element(By.CSS_SELECTOR, "label.toggle").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card .scores"), "per-source scores")
    scores = driver.find_element(By.CSS_SELECTOR, "#grid .card .scores").text
    assert "BM25" in scores and "Text vector" in scores and "Fused" in scores and "#1" in scores
    driver.save_screenshot(str(SCREENSHOT_DIR / "shopsearch_scores.png"))
    driver.find_element(By.CSS_SELECTOR, "label.toggle").click()
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, ".scores"), "scores to be hidden")


def test_photo_upload_searches_by_image(server: dict[str, Any], driver: Any) -> None:
    open_page(driver, server["url"])
    photo = next((server["media"] / "images").glob("dress-red.*"))
    driver.find_element(By.ID, "photo").send_keys(str(photo))
    wait_for(driver, lambda d: "for photo" in status_text(d), "photo results")
    assert card_ids(driver)[0] == "dress-red"
    assert driver.find_element(By.ID, "photo-chip").is_displayed()
    driver.save_screenshot(str(SCREENSHOT_DIR / "shopsearch_photo.png"))
    driver.find_element(By.ID, "photo-clear").click()
    wait_for(driver, lambda d: "all products" in status_text(d), "the photo to be removed")


def test_text_file_upload_shows_the_error(server: dict[str, Any], driver: Any) -> None:
    open_page(driver, server["url"])
    notes = server["root"] / "notes.txt"
    notes.write_text("this is not a photo\n" * 10, encoding="utf-8")
    driver.find_element(By.ID, "photo").send_keys(str(notes))
    error = wait_for(
        driver,
        lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed() else None,
        "the error message",
    )
    assert "415" in error.text and "not an image" in error.text
    assert error.get_attribute("role") == "alert"
    driver.save_screenshot(str(SCREENSHOT_DIR / "shopsearch_error.png"))


def test_pagination_next_and_previous(server: dict[str, Any], driver: Any) -> None:
    open_page(driver, server["url"] + "?k=5")
    page1 = card_ids(driver)
    assert len(page1) == 5 and "Page 1 of" in driver.find_element(By.ID, "page-info").text
    driver.find_element(By.ID, "next").click()
    wait_for(driver, lambda d: "Page 2 of" in d.find_element(By.ID, "page-info").text, "page 2")
    page2 = card_ids(driver)
    assert page2 and not set(page1) & set(page2)
    assert "showing 6–" in status_text(driver)
    driver.find_element(By.ID, "prev").click()
    wait_for(driver, lambda d: card_ids(d) == page1, "page 1 again")


def test_real_socket_limits_and_concurrency(server: dict[str, Any]) -> None:
    """Over a real TCP connection: oversized bodies are refused (Content-Length and chunked) as
    JSON 413 while the client is still sending, and parallel clients are all served."""
    base = server["url"].rstrip("/")
    big = b"\xff\xd8\xff" + b"\0" * (11 * 1024 * 1024)
    r = httpx.post(base + "/search/image", files={"image": ("big.jpg", big, "image/jpeg")}, timeout=30)
    assert r.status_code == 413 and "limit is 10,485,760 bytes" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:
        for _ in range(200):
            yield b"\0" * 65536

    r = httpx.post(
        base + "/search", content=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and r.json()["error"]["type"] == "PayloadTooLarge"
    with httpx.Client(base_url=base, timeout=30) as c, concurrent.futures.ThreadPoolExecutor(8) as pool:
        queries = ["hoodie", "red dress", "watch", "shoes"] * 8
        responses = list(pool.map(lambda q: c.post("/search", json={"query": q, "k": 3}), queries))
    assert [r.status_code for r in responses] == [200] * len(queries)
    assert responses[1].json()["results"][0]["id"] == "dress-red"
