"""docs/protocol.md's examples and facts: its two Python examples against a real worker, its PNG table.

The examples are files of their own (docs/examples) that the document shows
as they are; a client written from the document meets the same worker.
"""

from __future__ import annotations

import re
import runpy
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from stream import net, protocol
from stream.capture import CaptureConfig, capture
from stream.sources import VideoFileSource
from stream.worker import WorkerConfig, serve
from tests.stream.conftest import WAIT_S, Task, make_frames, read_video, write_avi

DOCS = Path(__file__).resolve().parents[2] / "docs"
SUBSCRIBE = DOCS / "examples" / "subscribe_scores.py"
EMBED = DOCS / "examples" / "embed_scorer.py"
FRAMES = 20


def _rows(lines: list[str]) -> list[tuple[int, float, str, str]]:
    """(seq, score, decision, flags) of each line an example printed: ``seq score decision [flags]``."""
    rows = []
    for line in lines:
        seq, value, decision, *flags = line.split(" ")
        rows.append((int(seq), float(value), decision, "".join(flags)))
    return rows


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_avi(tmp_path_factory.mktemp("examples") / "clip.avi", make_frames(FRAMES))


@pytest.fixture(scope="module")
def worker_rows(clip, tiny_bundle) -> list[tuple[int, float, str, str]]:
    """What subscribe_scores.py printed from a real lossless worker, started by the document's recipe:
    subscribe, wait for a ready ``_worker`` heartbeat, then start the capture. Once for the module."""
    frames, scores = net.free_tcp_address(), net.free_tcp_address()
    tasks = [Task(lambda stop: serve(tiny_bundle, WorkerConfig(sub=(frames,), pub=scores, mode="lossless",
                                                               exit_after_eos=1), stop))]
    client = subprocess.Popen([sys.executable, str(SUBSCRIBE), scores, "clip"], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline() == "worker ready\n"
        tasks.append(Task(lambda stop: capture(VideoFileSource(clip), CaptureConfig(pub=frames, mode="lossless",
                                                                                     fast=True, stream="clip"), stop)))
        out, _ = client.communicate(timeout=WAIT_S)
        assert client.returncode == 0, "the example did not end at the end of stream"
        assert tasks[0].join().frames_out == FRAMES
    finally:
        client.kill()
        client.wait()
        client.stdout.close()
        for task in tasks:
            task.stop.set()
            task.thread.join(WAIT_S)
    return _rows(out.splitlines())


@pytest.mark.slow
def test_the_subscriber_example_receives_every_score_of_a_lossless_stream(worker_rows, clip, tiny_runtime,
                                                                          tiny_bundle):
    offline = tiny_runtime.scan_scores(tiny_runtime.frame_features(read_video(clip)))
    assert [seq for seq, *_ in worker_rows] == list(range(FRAMES))
    np.testing.assert_allclose([value for _, value, *_ in worker_rows], offline, atol=1e-5)
    assert [decision for _, value, decision, _ in worker_rows] == [
        "Head" if value >= tiny_bundle.threshold else "Not-Head" for _, value, *_ in worker_rows]
    window = tiny_bundle.config.window
    assert [flags for *_, flags in worker_rows] == ["warmup"] * (window - 1) + [""] * (FRAMES - window + 1)


@pytest.mark.slow
def test_the_embedded_scorer_example_prints_the_workers_scores(worker_rows, clip, tiny_bundle_path, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(EMBED), str(tiny_bundle_path), str(clip)])
    runpy.run_path(str(EMBED), run_name="__main__")
    embedded = _rows(capsys.readouterr().out.splitlines())
    assert [(seq, decision, flags) for seq, _, decision, flags in embedded] == [
        (seq, decision, flags) for seq, _, decision, flags in worker_rows]
    np.testing.assert_allclose([value for _, value, *_ in embedded], [value for _, value, *_ in worker_rows],
                               atol=1e-5)


@pytest.mark.parametrize("example", [SUBSCRIBE, EMBED], ids=lambda p: p.name)
def test_the_document_shows_each_example_as_it_is(example):
    text = (DOCS / "protocol.md").read_text()
    block = re.search(rf"<!-- example: docs/examples/{example.name} -->\s*```python\n(.*?)```", text, re.S)
    assert block, f"docs/protocol.md does not show {example.name}"
    assert block.group(1) == example.read_text()


# --- the PNG colour types of section 3 ------------------------------------------------


def _png(width: int, height: int, colour: int, depth: int, rows: list[bytes], *, palette: bytes = b"",
         transparent: bytes = b"") -> bytes:
    """A PNG file of ``rows`` (filter byte 0 each), written by hand: OpenCV writes few of the colour types."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    if transparent:
        out += chunk(b"tRNS", transparent)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in rows))) + chunk(b"IEND", b"")


PNGS = [
    pytest.param(_png(2, 1, 0, 8, [b"\x40\x80"]), (1, 2), [64, 128], id="grey"),
    pytest.param(_png(4, 1, 0, 2, [b"\x1b"]), (1, 4), [0, 85, 170, 255], id="grey-2-bit-scaled"),
    pytest.param(_png(1, 1, 0, 8, [b"\x40"], transparent=b"\x00\x40"), (1, 1), [64], id="grey-tRNS-ignored"),
    pytest.param(_png(1, 1, 2, 8, [b"\x10\x20\x30"]), (1, 1, 3), [0x30, 0x20, 0x10], id="rgb-as-bgr"),
    pytest.param(_png(2, 1, 2, 8, [b"\x10\x20\x30\x01\x02\x03"], transparent=b"\x00\x10\x00\x20\x00\x30"),
                 (1, 2, 4), [0x30, 0x20, 0x10, 0, 3, 2, 1, 255], id="rgb-tRNS-alpha"),
    pytest.param(_png(2, 1, 3, 8, [b"\x00\x01"], palette=b"\x10\x20\x30\x40\x50\x60"), (1, 2, 3),
                 [0x30, 0x20, 0x10, 0x60, 0x50, 0x40], id="palette"),
    pytest.param(_png(2, 1, 3, 8, [b"\x00\x01"], palette=b"\x10\x20\x30\x40\x50\x60", transparent=b"\x80"),
                 (1, 2, 4), [0x30, 0x20, 0x10, 0x80, 0x60, 0x50, 0x40, 255], id="palette-tRNS"),
    pytest.param(_png(1, 1, 4, 8, [b"\x40\x80"]), (1, 1, 4), [64, 64, 64, 128], id="grey-alpha"),
    pytest.param(_png(1, 1, 6, 8, [b"\x10\x20\x30\x80"]), (1, 1, 4), [0x30, 0x20, 0x10, 0x80], id="rgba"),
]


def _frame(pixels: bytes, shape: tuple[int, ...]) -> protocol.Frame:
    return protocol.Frame(stream="probe1", seq=0, t_capture=1.0, t_source=None, shape=shape, dtype="uint8",
                          encoding="png", spacing=None, pixels=pixels)


@pytest.mark.parametrize(("pixels", "shape", "values"), PNGS)
def test_each_png_colour_type_decodes_to_the_channels_the_document_gives(pixels, shape, values):
    image = _frame(pixels, shape).image()
    assert image.shape == shape and image.reshape(-1).tolist() == values


def test_a_16_bit_png_is_refused():
    with pytest.raises(protocol.ProtocolError, match="png decodes to uint16") as info:
        _frame(_png(1, 1, 0, 16, [b"\x01\x00"]), (1, 1)).image()
    assert info.value.kind == protocol.KIND_BAD_PIXELS
