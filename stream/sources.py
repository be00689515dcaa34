"""Frame sources for the capture: what a source is, and the two OpenCV ones (devices, video files).

A source is iterated for ``(image, t_source)`` pairs: ``image`` is uint8
(H, W) or (H, W, 3) BGR as OpenCV gives it, ``t_source`` the frame's time in
seconds on the source's own clock (frame index / fps for a file; None for a
device, whose frames are stamped on capture). Sources do no pacing and open
no sockets: ``stream.capture`` does both. Sources backed by training data
(scan folders, the synthetic phantom) live with the command that opens
them, ``tools.sources``, so this package needs nothing of ``train``.

A source checks its input when it is made, and every bad input is a
one-line ``SourceError`` naming the source. A frame of a file that cannot
be read is left out with a warning (``Source.skip``, which the capture also
publishes as a Status): the frames after it keep their own index and time,
and ``Source.missing`` counts what was left out, so the capture's ``seq``
has a gap there. A file that ends before the frame count in its header says
so the same way. A device that fails raises ``SourceError`` from the
iteration, and ``reopen`` tries it again (``Source.retry`` tells the capture
loop to do so with backoff); so does a looped file that goes missing or
unreadable, since it too is meant to run until stopped.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from typing import Callable, Generator, Iterator

import cv2
import numpy as np

from models.errors import FetalheadError

logger = logging.getLogger(__name__)

# The frame rate of a file that does not say its own.
DEFAULT_FPS = 25.0

# FFmpeg demuxer flags for video files. ``sortdts`` makes FFmpeg read an AVI
# through its index, so a frame's timestamp is its place in the file even past
# unreadable data (otherwise it counts the frames it found, and every frame
# after a damaged stretch gets an earlier time than its own);
# ``discardcorrupt`` drops a frame that the end of a truncated file cuts short
# instead of decoding half of it. OpenCV takes demuxer options only from this
# environment variable, read when a capture is opened: it is set around each
# open, under a lock, and put back as it was.
_FFMPEG_OPTIONS_VARIABLE = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_FFMPEG_FILE_OPTIONS = "fflags;+sortdts+discardcorrupt"
_options_lock = threading.Lock()
# A read that fails may be a damaged frame or the end of the file, which OpenCV
# does not tell apart: reading goes on through this many failures more than the
# frames the header still promises (a failed read at the end costs a microsecond),
# and never through more than the maximum, whatever count a header claims.
_SPARE_FAILED_READS = 250
_MAX_FAILED_READS = 100_000


class SourceError(FetalheadError):
    """A frame source that cannot be opened or read; the message is one line."""


class Source:
    """Base of all sources: iterate for (uint8 image, t_source); close when done.

    ``name`` is the default stream id, ``fps`` the nominal frame rate (None
    when unknown), ``retry`` whether a read failure is worth retrying,
    ``realtime`` whether frames come at their own pace (a device: pacing
    them again would only add latency). ``missing`` counts the frames left
    out so far (``skip``): the capture numbers each frame by the frames
    before it, read or not. ``spacing`` is the (row, col) pixel size in mm
    of the frame last yielded, None when the source does not know it (a
    video file or a camera). ``on_warning``, when set, is called with every
    warning's text as well.
    """

    name: str = "source"
    fps: float | None = None
    spacing: tuple[float, float] | None = None
    retry: bool = False
    realtime: bool = False
    missing: int = 0
    on_warning: Callable[[str], None] | None = None
    _said: set[str] | None = None

    def warn(self, message: str) -> None:
        """Log a problem that does not stop the source, and hand it to ``on_warning``."""
        logger.warning("%s", message)
        if self.on_warning is not None:
            self.on_warning(message)

    def skip(self, count: int, message: str) -> None:
        """Leave out ``count`` frames that cannot be read, saying why in ``message``.

        Called before the next frame is yielded (or at the end), so that frame
        is numbered after the gap. A message already given is not repeated:
        a looped file would say the same on every pass.
        """
        self.missing += count
        if self._said is None:
            self._said = set()
        if message not in self._said:
            self._said.add(message)
            self.warn(message)

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        raise NotImplementedError

    def reopen(self) -> None:
        """Open the source again after a failure; raises SourceError when it still fails."""
        raise SourceError(f"{self.name}: cannot be reopened")

    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Quiet:
    """Silence OpenCV's own warnings while probing, so an error stays one line."""

    def __enter__(self) -> None:
        self._level = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

    def __exit__(self, *exc: object) -> None:
        cv2.utils.logging.setLogLevel(self._level)


