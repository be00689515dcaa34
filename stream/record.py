"""The recorder: scores to CSV, annotated frames to a video, optionally on screen (``fetalhead record``).

Scores come from the worker's scores socket. Frames come from the same
socket when the worker forwards them (``fetalhead worker --forward-frames``),
each just before its score; ``Recorder`` matches them by (stream, seq).

Video files: with ``--stream ID`` only that stream is recorded and the video
is written to the path as given; otherwise every stream gets its own file,
the stream id added to the name (``annotated.mp4`` -> ``annotated-probe1.mp4``).
``.mp4`` is written with the mp4v codec, ``.avi`` with MJPG, at the stream's
own frame rate (``--fps``, or estimated from the frames' ``t_source`` /
``t_capture``). Frames the worker never scored leave a hole in the seqs; the
previous frame is repeated there so the video keeps the stream's timing.

Nothing is lost silently: a frame whose score never came is written with a
grey "no score" label and counted, a score whose frame never came is counted,
and both counts are reported at the end.

``Recorder`` holds the files and is driven with protocol messages, so tests
need no sockets; ``annotate`` is the pure drawing; ``record`` is the socket
shell around a ``net.Subscriber``.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from models.classes import class_name
from models.errors import ConfigError
from models.settings import check, setting
from stream import keys, net, protocol
from stream.keys import key_name_setting, keys_setting, server_key_setting
from stream.stats import GapCounter

logger = logging.getLogger(__name__)

CSV_FIELDS = ("stream", "seq", "score", "decision", "threshold", "flags", "latency_ms", "t_capture", "t_scored",
              "model")
CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
DEFAULT_FPS = 25.0

# BGR colours of the annotation.
HEAD_COLOUR = (0, 200, 0)
NOT_HEAD_COLOUR = (0, 0, 200)
UNSCORED_COLOUR = (160, 160, 160)
_BAR_BACKGROUND = (40, 40, 40)
_THRESHOLD_MARK = (255, 255, 255)

# Frames kept to estimate a stream's frame rate before its video file is opened.
_FPS_PROBE_FRAMES = 10
# Frames waiting for their score; the worker sends a score right after its frame, so a long queue means lost scores.
_MAX_PENDING = 64
# A hole in the seqs longer than this many seconds is not filled (a restarted or stalled source).
_MAX_FILL_S = 10.0
# Scores seen before warning that no frames come (the worker is not forwarding them).
_NO_FRAMES_AFTER = 50


# --- drawing --------------------------------------------------------------------------


def _bgr(image: np.ndarray) -> np.ndarray:
    """A writable uint8 (H, W, 3) BGR copy of a grey, grey+1, BGR or BGRA image."""
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {image.shape}")


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour: tuple[int, int, int]) -> None:
    thickness = max(1, round(scale * 2))
    # A dark outline keeps the label readable on bright tissue.
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 1, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def border_width(height: int, width: int) -> int:
    """Pixels of the coloured border ``annotate`` draws on an image of that size."""
    return max(2, min(height, width) // 60)


def annotate(image: np.ndarray, score: float | None, threshold: float, decision: bool | None = None) -> np.ndarray:
    """The frame with its score drawn on: uint8 (H, W) or (H, W, 3) in -> new uint8 (H, W, 3) BGR.

    Draws a coloured border (green for Head, red for Not-Head), the label
    ``"Head 0.93"`` / ``"Not-Head 0.12"`` top left, and a horizontal score
    bar along the bottom with a white mark at ``threshold``. ``decision``
    None means ``score >= threshold``. ``score`` None marks a frame whose
    score never arrived: a grey "no score" label, no border. The input is
    not modified.
    """
    if score is not None and not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be in [0, 1] or None, got {score}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    out = _bgr(image)
    height, width = out.shape[:2]
    edge = border_width(height, width)
    scale = max(0.4, min(height, width) / 400)
    text_y = edge + max(10, round(24 * scale))
    if score is None:
        _text(out, "no score", (edge + 4, text_y), scale, UNSCORED_COLOUR)
        return out
    head = score >= threshold if decision is None else bool(decision)
    colour = HEAD_COLOUR if head else NOT_HEAD_COLOUR
    cv2.rectangle(out, (0, 0), (width - 1, height - 1), colour, edge)

    bar_h = max(4, height // 30)
    x0, x1 = edge + 4, width - edge - 5
    y1 = height - edge - 4
    y0 = y1 - bar_h
    if x1 > x0 and y0 > edge:
        cv2.rectangle(out, (x0, y0), (x1, y1), _BAR_BACKGROUND, -1)
        filled = x0 + round((x1 - x0) * score)
        if filled > x0:
            cv2.rectangle(out, (x0, y0), (filled, y1), colour, -1)
        mark = x0 + round((x1 - x0) * threshold)
        cv2.line(out, (mark, y0 - 2), (mark, y1 + 2), _THRESHOLD_MARK, max(1, edge // 2))
    _text(out, f"{class_name(head)} {score:.2f}", (edge + 4, text_y), scale, colour)
    return out


# --- files ------------------------------------------------------------------------------


def stream_path(path: Path, stream: str) -> Path:
    """``annotated.mp4`` + ``probe1`` -> ``annotated-probe1.mp4``, always next to ``path``.

    The stream id comes off the wire; its characters (``protocol`` allows
    ``A-Z a-z 0-9 _ . : -``) hold no path separator, and ``:`` becomes
    ``%3A`` because Windows reads ``name:x`` as an alternate data stream.
    """
    protocol.topic(stream)  # a ProtocolError for anything that is not a valid stream id
    return path.with_name(f"{path.stem}-{stream.replace(':', '%3A')}{path.suffix}")


def free_path(path: Path) -> Path:
    """``path`` if nothing is there, else the first free ``name-1.ext``, ``name-2.ext`` ..."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def csv_row(score: protocol.Score) -> dict[str, str]:
    """A Score as a CSV row of CSV_FIELDS; flags joined with ';'."""
    return {
        "stream": score.stream, "seq": str(score.seq), "score": f"{score.score:.6f}",
        "decision": class_name(score.decision), "threshold": f"{score.threshold:.6f}",
        "flags": ";".join(score.flags), "latency_ms": f"{score.latency * 1000:.3f}",
        "t_capture": f"{score.t_capture:.6f}", "t_scored": f"{score.t_scored:.6f}", "model": score.model,
    }


