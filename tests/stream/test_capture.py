"""The capture: its pacing, its settings and command line, and its loop over real sockets."""

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from models.errors import ConfigError
from models.settings import load
from stream import protocol
from stream.capture import CaptureConfig, Pacer, capture
from stream.sources import Source, SourceError, VideoFileSource
from tests.stream.conftest import read_video, recv_message, recv_until
from tools.commands.capture import main

# --- Pacer ----------------------------------------------------------------------------------


def test_pacer_spaces_frames_by_the_period_without_drift():
    pacer = Pacer(10.0)
    assert pacer.due_in(100.0) == 0.0
    pacer.sent(100.0)
    assert pacer.due_in(100.04) == pytest.approx(0.06)
    # Sent a little late: the next deadline still follows the schedule, not the lateness.
    pacer.sent(100.12)
    assert pacer.due_in(100.12) == pytest.approx(0.08)
    pacer.sent(100.2)
    assert pacer.due_in(100.2) == pytest.approx(0.1)


def test_pacer_does_not_burst_after_a_stall():
    pacer = Pacer(10.0)
    pacer.sent(0.0)
    pacer.sent(5.0)  # stalled for 5 s (a blocked lossless send)
    assert pacer.due_in(5.0) == pytest.approx(0.1)


def test_pacer_without_fps_never_waits():
    pacer = Pacer(None)
    for t in range(3):
        assert pacer.due_in(float(t)) == 0.0
        pacer.sent(float(t))
    with pytest.raises(ValueError, match="fps must be > 0"):
        Pacer(0.0)


# --- the command and its settings ------------------------------------------------------


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["synthetic", "--fast", "--fps", "10"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["synthetic", "--pub", "tcp://0.0.0.0:5999"]) == 1
    assert "allow_remote" in capsys.readouterr().err


def test_capture_table_in_a_toml_file(tmp_path):
    path = tmp_path / "fh.toml"
    path.write_text('[capture]\nmode = "lossless"\nfps = 12.5\nstream = "probe1"\n')
    config = load(CaptureConfig, "capture", path, {"fps": None, "encoding": "png"})
    assert (config.mode, config.fps, config.stream, config.encoding) == ("lossless", 12.5, "probe1", "png")
    assert config.queue_size == 4
    with pytest.raises(ConfigError, match="stream"):
        CaptureConfig(stream="_capture")


def test_on_bad_frame_is_a_setting_and_a_flag(tmp_path, capsys):
    path = tmp_path / "fh.toml"
    path.write_text('[capture]\non_bad_frame = "stop"\n')
    assert load(CaptureConfig, "capture", path).on_bad_frame == "stop"
    assert CaptureConfig().on_bad_frame == "skip"
    with pytest.raises(ConfigError, match="capture.on_bad_frame: 'halt' is not one of 'skip', 'stop'"):
        load(CaptureConfig, "capture", None, {"on_bad_frame": "halt"})
    with pytest.raises(SystemExit) as info:
        main(["synthetic", "--on-bad-frame", "halt"])
    assert info.value.code == 2 and "--on-bad-frame: invalid choice: 'halt'" in capsys.readouterr().err


# --- the capture loop over real sockets -----------------------------------------------------