class DeviceSource(Source):
    """A camera or frame grabber by OpenCV index (``/dev/videoN`` on Linux)."""

    retry = True
    realtime = True

    def __init__(self, index: int, *, fps: float | None = None) -> None:
        self.index = index
        self.name = f"device{index}"
        self._requested_fps = fps
        self._capture: cv2.VideoCapture | None = None
        self._open()

    def _open(self) -> None:
        with _Quiet():
            capture = cv2.VideoCapture(self.index)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"video device {self.index}: cannot be opened (no such device, or it is busy)")
        # A one-frame driver buffer: a slow consumer then gets the newest frame,
        # not one that waited in the driver's queue.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self._requested_fps:
            capture.set(cv2.CAP_PROP_FPS, self._requested_fps)
        own = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(own) if own and math.isfinite(own) and own > 0 else self._requested_fps
        self._capture = capture

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        if self._capture is None:
            raise SourceError(f"video device {self.index}: closed")
        while True:
            ok, frame = self._capture.read()
            if not ok or frame is None:
                raise SourceError(f"video device {self.index}: stopped delivering frames")
            yield frame, None

    def reopen(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_video(path: str | Path) -> cv2.VideoCapture:
    """The video file at ``path`` opened by OpenCV with the demuxer flags above; SourceError when it cannot be."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"video file {path}: not found")
    if path.is_dir():
        raise SourceError(f"video file {path}: is a folder but not a scan folder")
    with _options_lock, _Quiet():
        own = os.environ.get(_FFMPEG_OPTIONS_VARIABLE)
        os.environ[_FFMPEG_OPTIONS_VARIABLE] = f"{own}|{_FFMPEG_FILE_OPTIONS}" if own else _FFMPEG_FILE_OPTIONS
        try:
            capture = cv2.VideoCapture(str(path))
        finally:
            if own is None:
                del os.environ[_FFMPEG_OPTIONS_VARIABLE]
            else:
                os.environ[_FFMPEG_OPTIONS_VARIABLE] = own
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"video file {path}: not a video (OpenCV cannot open it)")
    return capture


def _container_index(capture: cv2.VideoCapture, own_fps: float) -> int | None:
    """The index in the file of the frame just read, from its timestamp; None when the file has none."""
    if own_fps <= 0 or capture.getBackendName() != "FFMPEG":
        return None
    pts = capture.get(cv2.CAP_PROP_PTS)
    # FFmpeg's "no timestamp" is the most negative int64.
    if not math.isfinite(pts) or pts < 0:
        return None
    return round(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 * own_fps)


def _predicted(capture: cv2.VideoCapture) -> bool:
    """True when the frame just read was decoded from earlier frames (an FFmpeg P or B frame)."""
    return capture.get(cv2.CAP_PROP_FRAME_TYPE) in (ord("P"), ord("B"))


def play_video(path: Path, fps: float,
               skip: Callable[[int, str], None]) -> Generator[tuple[np.ndarray, float], None, int]:
    """Every good frame of the video file at ``path`` once: (uint8 BGR image, index / ``fps``).

    Frames that cannot be read are handed to ``skip(count, message)`` and
    left out, with the frame read just before them, which the damage usually
    begins inside of (its top decodes, the rest is garbage), and the frames
    after them up to the next key frame, which are decoded from the lost
    ones. After unreadable data a frame's index is taken from its timestamp
    in the file, so the frames after a damaged stretch keep their own index
    and time. A file that ends before its header's frame count is reported
    to ``skip`` as well (FFmpeg drops the frame that a truncation cuts
    short). Returns how many frames were yielded; raises SourceError when
    the file cannot be opened.
    """
    capture = open_video(path)
    own_fps = capture.get(cv2.CAP_PROP_FPS)
    own_fps = float(own_fps) if own_fps and math.isfinite(own_fps) and own_fps > 0 else 0.0
    frame_count = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
    # A frame is yielded once the next read shows that no damage follows it.
    held: tuple[np.ndarray, int] | None = None
    last = -1  # index of the last frame read
    failures = 0  # reads that failed since it
    damaged_from: int | None = None  # first index of the damaged stretch not yet reported
    yielded = 0

    def report(end: int) -> None:
        first, last_lost = damaged_from, end - 1
        what = f"frame {first}" if first == last_lost else f"frames {first} to {last_lost}"
        skip(end - first, f"video file {path}: {what} damaged or unreadable, left out")

    try:
        while True:
            try:
                ok, image = capture.read()
            except cv2.error:  # OpenCV's own AVI reader, when FFmpeg is missing, raises on a bad chunk
                ok, image = False, None
            if not ok or image is None:
                failures += 1
                if failures > min(max(frame_count - last - 1, 0) + _SPARE_FAILED_READS, _MAX_FAILED_READS):
                    break
                continue
            index = last + 1
            if failures:
                from_file = _container_index(capture, own_fps)
                index = max(index, from_file if from_file is not None else last + 1 + failures)
            if index > last + 1 and damaged_from is None:
                damaged_from = last + 1
                if held is not None:
                    damaged_from, held = held[1], None
            last, failures = index, 0
            if damaged_from is not None:
                if _predicted(capture):
                    continue
                report(index)
                damaged_from = None
            if held is not None:
                yield held[0], held[1] / fps
                yielded += 1
            held = (image, index)
        if damaged_from is not None:
            report(last + 1)
        # Failed reads at the end look like the end itself: the last frame read is kept.
        if held is not None:
            yield held[0], held[1] / fps
            yielded += 1
    finally:
        capture.release()
    if last + 1 < frame_count:
        skip(frame_count - last - 1,
             f"video file {path}: ended after {last + 1} of {frame_count} frames (damaged or truncated)")
    return yielded


class VideoFileSource(Source):
    """A video file, once or looped; ``t_source`` = frame index in the file / fps.

    ``fps`` overrides the file's own frame rate (which is used when it has one,
    else 25). A looped file is retried when it goes missing or unreadable.
    Damaged frames are left out (see ``play_video``).
    """

    def __init__(self, path: str | Path, *, fps: float | None = None, loop: bool = False) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.loop = loop
        self.retry = loop
        self.fps = self._probe(fps)

    def _probe(self, fps: float | None) -> float:
        """Check that the file opens and gives a frame; returns the frame rate to play it at."""
        capture = open_video(self.path)
        try:
            own = capture.get(cv2.CAP_PROP_FPS)
            self.frame_count = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
            ok, _ = capture.read()
        finally:
            capture.release()
        if not ok:
            raise SourceError(f"video file {self.path}: not a video (no frame could be read)")
        if fps:
            return float(fps)
        if own and math.isfinite(own) and own > 0:
            return float(own)
        logger.warning("video file %s: no frame rate in the file, using %g fps", self.path, DEFAULT_FPS)
        return DEFAULT_FPS

    def reopen(self) -> None:
        self._probe(self.fps)

    def _play_once(self) -> Iterator[tuple[np.ndarray, float | None]]:
        if not (yield from play_video(self.path, self.fps, self.skip)):
            # A file that became unreadable after opening would otherwise loop forever.
            raise SourceError(f"video file {self.path}: no frame could be read")

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        yield from self._play_once()
        while self.loop:
            yield from self._play_once()
