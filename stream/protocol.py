"""The wire format between capture, worker and consumers: pure, no sockets.

A ZeroMQ message is a single part (so a subscriber may use ZMQ_CONFLATE)::

    stream id (UTF-8) + b"\\x00" + one msgpack map {"v": 1, "type": ..., "stream": ..., fields...}

The stream id in front is the ZeroMQ topic: subscribing to ``topic("probe1")``
gets exactly stream ``probe1``, subscribing to ``b""`` gets everything.
Stream ids that start with ``_`` belong to processes (heartbeats, process
status), e.g. ``_worker`` or ``_capture.probe1``; data streams never start with
``_``, so subscribing to ``b"_"`` gets every process-level message.

docs/protocol.md is the specification; this module is its reference
implementation. ``encode`` and ``decode`` are pure functions over bytes, and
``decode`` raises nothing but ProtocolError for any input.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import operator
import re
import reprlib
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import msgpack
import numpy as np

from models.errors import ConfigError, FetalheadError

VERSION = 1
SUPPORTED_VERSIONS = (1,)
DEFAULT_MAX_SIZE = 64 * 1024 * 1024

# A process sends a heartbeat this often; a consumer that has seen none for
# HEARTBEAT_MISSES_DEAD intervals treats the process as dead.
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_MISSES_DEAD = 3
DEAD_AFTER_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_MISSES_DEAD

TOPIC_SEPARATOR = b"\x00"
DTYPES = ("uint8",)
ENCODINGS = ("raw", "jpeg", "png")
CHANNELS = (1, 3, 4)
LEVELS = ("info", "warning", "error")
FLAG_WARMUP = "warmup"
FLAG_GAP = "gap"

_STREAM_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_STREAM_ID = 64
# Caps for msgpack's own allocation: no field of any message needs more than
# this many characters or items, so a hostile length prefix costs nothing.
_MAX_STR = 64 * 1024
_MAX_ITEMS = 1024
# No message nests deeper than 2 (a map holding arrays or a map); 8 leaves room for additive
# fields. msgpack's own limit is about 1,000, deep enough for Python's repr of the value to
# overflow its stack.
MAX_DEPTH = 8
# Times are unix seconds; up to 1e10 (the year 2286) every difference of two is finite, so
# latencies and percentiles over them never overflow to inf.
MAX_TIME = 1e10
# Integers must fit a signed 64-bit field so clients in other languages can hold them.
_INT64 = 2**63


# What is wrong with a rejected message, as ``ProtocolError.kind``; receivers count
# rejections per kind (``rejected.<kind>`` in heartbeat stats), so the classes must
# not depend on the wording of the error text.
KIND_OVERSIZED = "oversized"          # over the size cap, or a frame whose image would be
KIND_NO_TOPIC = "no_topic"            # no NUL-terminated topic, or not a valid stream id
KIND_NOT_MSGPACK = "not_msgpack"      # the body is not exactly one msgpack value
KIND_NOT_A_MAP = "not_a_map"          # the body is msgpack, but not a map
KIND_VERSION = "version"              # "v" missing or not a supported version
KIND_UNKNOWN_TYPE = "unknown_type"    # "type" is not a message type of this version
KIND_BAD_FIELD = "bad_field"          # a missing field, or one of the wrong type or range
KIND_EMPTY_FRAME = "empty_frame"      # a frame with a zero dimension or no pixels
KIND_BAD_PIXELS = "bad_pixels"        # pixels that disagree with shape/dtype, or do not decode
KIND_TOO_DEEP = "too_deep"            # the body nests arrays or maps deeper than MAX_DEPTH
KINDS = (KIND_OVERSIZED, KIND_NO_TOPIC, KIND_NOT_MSGPACK, KIND_NOT_A_MAP, KIND_VERSION, KIND_UNKNOWN_TYPE,
         KIND_BAD_FIELD, KIND_EMPTY_FRAME, KIND_BAD_PIXELS, KIND_TOO_DEEP)


class ProtocolError(FetalheadError, ValueError):
    """A message that is not valid protocol; the message is one line naming what is wrong.

    ``kind`` is the class of the problem, one of ``KINDS`` for errors of this
    module (a receiver may use its own, e.g. ``unexpected_type``).
    """

    def __init__(self, message: str, kind: str = KIND_BAD_FIELD) -> None:
        super().__init__(message)
        self.kind = kind


# --- field checks: each returns the value in its canonical Python type -----------------


class _Brief(reprlib.Repr):
    """A repr that reads only a bounded part of the value: a hostile field costs nothing to show."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 60

    # Repr shows bytes in full by default; cut them like strings.
    repr_bytes = reprlib.Repr.repr_str


