"""The browser app in a real headless Chromium, against the real server started by ``./run.sh``.

``./run.sh`` is the README's local command: it serves 127.0.0.1 in local mode, so the
person at the browser calibrates and reviews without signing in (docs/security.md).

Debian's ``chromium`` and ``chromium-driver`` are used (``scripts/install-browser.sh``
installs them); Selenium drives ``/usr/bin/chromedriver`` given explicitly, with
``SE_OFFLINE=true`` so that selenium-manager never downloads anything.  The
server runs on a free port of 127.0.0.1 with its own data folder and database, where a
saved thresholds version makes smile.jpg "needs review" (so its preview is blurred).

``SAVE_SCREENSHOTS=1`` also writes ``docs/classify.png`` (a full results view).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.helpers.appprocess import free_port, http_status
from tests.helpers.browser import chromium
from tests.helpers.paths import COMPILED_DIR, REFERENCE, ROOT
from tests.helpers.servers import image, serve

SCREENSHOT = ROOT / "docs" / "classify.png"
CALIBRATE_SCREENSHOT = ROOT / "docs" / "calibrate.png"
SERVER_START_S = 60  # Streamlit + TensorFlow import and the model load take ~10 s
RUN_SH_START_S = 240  # ./run.sh first checks the virtualenv against requirements.txt (pip, once per checkout)
RESULT_S = 60
SAFE_THRESHOLD = 0.97  # smile.jpg's safe score is ~0.962 with MobileNetV2Mid: needs review
SCORES = re.compile(r"drawings ([0-9.]+) · hentai ([0-9.]+) · neutral ([0-9.]+) · porn ([0-9.]+) · sexy ([0-9.]+)")
CLASSES = ("drawings", "hentai", "neutral", "porn", "sexy")
TOLERANCE = 5e-5 + 1e-4  # shown with 4 decimals; the model may differ in the last float bits

pytestmark = pytest.mark.timeout(600)  # a cap: the first test may install chromium


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images() -> Iterator[Any]:
    with serve() as server:
        for path in REFERENCE.glob("*.jpg"):
            server.route(f"/{path.name}", image(path.read_bytes(), "image/jpeg"))
        yield server


@pytest.fixture(scope="module")
def expected() -> dict[str, dict[str, float]]:
    from nsfw_core.base.settings import load_settings
    from nsfw_core.inference.pipeline import Decoder
    from tests.helpers.models import model_named

    model = model_named("MobileNetV2Mid")
    decoder = Decoder(load_settings().decode_limits)
    try:
        return {name: model.classify([decoder.decode_for(model, (REFERENCE / name).read_bytes())])[0]
                for name in ("glasses.jpg", "house.jpg", "smile.jpg")}
    finally:
        decoder.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder: Path = tmp_path_factory.mktemp("data")
    return folder


@pytest.fixture(scope="module")
def server(images, data_dir) -> Iterator[str]:
    """``./run.sh`` on a free port (NSFW_HOST unset: local mode); yields its base URL."""
    from nsfw_core.base.settings import load_settings
    from nsfw_core.base.verdict import Thresholds
    from nsfw_core.state.review import ReviewQueue
    from nsfw_core.state.thresholds import ThresholdHistory

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSFW_", "STREAMLIT_"))}
    env.update(PORT=str(port), NSFW_DATA_DIR=str(data_dir), NSFW_COMPILED_DIR=COMPILED_DIR,
               NSFW_ALLOW_PRIVATE_HOSTS=images.netloc, PYTHONUNBUFFERED="1")
    settings = load_settings(env)
    history = ThresholdHistory.from_settings(settings)  # the database the server will use
    history.save(Thresholds(adult=settings.adult_threshold, safe=SAFE_THRESHOLD), model="MobileNetV2Mid")
    history.close()
    queue = ReviewQueue.from_config(settings.review_config)
    queue.enqueue("e" * 64, "upload:waiting.jpg", dict.fromkeys(CLASSES, 0.2), "MobileNetV2Mid", "unknown")
    queue.close()

    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(["bash", "run.sh"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + RUN_SH_START_S
        while http_status(base + "/_stcore/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start (exit {proc.poll()}):\n{log_path.read_text()[-4000:]}")
            time.sleep(0.25)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


# ---------------------------------------------------------------- page helpers


def _wait(driver, condition, timeout: float = RESULT_S, message: str = ""):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(condition, message)


def _css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _open(driver, base: str) -> None:
    """A fresh session of the page (new session state)."""
    driver.set_window_size(1400, 1000)
    driver.get(base + "/")
    _wait(driver, lambda d: _css(d, ".st-key-urls textarea") and _css(d, ".st-key-classify button"),
          SERVER_START_S, "the classify form did not appear")


def _classify(driver, expected_results: int) -> None:
    _css(driver, ".st-key-classify button")[0].click()
    # The summary's download buttons come after every result; the expander is the page's last element.
    _wait(driver, lambda d: len(_results(d)) == expected_results and _css(d, ".st-key-download_json")
          and _css(d, '[data-testid="stExpander"]') and not _css(d, '[data-testid="stProgress"]'),
          message="no results")


def _classify_upload(driver, expected_results: int) -> None:
    """Submit the form once the upload has reached the server.

    The file chip shows before the upload request has finished; a submit in
    that instant sees no file and the page says so. Submit again then (at
    most three times); any other outcome is a failure.
    """
    empty = "Enter at least one image URL or add an image first."
    for _ in range(3):
        # Streamlit disables a form's submit button while an upload in the form is in
        # flight; a click then does nothing at all (CI under load clicked it so).
        _wait(driver, lambda d: _css(d, ".st-key-classify button")[0].is_enabled(), 30,
              "the Classify button stayed disabled (the upload never finished)")
        _css(driver, ".st-key-classify button")[0].click()
        _wait(driver, lambda d: (len(_results(d)) == expected_results and _css(d, ".st-key-download_json")
                                 and not _css(d, '[data-testid="stProgress"]')) or empty in d.page_source,
              message="no results")
        if empty not in driver.page_source:
            return
        time.sleep(1.0)
    pytest.fail("the upload never reached the server")


def _results(driver) -> list[Any]:
    """The heading of each result ("1. glasses.jpg")."""
    return [el for el in _css(driver, '[data-testid="stMarkdownContainer"]') if re.match(r"\d+\. \S", el.text)]


def _shown_scores(driver) -> list[dict[str, float]]:
    out = []
    for el in _css(driver, '[data-testid="stCaptionContainer"]'):
        found = SCORES.search(el.text)
        if found:
            out.append({c: float(v) for c, v in zip(CLASSES, found.groups(), strict=True)})
    return out


def _verdicts(driver) -> list[str]:
    return [el.text for el in _css(driver, '[data-testid="stMarkdownContainer"]') if "adult score" in el.text]


def _assert_scores(shown: dict[str, float], expected: dict[str, float]) -> None:
    for name in CLASSES:
        assert shown[name] == pytest.approx(expected[name], abs=TOLERANCE), (name, shown, expected)


def _save_screenshot(driver, path: Path = SCREENSHOT) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the window to fit it."""
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
        "return Math.max(m.scrollHeight, document.body.scrollHeight);")
    driver.set_window_size(1400, min(int(height) + 160, 6000))
    time.sleep(1.0)  # let the charts re-layout to the new size
    path.parent.mkdir(exist_ok=True)
    driver.save_screenshot(str(path))