class ScoreCsv:
    """A CSV file of scores, flushed every ``flush_s`` seconds so a crash loses little.

    ``append`` adds to an existing file (the header only if it is empty),
    for a recorder restarted by ``fetalhead run``.
    """

    def __init__(self, path: Path, *, append: bool = False, flush_s: float = 1.0) -> None:
        self.path = path
        self.flush_s = flush_s
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a" if append else "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, fieldnames=CSV_FIELDS)
        if self._fh.tell() == 0:
            self._writer.writeheader()
        self._flushed_at = time.monotonic()

    def write(self, score: protocol.Score) -> None:
        self._writer.writerow(csv_row(score))
        self.rows += 1
        if time.monotonic() - self._flushed_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._fh.flush()
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def estimate_fps(seqs: Sequence[int], times: Sequence[float | None]) -> float | None:
    """Frames per second of a stream from some of its frames' seqs and times (t_source or t_capture).

    Uses the seq advance, so frames skipped in between still count. None
    when the times cannot tell (fewer than two, or not increasing).
    """
    if len(seqs) < 2 or any(t is None for t in times):
        return None
    span = times[-1] - times[0]
    frames = seqs[-1] - seqs[0]
    if span <= 0 or frames <= 0:
        return None
    fps = frames / span
    return fps if 0.1 <= fps <= 1000 else None