def test_lossless_capture_sends_every_frame_then_end_of_stream(background, sockets, address, video):
    path = video(30, fps=25.0)
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    task = background(lambda stop: capture(VideoFileSource(path), CaptureConfig(
        pub=addr, mode="lossless", fast=True, encoding="png"), stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    frames = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [f.seq for f in frames] == list(range(30))
    assert all(f.stream == "clip" and f.encoding == "png" for f in frames)
    assert [f.t_source for f in frames] == pytest.approx([i / 25.0 for i in range(30)])
    for frame, expected in zip(frames, read_video(path)):
        np.testing.assert_array_equal(frame.image(), expected)
    end = messages[-1]
    assert (end.stream, end.last_seq, end.reason) == ("clip", 29, "eof")
    stats = task.join()
    assert stats.frames_out == 30 and stats.reason == "eof"


def test_capture_is_paced_at_the_source_rate(background, sockets, address, video):
    path = video(10, fps=50.0)
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    task = background(lambda stop: capture(VideoFileSource(path), CaptureConfig(pub=addr, mode="lossless"), stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    times = [m.t_capture for m in messages if isinstance(m, protocol.Frame)]
    assert times[-1] - times[0] >= 9 / 50.0 * 0.9
    assert task.join().elapsed_s < 5.0


def test_loop_keeps_seq_increasing_and_max_frames_ends_the_stream(background, sockets, address, video):
    path = video(4)
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    config = CaptureConfig(pub=addr, mode="lossless", fast=True, loop=True, max_frames=11, stream="loop1")
    background(lambda stop: capture(VideoFileSource(path, loop=True), config, stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    assert [m.seq for m in messages if isinstance(m, protocol.Frame)] == list(range(11))
    assert (messages[-1].last_seq, messages[-1].reason) == (10, "max_frames")


class Endless(Source):
    """Grey 32x40 frames until the capture stops asking."""

    name = "endless"

    def __iter__(self):
        while True:
            yield np.zeros((32, 40), np.uint8), None


def test_stop_event_ends_the_stream_as_stopped(background, sockets, address):
    addr = address()
    sub = sockets(zmq.SUB, connect=addr)
    config = CaptureConfig(pub=addr, fps=200.0, heartbeat_s=0.05, stream="synth")
    task = background(lambda stop: capture(Endless(), config, stop))
    beat = recv_until(sub, lambda m: isinstance(m, protocol.Heartbeat))[-1]
    assert beat.stream == "_capture.synth" and beat.role == "capture" and "frames_out" in beat.stats
    task.stop.set()
    end = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream))[-1]
    assert end.reason == "stopped" and end.stream == "synth"
    assert task.join().reason == "stopped"


class Patchy(Source):
    """Five frames, then three it has to leave out, then five more; ``missing`` as a damaged file gives it."""

    name = "patchy"

    def __iter__(self):
        for i in range(13):
            if 5 <= i < 8:
                if i == 7:
                    self.skip(3, "patchy: frames 5 to 7 unreadable, left out")
                continue
            yield np.full((8, 8), i, np.uint8), i / 25.0


@pytest.mark.parametrize(("on_bad_frame", "seqs"), [("skip", [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]),
                                                     ("stop", [0, 1, 2, 3, 4])])
def test_frames_a_source_leaves_out_are_a_gap_in_seq_and_the_end_is_an_error(background, sockets, address,
                                                                             on_bad_frame, seqs):
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    config = CaptureConfig(pub=addr, mode="lossless", fast=True, on_bad_frame=on_bad_frame)
    task = background(lambda stop: capture(Patchy(), config, stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    frames = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [f.seq for f in frames] == seqs and all(f.image()[0, 0] == f.seq for f in frames)
    assert [m.message for m in messages if isinstance(m, protocol.Status)] == [
        "patchy: frames 5 to 7 unreadable, left out"]
    assert (messages[-1].last_seq, messages[-1].reason) == (seqs[-1], "error")
    assert task.join().reason == "error"


class FlakyDevice(Source):
    """A device that fails after every ``every`` frames and needs ``reopen_failures`` tries to come back."""

    retry = True

    def __init__(self, every=3, reopen_failures=1):
        self.name, self.fps = "flaky", None
        self.every, self.reopen_failures = every, reopen_failures
        self.failures_left = 0
        self.reopened = 0

    def __iter__(self):
        for _ in range(self.every):
            yield np.full((16, 16), 7, np.uint8), None
        self.failures_left = self.reopen_failures
        raise SourceError("video device 9: stopped delivering frames")

    def reopen(self):
        if self.failures_left:
            self.failures_left -= 1
            raise SourceError("video device 9: cannot be opened")
        self.reopened += 1


def test_a_failing_device_is_retried_with_backoff_and_status_messages(background, sockets, address):
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    device = FlakyDevice()
    config = CaptureConfig(pub=addr, mode="lossless", max_frames=9, retry_initial_s=0.01, retry_max_s=0.04)
    task = background(lambda stop: capture(device, config, stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    assert [m.seq for m in messages if isinstance(m, protocol.Frame)] == list(range(9))
    statuses = [m.message for m in messages if isinstance(m, protocol.Status) and m.level == "warning"]
    assert statuses[:2] == ["video device 9: stopped delivering frames; retrying in 0.01 s",
                            "video device 9: cannot be opened; retrying in 0.02 s"]
    stats = task.join()
    # Two failures of the device, each with one failed reopen.
    assert stats.source_errors == 4 and device.reopened == 2


def test_command_line_capture_delivers_everything_before_it_exits(sockets, address, video):
    path = video(30, height=240, width=320)
    addr = address()
    pull = sockets(zmq.PULL, connect=addr, hwm=2)
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "capture", str(path), "--pub", addr,
                             "--mode", "lossless", "--fast", "--stream", "cli"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # A slow reader: the capture's loop ends while frames are still on their way.
        messages = []
        while not messages or not isinstance(messages[-1], protocol.EndOfStream):
            messages.append(recv_message(pull))
            time.sleep(0.02)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate()
    assert [m.seq for m in messages if isinstance(m, protocol.Frame)] == list(range(30))