# ---------------------------------------------------------------- tests


def test_a_page_opened_first_on_a_fresh_server_has_the_apps_navigation(driver, server):
    """Runs first in this module, so /calibrate is the server's very first session.

    Streamlit treats a folder named pages/ as old-style multipage pages until a
    script calls st.navigation; app.py turns that off, or this session would
    run pages/calibrate.py alone with the files of pages/ listed as its pages.
    """
    driver.get(server + "/calibrate")
    _wait(driver, lambda d: any(h.text == "Calibrate thresholds" for h in _css(d, "h1")), SERVER_START_S,
          "the calibrate page did not appear")
    nav = _wait(driver, lambda d: [a.text for a in _css(d, '[data-testid="stSidebarNav"] a')], 20, "no navigation")
    assert [item.splitlines()[-1] for item in nav] == ["Classify", "Calibrate thresholds", "Review queue",
                                                       "Review grid", "Evaluate production", "Hash lists"], nav


def test_upload_is_classified_in_the_browser(driver, server, expected):
    _open(driver, server)
    upload = _wait(driver, lambda d: _css(d, '.st-key-uploads input[type="file"]'), 20, "no file input")[0]
    upload.send_keys(str(REFERENCE / "glasses.jpg"))
    _wait(driver, lambda d: "glasses.jpg" in _css(d, ".st-key-uploads")[0].text, 30, "the upload did not show")
    _classify_upload(driver, 1)

    shown = _shown_scores(driver)
    assert len(shown) == 1
    _assert_scores(shown[0], expected["glasses.jpg"])
    assert f"neutral {expected['glasses.jpg']['neutral']:.4f}" in driver.page_source
    verdicts = _verdicts(driver)
    assert len(verdicts) == 1 and verdicts[0].startswith("definitely safe"), verdicts
    # Safe: shown as it is, no reveal toggle; the curl box names the upload.
    assert not _css(driver, '[class*="st-key-reveal_"]')
    _wait(driver, lambda d: _css(d, 'img[alt^="preview of glasses.jpg"]'), 20, "no preview of the upload")
    assert "--data-binary @glasses.jpg" in driver.page_source


