"""The live web view as a person sees it: real capture -> worker -> view, the page in headless Chromium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.verdict import smooth
from stream import net, protocol
from stream.capture import CaptureConfig, capture
from stream.sources import VideoFileSource
from stream.view import ViewConfig, view
from stream.worker import WorkerConfig, serve

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789"
FRAMES = 150  # 6 s at 25 fps: long enough to see the image change several times

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"),
]


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Without the background-networking flags Chromium keeps dialling out, which this closed network refuses.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(check, timeout_s=30.0, what="the page"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def ultrasound_like(n: int, height: int = 240, width: int = 320) -> list[np.ndarray]:
    """Frames with a bright moving ellipse on speckle, so that each one differs visibly."""
    rng = np.random.default_rng(3)
    frames = []
    for i in range(n):
        image = rng.integers(0, 60, (height, width), dtype=np.uint8)
        cv2.ellipse(image, (60 + i, height // 2), (40, 28), 0, 0, 360, 220, 3)
        frames.append(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    return frames


def test_the_page_shows_the_live_image_and_the_last_scores_verdict(tmp_path, browser, background, address,
                                                                   tiny_bundle):
    path = tmp_path / "scan.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for image in ultrasound_like(FRAMES):
        writer.write(image)
    writer.release()
    frames_addr, scores_addr = address(), address()
    background(lambda stop: serve(tiny_bundle, WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless",
                                                            heartbeat_s=0.2, forward_frames=True,
                                                            saliency="every 10"), stop))
    urls: list[str] = []
    ready = threading.Event()
    config = ViewConfig(sub=scores_addr, addr="127.0.0.1:0", token=TOKEN, hold=2)
    background(lambda stop: view(config, stop, on_ready=lambda url: (urls.append(url), ready.set())))
    assert ready.wait(30)
    ours = net.Subscriber(scores_addr, hwm=100_000)
    try:
        recv = lambda timeout_s: ours.receive(timeout_s)  # noqa: E731
        wait_for(lambda: any(isinstance(m, protocol.Heartbeat) and m.stream == "_worker" and not m.loading
                             for m in recv(0.2)), what="the worker")
        browser.get(urls[0])
        wait_for(lambda: browser.execute_script("return document.getElementById('connection').textContent")
                 == "connected", what="the WebSocket")
        background(lambda stop: capture(VideoFileSource(path), CaptureConfig(pub=frames_addr, mode="lossless",
                                                                              stream="probe1"), stop))
        seen_seqs = set()
        messages = []
        deadline = time.monotonic() + 60
        while not any(isinstance(m, protocol.EndOfStream) for m in messages) and time.monotonic() < deadline:
            messages += recv(0.1)
            seq = browser.execute_script("const i = document.querySelector('.card .frame');"
                                         "return i ? i.dataset.seq : null")
            if seq is not None:
                seen_seqs.add(int(seq))
    finally:
        ours.close()

    got = [m for m in messages if isinstance(m, protocol.Score)]
    assert [s.seq for s in got] == list(range(FRAMES)), "every frame scored once (lossless)"
    assert len(seen_seqs) >= 10, f"the image updated only {len(seen_seqs)} times"
    last = got[-1]
    expected_verdict = "Head" if smooth([s.decision for s in got], 2)[-1] else "Not-Head"
    band = wait_for(lambda: (b := browser.execute_script(
        "const b = document.querySelector('.card .band'); return b && b.dataset.seq == '%d' ? "
        "{score: b.dataset.score, verdict: b.dataset.verdict, cls: b.className, "
        "text: b.querySelector('.verdict').textContent, figures: b.querySelector('.figures').textContent} : null"
        % last.seq)) and b, what="the last score on the page")
    assert float(band["score"]) == pytest.approx(last.score, abs=1e-12)
    assert band["verdict"] == expected_verdict
    assert band["text"] == ("HEAD" if expected_verdict == "Head" else "NOT-HEAD")
    assert band["cls"] == "band " + ("head" if expected_verdict == "Head" else "nothead")
    assert f"score {last.score:.3f}" in band["figures"] and f"threshold {last.threshold:.3f}" in band["figures"]
    assert "token" not in browser.current_url, "the token is taken out of the address bar"
    assert "ended (eof)" in browser.find_element("css selector", ".card .state").text
    # The worker's newest heat map is drawn over the image as shown (object-fit: contain), sized to it.
    heat = browser.execute_script(
        "const h = document.querySelector('.card .heat'), i = document.querySelector('.card .frame');"
        "const s = Math.min(i.clientWidth / i.naturalWidth, i.clientHeight / i.naturalHeight);"
        "return [h.hidden, h.dataset.seq, h.width, h.height, i.naturalWidth * s, i.naturalHeight * s]")
    assert heat[0] is False and int(heat[1]) % 10 == 0
    assert abs(heat[2] - heat[4]) <= 1 and abs(heat[3] - heat[5]) <= 1 and heat[2] > 100

    shot = tmp_path / "view.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("FETALHEAD_SCREENSHOT"):
        shutil.copy(shot, os.environ["FETALHEAD_SCREENSHOT"])
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[0] > 400 and image.shape[1] > 800
    # The verdict band's colour is on screen where the band is: green for Head, red for Not-Head.
    rect = browser.execute_script("const r = document.querySelector('.card .band').getBoundingClientRect();"
                                  "return [r.left, r.top, r.width, r.height, window.devicePixelRatio]")
    left, top, width, height, ratio = (round(v * rect[4]) for v in rect)
    assert width > 300 and height > 40, "the verdict is large"
    blue, green, red = np.median(image[top:top + height, left:left + width].reshape(-1, 3), axis=0)
    if expected_verdict == "Head":
        assert green > red + 40 and green > blue + 40
    else:
        assert red > green + 40 and red > blue + 40

    # A wrong token gets nothing but the refusal, and a fresh browser has no cookie to fall back on.
    browser.delete_all_cookies()
    browser.get(urls[0].replace(TOKEN, TOKEN + "x"))
    assert "wrong or missing access token" in browser.find_element("tag name", "body").text
    assert not browser.find_elements("css selector", ".card")