class StreamVideo:
    """The annotated video of one stream.

    The file is opened at the first frames' size once the frame rate is
    known (``fps``, else estimated from the first frames). Frames of another
    size are resized to it; holes in the seqs are filled by repeating the
    previous frame, up to ``_MAX_FILL_S`` seconds.
    """

    def __init__(self, path: Path, fps: float | None = None) -> None:
        if path.suffix.lower() not in CODECS:
            raise ConfigError(f"video {path}: unknown container {path.suffix!r} (use {', '.join(CODECS)})")
        self.path = path
        self.fps = fps
        self.frames = 0
        self.filled = 0
        self.resized = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._last_seq: int | None = None
        self._last_image: np.ndarray | None = None
        self._probe: list[tuple[int, np.ndarray, float | None]] = []

    def add(self, seq: int, image: np.ndarray, t: float | None) -> None:
        """Append frame ``seq`` (uint8 (H, W, 3) BGR); ``t`` its t_source or t_capture."""
        if self._writer is None:
            self._probe.append((seq, image, t))
            if self.fps is None and len(self._probe) < _FPS_PROBE_FRAMES:
                return
            self._open()
        else:
            self._write(seq, image)

    def _open(self) -> None:
        if self.fps is None:
            fps = estimate_fps([s for s, _, _ in self._probe], [t for _, _, t in self._probe])
            self.fps = fps if fps is not None else DEFAULT_FPS
            logger.info("video %s: %.2f fps (%s)", self.path, self.fps,
                        "estimated from the frames' times" if fps is not None else "default; give --fps")
        height, width = self._probe[0][1].shape[:2]
        self._size = (width, height)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()])
        writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self._size, True)
        if not writer.isOpened():
            writer.release()
            raise ConfigError(f"video {self.path}: OpenCV cannot write {CODECS[self.path.suffix.lower()]} here")
        self._writer = writer
        probe, self._probe = self._probe, []
        for seq, image, _ in probe:
            self._write(seq, image)

    def _write(self, seq: int, image: np.ndarray) -> None:
        assert self._writer is not None and self._size is not None and self.fps is not None
        if (image.shape[1], image.shape[0]) != self._size:
            if not self.resized:
                logger.warning("video %s: frame size changed from %dx%d to %dx%d; resizing", self.path,
                               *self._size, image.shape[1], image.shape[0])
            self.resized += 1
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if self._last_seq is not None and self._last_image is not None:
            hole = seq - self._last_seq - 1
            if 0 < hole <= _MAX_FILL_S * self.fps:
                for _ in range(hole):
                    self._writer.write(self._last_image)
                self.filled += hole
        self._writer.write(image)
        self.frames += 1
        self._last_seq, self._last_image = seq, image

    def close(self) -> None:
        """Write what is still held for the frame-rate estimate, and finish the file."""
        if self._writer is None and self._probe:
            self._open()
        if self._writer is not None:
            self._writer.release()
            self._writer = None


# --- the recorder ---------------------------------------------------------------------