def test_urls_are_classified_in_the_browser(driver, server, images, expected):
    _open(driver, server)
    urls = [images.url("/house.jpg"), images.url("/smile.jpg"), images.url("/missing.jpg")]
    box = _css(driver, ".st-key-urls textarea")[0]
    box.click()
    box.send_keys("\n".join(urls))
    _classify(driver, 3)

    shown = _shown_scores(driver)
    assert len(shown) == 2
    _assert_scores(shown[0], expected["house.jpg"])
    _assert_scores(shown[1], expected["smile.jpg"])
    verdicts = _verdicts(driver)
    assert verdicts[0].startswith("definitely safe") and verdicts[1].startswith("needs review"), verdicts
    errors = [el.text for el in _css(driver, '[data-testid="stAlertContentError"]')]
    assert len(errors) == 1 and errors[0].startswith("upstream_error: "), errors
    assert "calibrated for MobileNetV2Mid" in driver.page_source
    # The curl box's first command, sent as it is written, answers the same scores.
    curl = _css(driver, '[data-testid="stExpander"] code')[0].get_attribute("textContent")
    found = re.search(r"^curl -XPOST '([^']+)'$", curl.splitlines()[0])
    assert found is not None, curl
    target = found.group(1)
    assert target.startswith(server + "/predict?url=")
    with urllib.request.urlopen(urllib.request.Request(target, method="POST"), timeout=30) as reply:
        _assert_scores(json.loads(reply.read()), expected["house.jpg"])
    # smile.jpg needs review: blurred until revealed.
    blurred = f'img[alt="blurred preview of {urls[1]}"]'
    _wait(driver, lambda d: _css(d, blurred), 10, "the review image is not blurred")
    _wait(driver, lambda d: len(_css(d, '[data-testid="stVegaLiteChart"] canvas, '
                                       '[data-testid="stVegaLiteChart"] svg')) >= 2, 20, "charts not drawn")
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        _css(driver, '[data-testid="stExpander"] summary')[0].click()
        _wait(driver, lambda d: "curl -XPOST" in d.find_element("css selector", '[data-testid="stExpander"]').text,
              10, "the curl box did not open")
        _save_screenshot(driver)
    _wait(driver, lambda d: _css(d, ".st-key-reveal_1 label"), 20, "no reveal toggle")[0].click()
    _wait(driver, lambda d: _css(d, f'img[alt="preview of {urls[1]}"]') and not _css(d, blurred), 20,
          "the reveal toggle did not show the image")
    assert len(_shown_scores(driver)) == 2  # still the same results


def test_calibrate_suggests_thresholds_in_the_browser(driver, server):
    driver.set_window_size(1400, 1000)
    driver.get(server + "/calibrate")
    _wait(driver, lambda d: any("Synthetic scores" in el.text for el in _css(d, '[data-testid="stRadio"] label')),
          SERVER_START_S, "the set choice did not appear")
    [synthetic] = [el for el in _css(driver, '[data-testid="stRadio"] label') if "Synthetic scores" in el.text]
    synthetic.click()
    _wait(driver, lambda d: "220 images scored" in d.page_source, 60, "the synthetic set did not load")
    # The rest of the page follows the set's description: wait for the button (the run that replaces
    # the demo set's elements may still be drawing it).
    [suggest] = _wait(driver, lambda d: [b for b in _css(d, "button") if b.text == "Suggest thresholds"], 30,
                      "no Suggest thresholds button")
    suggest.click()
    _wait(driver, lambda d: "Suggestion (ok)" in d.page_source, 30, "no suggestion")
    _wait(driver, lambda d: len(_css(d, '[data-testid="stVegaLiteChart"] canvas, '
                                       '[data-testid="stVegaLiteChart"] svg')) >= 4, 30, "charts not drawn")
    # The ROC chart (its title gives the AUC) comes after the first four charts.
    _wait(driver, lambda d: "AUC" in d.page_source, 30, "no AUC on the page")
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        _save_screenshot(driver, CALIBRATE_SCREENSHOT)


