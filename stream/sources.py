"""Frame sources for the capture: what a source is, and the two OpenCV ones (devices, video files).

A source is iterated for ``(image, t_source)`` pairs: ``image`` is uint8
(H, W) or (H, W, 3) BGR as OpenCV gives it, ``t_source`` the frame's time in
seconds on the source's own clock (frame index / fps for a file; None for a
device, whose frames are stamped on capture). Sources do no pacing and open
no sockets: ``stream.capture`` does both. Sources backed by training data
(scan folders, the synthetic phantom) live with the command that opens
them, ``tools.sources``, so this package needs nothing of ``train``.

A source checks its input when it is made, and every bad input is a
one-line ``SourceError`` naming the source. A file that breaks in the middle
ends the stream with a warning (``Source.warn``, which the capture also
publishes as a Status) after its last good frame. A device that fails
raises ``SourceError`` from the iteration, and ``reopen`` tries it again
(``Source.retry`` tells the capture loop to do so with backoff); so does a
looped file that goes missing or unreadable, since it too is meant to run
until stopped.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from models.errors import FetalheadError

logger = logging.getLogger(__name__)

# The frame rate of a file that does not say its own.
DEFAULT_FPS = 25.0


class SourceError(FetalheadError):
    """A frame source that cannot be opened or read; the message is one line."""


class Source:
    """Base of all sources: iterate for (uint8 image, t_source); close when done.

    ``name`` is the default stream id, ``fps`` the nominal frame rate (None
    when unknown), ``retry`` whether a read failure is worth retrying,
    ``realtime`` whether frames come at their own pace (a device: pacing
    them again would only add latency). ``on_warning``, when set, is called
    with every warning's text as well.
    """

    name: str = "source"
    fps: float | None = None
    retry: bool = False
    realtime: bool = False
    on_warning: Callable[[str], None] | None = None

    def warn(self, message: str) -> None:
        """Log a problem that does not stop the source, and hand it to ``on_warning``."""
        logger.warning("%s", message)
        if self.on_warning is not None:
            self.on_warning(message)

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


class VideoFileSource(Source):
    """A video file, once or looped; ``t_source`` = frame index in the file / fps.

    ``fps`` overrides the file's own frame rate (which is used when it has one,
    else 25). A looped file is retried when it goes missing or unreadable.
    """

    def __init__(self, path: str | Path, *, fps: float | None = None, loop: bool = False) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.loop = loop
        self.retry = loop
        self._warned: set[str] = set()
        self.fps = self._probe(fps)

    def _probe(self, fps: float | None) -> float:
        """Check that the file opens and gives a frame; returns the frame rate to play it at."""
        capture = self._open()
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

    def _open(self) -> cv2.VideoCapture:
        if not self.path.exists():
            raise SourceError(f"video file {self.path}: not found")
        if self.path.is_dir():
            raise SourceError(f"video file {self.path}: is a folder but not a scan folder")
        with _Quiet():
            capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"video file {self.path}: not a video (OpenCV cannot open it)")
        return capture

    def _play_once(self) -> Iterator[tuple[np.ndarray, float | None]]:
        capture = self._open()
        index = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                yield frame, index / self.fps
                index += 1
        finally:
            capture.release()
        if index < self.frame_count:
            message = f"video file {self.path}: ended after {index} of {self.frame_count} frames (damaged or truncated)"
            # A looped damaged file would say the same on every pass.
            if message not in self._warned:
                self._warned.add(message)
                self.warn(message)
        if index == 0:
            # A file that became unreadable after opening would otherwise loop forever.
            raise SourceError(f"video file {self.path}: no frame could be read")

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        yield from self._play_once()
        while self.loop:
            yield from self._play_once()
