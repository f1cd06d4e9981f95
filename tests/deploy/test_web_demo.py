"""The web demo in a real headless browser (Debian's chromium driven by Playwright): the server is
started with the real command line on a free loopback port; upload, class names, overlay; errors
for bad names and a bad image are shown as messages. Bounded in time; the server is stopped."""

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from common import REPO
from deploy_helpers import VOC20_TOY_CONFIG

CHROMIUM = os.environ.get("CLIPDISTILL_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
STARTUP_TIMEOUT_S = 120
STEP_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_opts):
    assert os.path.isfile(CHROMIUM), (
        f"{CHROMIUM} is missing: the browser test needs Debian's chromium "
        "(run `bash scripts/install_browser.sh` as root)"
    )
    port = _free_port()
    log_path = tmp_path_factory.mktemp("web") / "server.log"
    log = open(log_path, "w")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(log_path.parent / "gradio"),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "tools/web_demo.py",
            "--config-file",
            VOC20_TOY_CONFIG,
            "--port",
            str(port),
            "--class-names",
            "cat",
            "dog",
            *tiny_opts,
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"web demo exited with {proc.returncode}:\n" + log_path.read_text()[-3000:]
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    "web demo did not start in time:\n" + log_path.read_text()[-3000:]
                )
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()
    assert proc.poll() is not None  # stopped


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(STEP_TIMEOUT_MS)
            pg.goto(server, wait_until="domcontentloaded")
            pg.wait_for_selector("#segment-button")
            yield pg
        finally:
            browser.close()


def _status_contains(page, text):
    page.wait_for_function(
        "t => { const s = document.querySelector('#status');"
        " return s && s.innerText.includes(t); }",
        arg=text,
    )
    return page.locator("#status").inner_text()


def _upload_image(page, tmp_path, h=60, w=90):
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / "upload.png"
    Image.fromarray(image).save(path)
    page.locator("#input-image input[type=file]").set_input_files(str(path))


def test_upload_names_and_overlay(page, server, tmp_path):
    assert page.locator("#class-names textarea").input_value() == "cat, dog"  # --class-names
    _upload_image(page, tmp_path)
    page.locator("#class-names textarea").fill("cat, potted plant, sky")
    page.click("#segment-button")
    status = _status_contains(page, "Segmented a 90x60 image")
    assert "Error" not in status
    src = page.locator("#overlay img").get_attribute("src")
    assert src, "the overlay image did not appear"
    with urllib.request.urlopen(urllib.parse.urljoin(server, src), timeout=10) as r:
        overlay = Image.open(io.BytesIO(r.read()))
    # the overlay is the image enlarged by a whole factor (small images are shown readable)
    assert overlay.size == (90 * 7, 60 * 7)
    legend = page.locator("#legend").inner_text()
    assert any(n in legend for n in ("cat", "potted plant", "sky"))


def test_bad_class_names_show_a_message(page, tmp_path):
    _upload_image(page, tmp_path)
    names = page.locator("#class-names textarea")
    names.fill("cat, dog, cat")
    page.click("#segment-button")
    status = _status_contains(page, "Error")
    assert "duplicated class names ['cat']" in status
    assert "Traceback" not in page.locator("body").inner_text()
    assert page.locator("#overlay img").count() == 0  # the stale overlay is cleared
    names.fill(" , ")
    page.click("#segment-button")
    assert "empty class name" in _status_contains(page, "empty class name")


def test_bad_image_shows_a_message(page, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"definitely not a PNG file" * 20)
    page.locator("#input-image input[type=file]").set_input_files(str(bad))
    page.locator("#class-names textarea").fill("cat, dog")
    page.click("#segment-button")
    status = _status_contains(page, "not a readable image")
    assert "broken.png" in status and "Traceback" not in page.locator("body").inner_text()


def test_handler_refuses_files_outside_the_upload_folder(tmp_path, tiny_checkpoint):
    """A crafted request naming a server file outside Gradio's upload folder is refused."""
    from clipdistill.deploy import SegPredictor
    from clipdistill.deploy.web import segment_for_web
    from common import tiny_cfg

    predictor = SegPredictor(tiny_cfg("MODEL.WEIGHTS", tiny_checkpoint))
    path = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    payload = {"path": str(path), "orig_name": "x.png"}
    overlay, _, status = segment_for_web(predictor, payload, "cat", allowed_roots=[str(uploads)])
    assert overlay is None and "not an uploaded file" in status
    overlay, legend, status = segment_for_web(
        predictor, payload, "cat, dog", allowed_roots=[str(tmp_path)]
    )
    assert overlay.shape == (8 * 48, 8 * 48, 3) and "Segmented a 8x8 image" in status
    assert "upload an image first" in segment_for_web(predictor, None, "cat")[2]
    big = np.zeros((40, 300, 3), np.uint8)
    overlay, _, status = segment_for_web(predictor, big, "cat, dog", max_side=150)
    assert overlay.shape == (20 * 13, 150 * 13, 3) and "Downscaled to 150x20" in status