def test_run_sh_serves_this_machine_only(server):
    """Local mode is only safe on loopback: ./run.sh binds 127.0.0.1, so other interfaces are refused."""
    port = int(server.rsplit(":", 1)[1])
    try:
        shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        shown = ""
    others = sorted({m for m in re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", shown) if not m.startswith("127.")})
    if not others:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    for address in others:
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, port)) != 0, f"{address}:{port} accepted a connection"


def test_the_local_user_reviews_without_signing_in(driver, server, data_dir):
    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.review import ReviewQueue

    driver.get(server + "/review")
    button = _wait(driver, lambda d: _css(d, ".st-key-label_safe button"), SERVER_START_S, "no review buttons")[0]
    nav = [a.text.splitlines()[-1] for a in _css(driver, '[data-testid="stSidebarNav"] a')]
    assert nav == ["Classify", "Calibrate thresholds", "Review queue", "Review grid", "Evaluate production",
                   "Hash lists"]  # no Sign in page
    button.click()
    _wait(driver, lambda d: "Nothing left to review" in d.page_source, 30, "the decision was not recorded")
    queue = ReviewQueue.from_config(load_settings({"NSFW_DATA_DIR": str(data_dir)}).review_config)
    try:
        [item] = queue.items(status="decided")
        assert (item.decision, item.decided_by) == ("safe", "local")
    finally:
        queue.close()


def _queue(data_dir: Path) -> Any:
    from nsfw_core.base.settings import load_settings
    from nsfw_core.state.review import ReviewQueue

    # the bytes kept, as the API keeps a URL item's (an upload's only with NSFW_REVIEW_STORE_UPLOADS)
    return ReviewQueue.from_config(load_settings({"NSFW_DATA_DIR": str(data_dir)}).review_config, store_uploads=True)