def gui_problem(build_info: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """Why OpenCV windows cannot open here, or None when they can (as far as can be told)."""
    info = cv2.getBuildInformation() if build_info is None else build_info
    env = dict(os.environ) if env is None else env
    match = re.search(r"^\s*GUI:\s*(\S+)", info, re.MULTILINE)
    if match is not None and match.group(1).upper() == "NONE":
        return "this OpenCV has no GUI support (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set)"
    return None


_SHOW_HOWTO = ("for windows, replace opencv-python-headless with opencv-python "
               "(pip uninstall opencv-python-headless && pip install opencv-python) and run with a display")


@dataclasses.dataclass(frozen=True)
class RecordConfig:
    """Settings of ``fetalhead record`` (a ``[record]`` TOML table).

    At least one of ``csv``, ``video`` and ``show``. ``stream`` None records
    every stream (one video per stream, see the module doc). ``fps`` None
    estimates each stream's rate. ``append`` adds to an existing CSV and
    writes videos next to existing ones instead of over them. ``hwm`` is the
    receive queue in messages: frames and scores must not be dropped, so it
    is longer than a viewer's. ``keys`` makes it a CURVE client, as for
    ``fetalhead watch``.
    """

    sub: str = setting(net.DEFAULT_SCORES, "scores address to connect to")
    csv: Path | None = setting(None, "write every score to this CSV file")
    video: Path | None = setting(None, "write annotated frames to this .mp4 (mp4v) or .avi (MJPG); needs worker "
                                       "--forward-frames; without --stream one file per stream, named NAME-STREAM.EXT")
    show: bool = setting(False, "also show the annotated frames in a window (needs opencv-python and a display)")
    stream: str | None = setting(None, "record only this stream (the video is written to --video as given)",
                                 shown="every stream")
    until_eos: bool = setting(False, "exit when every stream seen has ended, instead of running until Ctrl-C")
    fps: float | None = setting(None, "video frame rate", shown="estimated from the frames' times")
    append: bool = setting(False, "append to an existing CSV and keep existing videos (write NAME-1.EXT ...)")
    flush_s: float = setting(1.0, "seconds between flushes of the CSV file", flag="flush-interval")
    hwm: int = setting(256, "receive queue in messages")
    keys: Path | None = keys_setting()
    key_name: str | None = key_name_setting("client")
    server_key: Path | None = server_key_setting("worker")

    def __post_init__(self) -> None:
        keys.check_options(self.keys, key_name=self.key_name, server_key=self.server_key)
        check(self.csv is not None or self.video is not None or self.show,
              "nothing to record: give --csv, --video or --show")
        protocol.check_stream_id(self.stream)
        if self.video is not None:
            check(self.video.suffix.lower() in CODECS,
                  f"video: {str(self.video)!r} must end in {' or '.join(CODECS)}")
        check(self.fps is None or 0 < self.fps <= 1000, f"fps: must be in (0, 1000], got {self.fps}")
        check(self.flush_s > 0, f"flush_s: must be > 0, got {self.flush_s}")
        check(self.hwm >= 1, f"hwm: must be >= 1, got {self.hwm}")

    @property
    def needs_frames(self) -> bool:
        return self.video is not None or self.show


@dataclasses.dataclass(frozen=True)
class RecordStats:
    """What a recording wrote and what it could not match.

    ``unscored_frames``: frames written without a score (it never came);
    ``frameless_scores``: scores in the CSV whose frame never came;
    ``missing_seqs``: seqs absent from the scores (dropped or lost upstream).
    """

    scores: int
    frames: dict[str, int]
    unscored_frames: int
    frameless_scores: int
    missing_seqs: int
    streams_ended: tuple[str, ...]
    csv: Path | None
    videos: dict[str, Path]
    rejected: int = 0


class Recorder:
    """Scores to CSV and matched frames to videos/windows, driven by protocol messages.

    ``handle(msg)`` takes any message; ``close()`` writes what is pending,
    finishes every file and returns RecordStats. Usable as a context manager.
    """

    def __init__(self, config: RecordConfig) -> None:
        self.config = config
        self.csv = ScoreCsv(config.csv, append=config.append, flush_s=config.flush_s) if config.csv else None
        self.videos: dict[str, StreamVideo] = {}
        self.frames: dict[str, collections.OrderedDict[int, protocol.Frame]] = collections.defaultdict(
            collections.OrderedDict)
        self.scores: dict[str, collections.OrderedDict[int, protocol.Score]] = collections.defaultdict(
            collections.OrderedDict)
        self.gaps: dict[str, GapCounter] = collections.defaultdict(GapCounter)
        self.score_count: collections.Counter[str] = collections.Counter()
        self.frame_count: collections.Counter[str] = collections.Counter()
        self.ended: dict[str, bool] = {}
        self.unscored_frames = 0
        self.frameless_scores = 0
        self.window: str | None = None
        self._warned_no_frames = False
        self._closed: RecordStats | None = None
        if config.show:
            self._open_window()

    # -- windows

    def _open_window(self) -> None:
        problem = gui_problem()
        if problem is None:
            try:
                cv2.namedWindow("fetalhead", cv2.WINDOW_NORMAL)
                self.window = "fetalhead"
            except cv2.error as exc:
                problem = str(exc).strip().splitlines()[-1]
        if problem is not None:
            logger.warning("--show: cannot open a window: %s; recording goes on without one (%s)",
                           problem, _SHOW_HOWTO)

    def _show(self, image: np.ndarray) -> None:
        if self.window is None:
            return
        cv2.imshow(self.window, image)
        # waitKey pumps the GUI event loop; without it the window never repaints.
        cv2.waitKey(1)

    # -- messages

    def _wanted(self, stream: str) -> bool:
        return self.config.stream is None or stream == self.config.stream

    def handle(self, msg: protocol.Message) -> None:
        """Fold one message in: Score -> CSV and match, Frame -> match, EndOfStream -> flush that stream."""
        if protocol.is_process_id(msg.stream) or not self._wanted(msg.stream):
            return
        if isinstance(msg, protocol.Score):
            self._score(msg)
        elif isinstance(msg, protocol.Frame):
            if self.config.needs_frames:
                self._frame(msg)
        elif isinstance(msg, protocol.EndOfStream):
            self._flush_stream(msg.stream)
            self.ended[msg.stream] = True
            if self.csv is not None:
                self.csv.flush()
            logger.info("stream %s ended (%s): %d scores", msg.stream, msg.reason, self.score_count[msg.stream])

    def _score(self, score: protocol.Score) -> None:
        self.ended[score.stream] = False
        self.gaps[score.stream].add(score.seq)
        self.score_count[score.stream] += 1
        if self.csv is not None:
            self.csv.write(score)
        if not self.config.needs_frames:
            return
        frames = self.frames[score.stream]
        # Scores come in seq order, so a frame older than this score will never get one.
        for seq in [s for s in frames if s < score.seq]:
            self._emit(frames.pop(seq), None)
        frame = frames.pop(score.seq, None)
        if frame is not None:
            self._emit(frame, score)
            return
        self.scores[score.stream][score.seq] = score
        self._check_frames_come(score.stream)

    def _frame(self, frame: protocol.Frame) -> None:
        self.ended[frame.stream] = False
        scores = self.scores[frame.stream]
        # Frames come in seq order too: a waiting score older than this frame has lost its frame.
        for seq in [s for s in scores if s < frame.seq]:
            del scores[seq]
            self.frameless_scores += 1
        score = scores.pop(frame.seq, None)
        if score is not None:
            self._emit(frame, score)
            return
        frames = self.frames[frame.stream]
        frames[frame.seq] = frame
        while len(frames) > _MAX_PENDING:
            _, oldest = frames.popitem(last=False)
            self._emit(oldest, None)

    def _check_frames_come(self, stream: str) -> None:
        if (not self._warned_no_frames and self.frame_count[stream] == 0
                and len(self.scores[stream]) >= _NO_FRAMES_AFTER):
            self._warned_no_frames = True
            logger.warning("stream %s: %d scores but no frames; start the worker with --forward-frames "
                           "to record video", stream, len(self.scores[stream]))
        # Scores waiting for frames that do not come must not grow without bound.
        scores = self.scores[stream]
        while len(scores) > _MAX_PENDING:
            scores.popitem(last=False)
            self.frameless_scores += 1

    def _emit(self, frame: protocol.Frame, score: protocol.Score | None) -> None:
        """Annotate and write one frame (score None: its score never came)."""
        try:
            image = frame.image()
        except protocol.ProtocolError as exc:
            logger.warning("frame %s#%d not recorded: %s", frame.stream, frame.seq, exc)
            return
        if score is None:
            self.unscored_frames += 1
            annotated = annotate(image, None, 0.5)
        else:
            annotated = annotate(image, score.score, score.threshold, score.decision)
        self.frame_count[frame.stream] += 1
        if self.config.video is not None:
            video = self.videos.get(frame.stream)
            if video is None:
                path = self.config.video if self.config.stream else stream_path(self.config.video, frame.stream)
                if self.config.append:
                    path = free_path(path)
                video = self.videos[frame.stream] = StreamVideo(path, self.config.fps)
            video.add(frame.seq, annotated, frame.t_source if frame.t_source is not None else frame.t_capture)
        self._show(annotated)

    def _flush_stream(self, stream: str) -> None:
        """Write the frames still waiting for a score, and count the scores still waiting for a frame."""
        frames = self.frames.pop(stream, {})
        for frame in frames.values():
            self._emit(frame, None)
        self.frameless_scores += len(self.scores.pop(stream, {}))

    @property
    def all_ended(self) -> bool:
        """True when at least one stream was seen and every stream seen has ended."""
        return bool(self.ended) and all(self.ended.values())

    def close(self) -> RecordStats:
        """Write pending frames, finish every file and report what could not be matched; idempotent."""
        if self._closed is not None:
            return self._closed
        try:
            for stream in list(self.frames) + list(self.scores):
                self._flush_stream(stream)
        finally:
            for video in self.videos.values():
                try:
                    video.close()
                except Exception:  # one broken writer must not keep the others or the CSV open
                    logger.exception("video %s: could not be finished", video.path)
            if self.csv is not None:
                self.csv.close()
            if self.window is not None:
                cv2.destroyWindow(self.window)
        stats = RecordStats(
            scores=sum(self.score_count.values()), frames=dict(self.frame_count),
            unscored_frames=self.unscored_frames, frameless_scores=self.frameless_scores,
            missing_seqs=sum(g.missing for g in self.gaps.values()),
            streams_ended=tuple(sorted(s for s, ended in self.ended.items() if ended)),
            csv=self.config.csv, videos={s: v.path for s, v in self.videos.items()})
        self._closed = stats
        return stats

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def report(stats: RecordStats) -> None:
    """Log what a recording wrote and, as warnings, what it could not match."""
    if stats.csv is not None:
        logger.info("%d scores written to %s", stats.scores, stats.csv)
    for stream, path in stats.videos.items():
        logger.info("stream %s: %d frames written to %s", stream, stats.frames.get(stream, 0), path)
    if stats.unscored_frames:
        logger.warning("%d frames had no score; written with a 'no score' label", stats.unscored_frames)
    if stats.frameless_scores:
        logger.warning("%d scores had no frame (not in the video)", stats.frameless_scores)
    if stats.missing_seqs:
        logger.warning("%d seqs missing between scores (frames dropped or lost upstream)", stats.missing_seqs)
    if stats.rejected:
        logger.warning("%d messages could not be decoded", stats.rejected)


def record(config: RecordConfig, stop_event: threading.Event | None = None) -> RecordStats:
    """Record from ``config.sub`` until stopped (or, with ``until_eos``, every stream seen has ended).

    Every file is finished on the way out, whatever ends the loop.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    curve = keys.client_keys(config.keys, config.key_name or "client", "worker", config.server_key)
    with net.Subscriber(config.sub, config.stream, hwm=config.hwm, curve=curve) as sub:
        recorder = Recorder(config)
        try:
            logger.info("recording %s from %s", config.stream or "every stream", config.sub)
            while not stop.is_set() and not (config.until_eos and recorder.all_ended):
                for msg in sub.receive(0.1):
                    recorder.handle(msg)
        finally:
            stats = dataclasses.replace(recorder.close(), rejected=sub.rejected)
    report(stats)
    return stats