_brief = _Brief()


def _fail(where: str, what: str, value: Any, kind: str = KIND_BAD_FIELD) -> ProtocolError:
    text = _brief.repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return ProtocolError(f"{where} must be {what}, got {text}", kind)


def _int(value: Any, where: str, *, minimum: int = -_INT64) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise _fail(where, "an integer", value)
    value = operator.index(value)
    if not minimum <= value < _INT64:
        raise _fail(where, f"an integer in [{minimum}, 2**63)", value)
    return value


def _float(value: Any, where: str, *, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(where, "a number", value)
    value = float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise _fail(where, f"a finite number in [{lo}, {hi}]", value)
    return value


def _time(value: Any, where: str) -> float:
    return _float(value, where, lo=0.0, hi=MAX_TIME)


def _str(value: Any, where: str, *, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, "a non-empty string", value)
    if choices is not None and value not in choices:
        raise _fail(where, f"one of {', '.join(choices)}", value)
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(where, "true or false", value)
    return bool(value)


def _stream(value: Any, where: str, *, process: bool | None) -> str:
    """A stream id; ``process`` True/False demands a process-level/data id, None allows both."""
    if not isinstance(value, str) or not _STREAM_ID.fullmatch(value):
        raise _fail(where, "1..64 characters of A-Z a-z 0-9 _ . : -", value)
    if process is True and not is_process_id(value):
        raise _fail(where, "a process-level id starting with '_'", value)
    if process is False and is_process_id(value):
        raise _fail(where, "a data stream id not starting with '_'", value)
    return value


def _tuple(value: Any, where: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise _fail(where, "an array", value)
    return tuple(value)


def _set(obj: Any, name: str, value: Any) -> None:
    # Frozen dataclasses: __post_init__ stores the canonical (checked, coerced) value.
    object.__setattr__(obj, name, value)


def is_process_id(stream: str) -> bool:
    """True for process-level ids (heartbeats, process status), which start with '_'."""
    return stream.startswith("_")


def process_id(role: str, name: str | None = None) -> str:
    """The process-level stream id of a process: ``_worker``, ``_capture.probe1`` ..."""
    return _stream(f"_{role}" if name is None else f"_{role}.{name}", "process id", process=True)


def topic(stream: str) -> bytes:
    """The topic prefix of stream ``stream``: its UTF-8 bytes plus NUL, for SUBSCRIBE."""
    return _stream(stream, "stream", process=None).encode() + TOPIC_SEPARATOR


def check_stream_id(stream: str | None) -> None:
    """ConfigError unless ``stream`` is None or a valid data stream id (a setting, not a message field)."""
    if stream is None:
        return
    try:
        topic(stream)
    except ProtocolError as exc:
        raise ConfigError(f"stream: {exc}") from None
    if is_process_id(stream):
        raise ConfigError(f"stream: {stream!r} is a process id; data streams never start with '_'")


# --- messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One image of one stream.

    ``pixels`` holds ``shape``/``dtype`` pixels as-is for ``encoding="raw"``
    (C order, channels interleaved, colour in OpenCV's BGR/BGRA order), or a
    JPEG/PNG file. ``t_capture`` is unix seconds when the frame was grabbed,
    ``t_source`` its position in seconds in a file source (None for live),
    ``spacing`` the (row, col) pixel size in mm when known.
    """

    TYPE: ClassVar[str] = "frame"

    stream: str
    seq: int
    t_capture: float
    t_source: float | None
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    spacing: tuple[float, float] | None
    pixels: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _set(self, "stream", _stream(self.stream, "frame.stream", process=False))
        _set(self, "seq", _int(self.seq, "frame.seq", minimum=0))
        _set(self, "t_capture", _time(self.t_capture, "frame.t_capture"))
        if self.t_source is not None:
            _set(self, "t_source", _time(self.t_source, "frame.t_source"))
        shape = tuple(_int(d, "frame.shape item", minimum=0) for d in _tuple(self.shape, "frame.shape"))
        if len(shape) not in (2, 3):
            raise _fail("frame.shape", "(H, W) or (H, W, C)", shape)
        if 0 in shape:
            raise ProtocolError(f"empty frame: shape {shape} has a zero dimension", KIND_EMPTY_FRAME)
        if len(shape) == 3 and shape[2] not in CHANNELS:
            raise _fail("frame.shape channels", f"one of {CHANNELS}", shape[2])
        _set(self, "shape", shape)
        _str(self.dtype, "frame.dtype", choices=DTYPES)
        _str(self.encoding, "frame.encoding", choices=ENCODINGS)
        if self.spacing is not None:
            spacing = tuple(_float(s, "frame.spacing item", lo=1e-12) for s in _tuple(self.spacing, "frame.spacing"))
            if len(spacing) != 2:
                raise _fail("frame.spacing", "(row_mm, col_mm)", spacing)
            _set(self, "spacing", spacing)
        if not isinstance(self.pixels, bytes):
            raise _fail("frame.pixels", "bytes", type(self.pixels).__name__)
        if not self.pixels:
            raise ProtocolError("empty frame: no pixels", KIND_EMPTY_FRAME)
        if self.encoding == "raw" and len(self.pixels) != self.image_nbytes:
            raise ProtocolError(f"frame.pixels has {len(self.pixels)} bytes, but raw {self.dtype} {shape} "
                                f"needs {self.image_nbytes}", KIND_BAD_PIXELS)

    @property
    def image_nbytes(self) -> int:
        """Bytes of the decoded image: prod(shape) * dtype size."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def image(self) -> np.ndarray:
        """The pixels as an array of ``shape`` and ``dtype``: uint8 (H, W) or (H, W, C).

        Raw frames are zero-copy: a read-only view of ``pixels`` (``.copy()``
        it to write). JPEG and PNG are decoded with OpenCV (colour in BGR
        order); a file whose size, channels or dtype disagree with ``shape``
        and ``dtype`` is a ProtocolError, checked before decoding so a small
        file cannot make OpenCV allocate a huge image.
        """
        if self.encoding == "raw":
            return np.frombuffer(self.pixels, dtype=self.dtype).reshape(self.shape)
        size = _jpeg_size(self.pixels) if self.encoding == "jpeg" else _png_size(self.pixels)
        if size is None:
            raise ProtocolError(f"frame {self.stream}#{self.seq}: pixels are not a {self.encoding} file",
                                KIND_BAD_PIXELS)
        if size != self.shape[:2]:
            raise ProtocolError(f"frame {self.stream}#{self.seq}: {self.encoding} is {size[0]}x{size[1]}, "
                                f"shape says {self.shape[0]}x{self.shape[1]}", KIND_BAD_PIXELS)
        try:
            image = cv2.imdecode(np.frombuffer(self.pixels, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:
            raise ProtocolError(f"frame {self.stream}#{self.seq}: {self.encoding} does not decode "
                                f"({str(exc).strip().splitlines()[-1]})", KIND_BAD_PIXELS) from None
        if image is None:
            raise ProtocolError(f"frame {self.stream}#{self.seq}: {self.encoding} does not decode", KIND_BAD_PIXELS)
        # OpenCV returns single-channel images as (H, W); the sender may have said (H, W, 1).
        if image.ndim == 2 and len(self.shape) == 3 and self.shape[2] == 1:
            image = image[:, :, None]
        if image.shape != self.shape or image.dtype != np.dtype(self.dtype):
            raise ProtocolError(f"frame {self.stream}#{self.seq}: {self.encoding} decodes to {image.dtype} "
                                f"{image.shape}, header says {self.dtype} {self.shape}", KIND_BAD_PIXELS)
        return image


@dataclass(frozen=True)
class Score:
    """The worker's verdict on frame ``seq`` of ``stream``.

    ``score`` in [0, 1] is compared with ``threshold`` to give ``decision``.
    Times are unix seconds: ``t_capture`` copied from the frame, ``t_received``
    when the worker got it, ``t_scored`` when the score was ready;
    ``latency = t_scored - t_capture``. ``window`` counts the frames behind
    the score (the scored one included); ``flags`` holds ``"warmup"`` while
    fewer than the model's window are behind it and ``"gap"`` when frames
    are missing inside it. ``dropped`` counts frames of the stream the
    worker never scored so far.
    """

    TYPE: ClassVar[str] = "score"

    stream: str
    seq: int
    score: float
    decision: bool
    threshold: float
    model: str
    t_capture: float
    t_received: float
    t_scored: float
    latency: float
    flags: tuple[str, ...]
    window: int
    dropped: int

    def __post_init__(self) -> None:
        _set(self, "stream", _stream(self.stream, "score.stream", process=False))
        _set(self, "seq", _int(self.seq, "score.seq", minimum=0))
        _set(self, "score", _float(self.score, "score.score", lo=0.0, hi=1.0))
        _set(self, "decision", _bool(self.decision, "score.decision"))
        _set(self, "threshold", _float(self.threshold, "score.threshold", lo=0.0, hi=1.0))
        _str(self.model, "score.model")
        for name in ("t_capture", "t_received", "t_scored"):
            _set(self, name, _time(getattr(self, name), f"score.{name}"))
        _set(self, "latency", _float(self.latency, "score.latency", lo=-MAX_TIME, hi=MAX_TIME))
        _set(self, "flags", tuple(_str(f, "score.flags item") for f in _tuple(self.flags, "score.flags")))
        _set(self, "window", _int(self.window, "score.window", minimum=1))
        _set(self, "dropped", _int(self.dropped, "score.dropped", minimum=0))


@dataclass(frozen=True)
class EndOfStream:
    """Stream ``stream`` has ended after frame ``last_seq`` (None: no frame was sent).

    ``reason`` is ``"eof"`` (file source finished), ``"stopped"`` (asked to
    stop), ``"error"`` or another short word; ``t`` is unix seconds.
    """

    TYPE: ClassVar[str] = "end_of_stream"

    stream: str
    last_seq: int | None
    reason: str
    t: float

    def __post_init__(self) -> None:
        _set(self, "stream", _stream(self.stream, "end_of_stream.stream", process=False))
        if self.last_seq is not None:
            _set(self, "last_seq", _int(self.last_seq, "end_of_stream.last_seq", minimum=0))
        _str(self.reason, "end_of_stream.reason")
        _set(self, "t", _time(self.t, "end_of_stream.t"))


@dataclass(frozen=True)
class Heartbeat:
    """A process is alive; ``stats`` are its health figures.

    ``stream`` is the process-level id (``_worker``, ``_capture.<name>``),
    ``role`` e.g. ``"capture"`` or ``"worker"``, ``t`` unix seconds.
    ``stats`` maps flat names to numbers, e.g. ``frames_in``, ``frames_out``,
    ``dropped``, ``rejected.<class>``, ``fps_in``, ``latency_p50`` (seconds).
    ``stats["loading"]`` is 1 while the process is still starting (a worker
    loading and warming up its model): alive, not yet ready.
    """

    TYPE: ClassVar[str] = "heartbeat"

    stream: str
    role: str
    pid: int
    t: float
    stats: dict[str, int | float]

    def __post_init__(self) -> None:
        _set(self, "stream", _stream(self.stream, "heartbeat.stream", process=True))
        _str(self.role, "heartbeat.role")
        _set(self, "pid", _int(self.pid, "heartbeat.pid", minimum=0))
        _set(self, "t", _time(self.t, "heartbeat.t"))
        if not isinstance(self.stats, dict):
            raise _fail("heartbeat.stats", "a map", self.stats)
        stats: dict[str, int | float] = {}
        for key, value in self.stats.items():
            where = f"heartbeat.stats[{key!r}]"
            _str(key, "heartbeat.stats key")
            is_int = hasattr(value, "__index__") and not isinstance(value, (bool, np.bool_))
            stats[key] = _int(value, where) if is_int else _float(value, where)
        # A copy, so the caller's live counters cannot change a sent message.
        _set(self, "stats", stats)

    @property
    def loading(self) -> bool:
        """The process is alive but still starting up."""
        return bool(self.stats.get("loading", 0))


@dataclass(frozen=True)
class Status:
    """A human-readable event of a stream or process, e.g. ``"device 0 lost, retrying in 2.0 s"``.

    ``level`` is ``"info"``, ``"warning"`` or ``"error"``; ``t`` unix seconds.
    """

    TYPE: ClassVar[str] = "status"

    stream: str
    level: str
    message: str
    t: float

    def __post_init__(self) -> None:
        _set(self, "stream", _stream(self.stream, "status.stream", process=None))
        _str(self.level, "status.level", choices=LEVELS)
        if not isinstance(self.message, str):
            raise _fail("status.message", "a string", self.message)
        _set(self, "t", _time(self.t, "status.t"))


EPISODE_KINDS = ("start", "end")


@dataclass(frozen=True)
class Episode:
    """A head episode of ``stream`` began (``kind`` ``"start"``) or ended (``"end"``).

    An episode is a run of frames in which the smoothed verdict
    (``models.episodes``, the live view's hysteresis at the worker's hold)
    is Head. ``first_seq`` / ``t_first`` are its first frame (back-dated to
    the first score of the run that turned the verdict) and that frame's
    ``t_capture``; ``last_seq`` / ``t_last`` its last Head-scored frame
    (null on start). ``peak_score`` / ``peak_seq`` are the highest score so
    far (on start: of the frames that turned the verdict), ``best_seq`` the
    frame chosen as the episode's best. ``threshold`` and ``model`` are
    those of the scores it was made of.
    """

    TYPE: ClassVar[str] = "episode"

    stream: str
    kind: str
    first_seq: int
    last_seq: int | None
    peak_score: float
    peak_seq: int
    best_seq: int
    t_first: float
    t_last: float | None
    threshold: float
    model: str

    def __post_init__(self) -> None:
        _set(self, "stream", _stream(self.stream, "episode.stream", process=False))
        _str(self.kind, "episode.kind", choices=EPISODE_KINDS)
        first = _int(self.first_seq, "episode.first_seq", minimum=0)
        _set(self, "first_seq", first)
        if (self.last_seq is None) != (self.kind == "start"):
            raise _fail("episode.last_seq", "null on start and an integer on end", self.last_seq)
        if (self.t_last is None) != (self.kind == "start"):
            raise _fail("episode.t_last", "null on start and a time on end", self.t_last)
        last = None
        if self.last_seq is not None:
            last = _int(self.last_seq, "episode.last_seq", minimum=first)
            _set(self, "last_seq", last)
            _set(self, "t_last", _time(self.t_last, "episode.t_last"))
        _set(self, "peak_score", _float(self.peak_score, "episode.peak_score", lo=0.0, hi=1.0))
        for name in ("peak_seq", "best_seq"):
            value = _int(getattr(self, name), f"episode.{name}", minimum=first)
            if last is not None and value > last:
                raise _fail(f"episode.{name}", f"within first_seq..last_seq ({first}..{last})", value)
            _set(self, name, value)
        _set(self, "t_first", _time(self.t_first, "episode.t_first"))
        _set(self, "threshold", _float(self.threshold, "episode.threshold", lo=0.0, hi=1.0))
        _str(self.model, "episode.model")


MAX_SALIENCY_GRID = 256  # cells a side: far above any backbone's map (VGG19's is 14 at 224 px)


@dataclass(frozen=True)
class Saliency:
    """Where the model looked for its score of frame ``seq`` of ``stream`` (``models.saliency``, LayerCAM).

    ``heat`` is ``shape`` (rows, cols) uint8 cells, row-major, 0..255 for
    0..1 of the frame's own hottest cell. The grid covers the backbone's
    square input, the scan area padded to a square: ``square`` (x, y, side)
    in pixels of the frame, whose ``frame_shape`` is (rows, cols); x and y
    are negative where the padding reaches past the frame's edge.
    ``score``, ``model`` and ``t_capture`` are those of the frame's Score;
    ``layer`` names the backbone's maps the heat was taken from, joined by "+".
    """

    TYPE: ClassVar[str] = "saliency"

    stream: str
    seq: int
    score: float
    model: str
    t_capture: float
    layer: str
    frame_shape: tuple[int, int]
    square: tuple[int, int, int]
    shape: tuple[int, int]
    heat: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _set(self, "stream", _stream(self.stream, "saliency.stream", process=False))
        _set(self, "seq", _int(self.seq, "saliency.seq", minimum=0))
        _set(self, "score", _float(self.score, "saliency.score", lo=0.0, hi=1.0))
        _str(self.model, "saliency.model")
        _set(self, "t_capture", _time(self.t_capture, "saliency.t_capture"))
        _str(self.layer, "saliency.layer")
        frame_shape = _tuple(self.frame_shape, "saliency.frame_shape")
        if len(frame_shape) != 2:
            raise _fail("saliency.frame_shape", "two integers (rows, cols)", self.frame_shape)
        _set(self, "frame_shape", tuple(_int(v, "saliency.frame_shape item", minimum=1) for v in frame_shape))
        square = _tuple(self.square, "saliency.square")
        if len(square) != 3:
            raise _fail("saliency.square", "three integers (x, y, side)", self.square)
        x, y = (_int(v, "saliency.square item") for v in square[:2])
        _set(self, "square", (x, y, _int(square[2], "saliency.square side", minimum=1)))
        shape = _tuple(self.shape, "saliency.shape")
        if len(shape) != 2:
            raise _fail("saliency.shape", "two integers (rows, cols)", self.shape)
        shape = tuple(_int(v, "saliency.shape item", minimum=1) for v in shape)
        if max(shape) > MAX_SALIENCY_GRID:
            raise _fail("saliency.shape", f"at most {MAX_SALIENCY_GRID} cells a side", shape)
        _set(self, "shape", shape)
        if not isinstance(self.heat, (bytes, bytearray)):
            raise _fail("saliency.heat", "binary", self.heat)
        if len(self.heat) != shape[0] * shape[1]:
            raise _fail("saliency.heat", f"{shape[0] * shape[1]} bytes for shape {shape}",
                        len(self.heat))
        _set(self, "heat", bytes(self.heat))

    def grid(self) -> np.ndarray:
        """The heat map: uint8 (rows, cols)."""
        return np.frombuffer(self.heat, np.uint8).reshape(self.shape)


def saliency_message(stream: str, seq: int, score: float, model: str, t_capture: float, layer: str,
                     frame_shape: tuple[int, int], square: tuple[int, int, int], heat: np.ndarray) -> Saliency:
    """A Saliency of ``heat``: float (rows, cols) in 0..1, sent as uint8 cells."""
    cells = np.rint(np.clip(np.asarray(heat, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    if cells.ndim != 2:
        raise ProtocolError(f"saliency heat must be 2-D (rows, cols), got shape {cells.shape}")
    return Saliency(stream=stream, seq=seq, score=score, model=model, t_capture=t_capture, layer=layer,
                    frame_shape=frame_shape, square=square, shape=cells.shape, heat=cells.tobytes())


Message = Frame | Score | EndOfStream | Heartbeat | Status | Episode | Saliency
_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (Frame, Score, EndOfStream, Heartbeat, Status, Episode, Saliency)}


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


# --- constructors ----------------------------------------------------------------------


def frame_message(stream: str, seq: int, image: np.ndarray, *, encoding: str = "raw",
                  t_capture: float | None = None, t_source: float | None = None,
                  spacing: tuple[float, float] | None = None, jpeg_quality: int = 90) -> Frame:
    """A Frame of ``image``: uint8 (H, W) or (H, W, C), C in 1, 3 (BGR), 4 (BGRA; not for jpeg).

    Raw pixels are copied once (so the caller may reuse its buffer);
    ``t_capture`` defaults to now.
    """
    if not isinstance(image, np.ndarray):
        raise ProtocolError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype.name not in DTYPES:
        raise ProtocolError(f"image dtype must be one of {', '.join(DTYPES)}, got {image.dtype}")
    _str(encoding, "encoding", choices=ENCODINGS)
    if encoding == "raw":
        pixels = image.tobytes()
    else:
        if encoding == "jpeg" and image.ndim == 3 and image.shape[2] not in (1, 3):
            raise ProtocolError(f"jpeg needs 1 or 3 channels, image has shape {image.shape}")
        quality = _int(jpeg_quality, "jpeg_quality", minimum=0)
        if quality > 100:
            raise _fail("jpeg_quality", "in [0, 100]", quality)
        params = [cv2.IMWRITE_JPEG_QUALITY, quality] if encoding == "jpeg" else []
        try:
            ok, buffer = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", image, params)
        except cv2.error as exc:
            raise ProtocolError(f"cannot encode image of shape {image.shape} as {encoding}: "
                                f"{str(exc).strip().splitlines()[-1]}") from None
        if not ok:
            raise ProtocolError(f"cannot encode image of shape {image.shape} as {encoding}")
        pixels = buffer.tobytes()
    return Frame(stream=stream, seq=seq, t_capture=time.time() if t_capture is None else t_capture,
                 t_source=t_source, shape=image.shape, dtype=image.dtype.name, encoding=encoding,
                 spacing=spacing, pixels=pixels)


# --- encode / decode -------------------------------------------------------------------


def _bin_header(n: int) -> bytes:
    if n < 2**8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 2**16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def encode(msg: Message) -> bytes:
    """The wire bytes of ``msg``: topic, NUL, msgpack map with ``v`` and ``type`` first.

    A Frame's pixels go last and are copied exactly once, straight into the
    result (packing them with msgpack and then prefixing the topic would copy
    them twice).
    """
    cls = type(msg)
    if _TYPES.get(getattr(cls, "TYPE", None)) is not cls:
        raise TypeError(f"not a protocol message: {cls.__name__}")
    names = _field_names(cls)
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_map_header(len(names) + 2)
    packer.pack("v")
    packer.pack(VERSION)
    packer.pack("type")
    packer.pack(cls.TYPE)
    for name in names:
        packer.pack(name)
        if name != "pixels":
            packer.pack(getattr(msg, name))
    parts = [topic(msg.stream), packer.getbuffer()]
    if isinstance(msg, Frame):
        parts += [_bin_header(len(msg.pixels)), msg.pixels]
    return b"".join(parts)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def _depth_within(value: Any, limit: int) -> bool:
    """True when no array or map inside ``value`` (unpacked msgpack) lies deeper than ``limit`` levels."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, tuple):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Message:
    """The message in ``data`` (bytes-like, e.g. a ZeroMQ frame's buffer).

    Raises ProtocolError, and nothing else, for anything that is not a valid
    message of a supported version (its ``kind`` says what class of problem,
    one of ``KINDS``); unknown extra map fields are ignored.
    Nothing is allocated beyond ``max_size``: the length is checked before
    unpacking and msgpack's length limits are capped; nesting deeper than
    ``MAX_DEPTH`` is refused before any field is looked at. A frame's pixels are
    copied once out of ``data``; ``Frame.image()`` then views them.
    """
    view = memoryview(data)
    if view.nbytes > max_size:
        raise ProtocolError(f"oversized message: {view.nbytes} bytes, cap is {max_size}", KIND_OVERSIZED)
    head = bytes(view[:_MAX_STREAM_ID + 1])
    sep = head.find(TOPIC_SEPARATOR)
    if sep < 0:
        raise ProtocolError(f"missing topic separator: no NUL byte in the first {len(head)} bytes", KIND_NO_TOPIC)
    try:
        stream = _stream(head[:sep].decode("utf-8"), "topic", process=None)
    except UnicodeDecodeError:
        raise _fail("topic", "a UTF-8 stream id", head[:sep], KIND_NO_TOPIC) from None
    except ProtocolError as exc:
        raise ProtocolError(str(exc), KIND_NO_TOPIC) from None
    try:
        body = msgpack.unpackb(view[sep + 1:], raw=False, use_list=False, strict_map_key=True,
                               max_bin_len=max_size, max_str_len=_MAX_STR, max_array_len=_MAX_ITEMS,
                               max_map_len=_MAX_ITEMS, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types for bad input; the contract is ProtocolError
        raise ProtocolError(f"stream {stream!r}: body is not msgpack ({_one_line(exc)})", KIND_NOT_MSGPACK) from None
    if not _depth_within(body, MAX_DEPTH):
        raise ProtocolError(f"stream {stream!r}: body nests arrays or maps deeper than {MAX_DEPTH} levels",
                            KIND_TOO_DEEP)
    if not isinstance(body, dict):
        raise ProtocolError(f"stream {stream!r}: body is a msgpack {type(body).__name__}, not a map", KIND_NOT_A_MAP)
    if "v" not in body:
        raise ProtocolError(f"stream {stream!r}: missing field 'v' (protocol version)", KIND_VERSION)
    version = body["v"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
        supported = ", ".join(map(str, SUPPORTED_VERSIONS))
        raise ProtocolError(f"stream {stream!r}: unsupported protocol version {version!r} (supported: {supported})",
                            KIND_VERSION)
    type_name = body.get("type")
    cls = _TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ProtocolError(f"stream {stream!r}: unknown message type {type_name!r} (known: {', '.join(_TYPES)})",
                            KIND_UNKNOWN_TYPE)
    missing = [name for name in _field_names(cls) if name not in body]
    if missing:
        raise ProtocolError(f"{type_name} on stream {stream!r}: missing field {', '.join(map(repr, missing))}")
    if body["stream"] != stream:
        raise ProtocolError(f"topic {stream!r} does not match the map's stream {body['stream']!r}")
    msg = cls(**{name: body[name] for name in _field_names(cls)})
    if isinstance(msg, Frame) and msg.image_nbytes > max_size:
        raise ProtocolError(f"oversized frame: {msg.shape} decodes to {msg.image_nbytes} bytes, cap is {max_size}",
                            KIND_OVERSIZED)
    return msg


# --- compressed image headers ----------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk, or None if ``data`` is not a PNG."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame segment, or None if there is none."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return None
        i += 2 + length
    return None