def _jpeg(img: Any, quality: int) -> bytes:
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_the_review_page_shows_where_the_model_looked_and_similar_decisions(driver, server, data_dir):
    """Issue 30: the overlay of the deciding class, blurred like the image until revealed, and the similar past
    decisions beside the item, in a real browser against ./run.sh."""
    import hashlib

    import numpy as np
    from PIL import Image

    from nsfw_core.images import phash

    photo = Image.open(ROOT / "data" / "demo" / "photos" / "skimage_chelsea.jpg")
    decided_bytes = _jpeg(photo, 95)
    x = np.asarray(photo.convert("RGB").resize((224, 224)), dtype=np.float32) / 255.0
    queue = _queue(data_dir)
    try:
        scores = dict.fromkeys(CLASSES, 0.2)
        decided = queue.enqueue(hashlib.sha256(decided_bytes).hexdigest(), "upload:cat.jpg", scores,
                                "MobileNetV2Mid", "unknown", image_bytes=decided_bytes,
                                phash=phash.join_hex(phash.stored_hashes(x)))
        queue.decide(decided, "earlier reviewer", "neutral", seen=hashlib.sha256(decided_bytes).hexdigest())
        copy_bytes = _jpeg(photo.resize((photo.width // 2, photo.height // 2)), 60)
        copy = queue.enqueue(hashlib.sha256(copy_bytes).hexdigest(), "upload:cat-copy.jpg",
                             {**scores, "porn": 0.3}, "MobileNetV2Mid", "unknown", image_bytes=copy_bytes)
    finally:
        queue.close()
    driver.get(server + "/review")
    blurred = f'img[alt="blurred evidence for porn over item {copy}"]'
    _wait(driver, lambda d: _css(d, blurred), RESULT_S, "no blurred evidence overlay for the item")
    _wait(driver, lambda d: f"item {decided}:" in d.find_element("css selector", '[data-testid="stMain"]').text, 20,
          "no similar past decision")
    text = driver.find_element("css selector", '[data-testid="stMain"]').text
    line = next(t for t in text.splitlines() if f"item {decided}:" in t)
    assert "neutral" in line and "earlier reviewer" in line and "PDQ distance" in line, line
    assert _css(driver, f'img[alt="blurred thumbnail of decided item {decided}"]')
    # revealing the image reveals the overlay too
    _css(driver, f".st-key-reveal_{copy} label")[0].click()
    _wait(driver, lambda d: _css(d, f'img[alt="evidence for porn over item {copy}"]') and not _css(d, blurred), 20,
          "the overlay stayed blurred")
    _wait(driver, lambda d: _css(d, f'img[alt="thumbnail of decided item {decided}"]'), 20,
          "the similar decision's thumbnail stayed blurred")  # drawn after the overlay on the same rerun
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        _save_screenshot(driver, ROOT / "docs" / "review.png")
    _css(driver, ".st-key-label_safe button")[0].click()
    _wait(driver, lambda d: "Nothing left to review" in d.page_source, 30, "the decision was not recorded")


def test_the_review_grid_decides_the_rest_in_one_action(driver, server, data_dir):
    """Issue 30: the grid's blurred thumbnails, one exception ticked, the rest marked safe in one click."""
    import hashlib
    import io

    from PIL import Image

    queue = _queue(data_dir)
    try:
        ids = []
        for n, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40))):
            img = Image.new("RGB", (80, 60), colour)
            buf = io.BytesIO()
            img.save(buf, "PNG")
            data = buf.getvalue()
            ids.append(queue.enqueue(hashlib.sha256(data).hexdigest(), f"upload:g{n}.png",
                                     dict.fromkeys(CLASSES, 0.2), "MobileNetV2Mid", "unknown", image_bytes=data))
    finally:
        queue.close()
    driver.get(server + "/review_grid")
    _wait(driver, lambda d: len(_css(d, 'img[alt^="blurred thumbnail of item"]')) == 4, RESULT_S,
          "the grid did not show the four items blurred")
    _css(driver, f".st-key-grid_pick_{ids[1]} label")[0].click()
    _wait(driver, lambda d: "Mark the rest safe (3)" in d.page_source, 20, "the exception was not counted")
    _css(driver, ".st-key-grid_safe button")[0].click()
    _wait(driver, lambda d: "3 items decided" in d.page_source, 30, "the grid's action was not recorded")
    queue = _queue(data_dir)
    try:
        decided = {i: queue.get(i) for i in ids}
        assert [i for i, item in decided.items() if item.status == "decided"] == [ids[0], ids[2], ids[3]]
        assert all(item.decision == "safe" and item.decided_by == "local" for i, item in decided.items()
                   if i != ids[1])
        assert decided[ids[1]].status == "pending"  # the exception, for the one-by-one page
    finally:
        queue.close()


def test_a_newcomer_sees_the_evaluate_page_say_what_is_missing(driver, server):
    """Issue 25: ./run.sh's Evaluate page with nothing audited says what is missing and how to get there, and
    shows no figure it does not have."""
    driver.get(server + "/evaluate")
    _wait(driver, lambda d: any(h.text == "Evaluate production" for h in _css(d, "h1")), SERVER_START_S,
          "the evaluate page did not appear")
    _wait(driver, lambda d: "Nothing audited yet" in d.find_element("css selector", "body").text, 30,
          "the page did not say that nothing is audited")
    text = driver.find_element("css selector", "body").text
    assert "NSFW_AUDIT_RATE" in text and "adult 1 %, safe 0.2 %" in text  # on by default, and at what rate
    assert "Review queue page" in text and "reviewer API" in text  # how to get there
    metrics = {m.text.splitlines()[0]: m.text.splitlines()[-1] for m in _css(driver, '[data-testid="stMetric"]')}
    assert metrics["Precision of automatic adult"] == "not enough data yet", metrics
    assert metrics["Precision of automatic safe"] == "not enough data yet", metrics
    assert metrics["Wrong automatic decisions per day"] == "not enough data yet", metrics
    nav = [a.text.splitlines()[-1] for a in _css(driver, '[data-testid="stSidebarNav"] a')]
    assert "Evaluate production" in nav
