"""The recorder: scores to CSV, annotated frames to a video, optionally on screen (``fetalhead record``).

Scores come from the worker's scores socket. Frames come from the same
socket when the worker forwards them (``fetalhead worker --forward-frames``),
each just before its score; ``Recorder`` matches them by (stream, seq).

Video files: with ``--stream ID`` only that stream is recorded and the video
is written to the path as given; otherwise every stream gets its own file,
the stream id added to the name (``annotated.mp4`` -> ``annotated-probe1.mp4``).
``.mp4`` is written with the mp4v codec, ``.avi`` with MJPG, at the stream's
own frame rate (``--fps``, or estimated from the frames' ``t_source`` /
``t_capture``).

Each frame sits above a band (``annotate``) that shows the smoothed
verdict (``stream.consumer.StreamVerdicts``, ``--hold`` frames) in its
colour, the score and the threshold; a score flagged ``warmup`` or ``gap``
hatches the band and says so. Frames the worker never scored leave a hole
in the seqs; the previous frame is repeated there, its band hatched and
tagged ``repeated``, so the video keeps the stream's timing.

The CSV has one row per score, in the columns of ``CSV_FIELDS``: ``stream``,
``seq``, ``score`` (the worker's raw score), ``decision`` (its raw decision,
``Head``/``Not-Head``), ``threshold``, ``flags`` (joined with ``;``),
``latency_ms``, ``t_capture``, ``t_scored`` (unix seconds), ``model``, and
``verdict``: the smoothed verdict after this score, what the video and
``fetalhead watch`` show.

``--best-frames DIR`` writes, for each head episode the worker announces
(``episode`` messages, ``models.episodes``), its best frame as it came off
the wire (no band drawn on it) as ``STREAM-SEQ.png`` and a DICOM Secondary
Capture ``STREAM-SEQ.dcm``, and one row of ``DIR/episodes.csv``
(``EPISODE_FIELDS``); only one frame per stream is held for it
(``BestFrames``).

Nothing is lost silently: a frame whose score never came is written with a
grey "no score" band and counted, a score whose frame never came is counted,
frames lost before a stream's first score are counted by the rule of
``stream.consumer.lost_at_start``, and every count is reported at the end.

``Recorder`` holds the files and is driven with protocol messages, so tests
need no sockets; ``annotate`` is the pure drawing; ``record`` is the socket
shell around a ``net.Subscriber``.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import functools
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from models.classes import class_name
from models.errors import ConfigError
from models.settings import check, setting
from models.verdict import Verdict
from stream import consumer, net, protocol
from stream.consumer import ConsumerConfig, StreamVerdicts
from stream.stats import GapCounter

logger = logging.getLogger(__name__)

CSV_FIELDS = ("stream", "seq", "score", "decision", "threshold", "flags", "latency_ms", "t_capture", "t_scored",
              "model", "verdict")
CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
DEFAULT_FPS = 25.0

# BGR colours of the annotation's band, and the ink on each: black on green and grey, white on red
# (contrast ratios about 9:1, 6:1 and 6:1, readable at arm's length).
HEAD_COLOUR = (0, 200, 0)
NOT_HEAD_COLOUR = (0, 0, 200)
UNSCORED_COLOUR = (160, 160, 160)
_INK = {HEAD_COLOUR: (0, 0, 0), NOT_HEAD_COLOUR: (255, 255, 255), UNSCORED_COLOUR: (0, 0, 0)}
_BAR_TRACK = (40, 40, 40)
_BAR_FILL = (240, 240, 240)
_THRESHOLD_MARK = (0, 215, 255)
# Warm-up, gap and repeated frames get a hatched band: stripes of the colour at this brightness.
_HATCH_SHADE = 0.6
_FONT = cv2.FONT_HERSHEY_DUPLEX
_MIN_SCALE = 0.3
# What the score flags a band shows as tags; flags not listed are not shown.
FLAG_TAGS = {protocol.FLAG_WARMUP: "warm-up", protocol.FLAG_GAP: "gap"}
REPEATED_TAG = "repeated"

# Frames kept to estimate a stream's frame rate before its video file is opened.
_FPS_PROBE_FRAMES = 10
# Frames waiting for their score; the worker sends a score right after its frame, so a long queue means lost scores.
_MAX_PENDING = 64
# A hole in the seqs longer than this many seconds is not filled (a restarted or stalled source).
_MAX_FILL_S = 10.0
# Scores seen before warning that no frames come (the worker is not forwarding them).
_NO_FRAMES_AFTER = 50


# --- drawing --------------------------------------------------------------------------


def _bgr(image: np.ndarray, below: int = 0) -> np.ndarray:
    """A new uint8 (H + below, W, 3) array: a grey, grey+1, BGR or BGRA image as BGR on top, ``below``
    rows under it for the caller to fill (one allocation and one copy of a large frame, not two)."""
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    conversions = {2: cv2.COLOR_GRAY2BGR, 1: cv2.COLOR_GRAY2BGR, 3: None, 4: cv2.COLOR_BGRA2BGR}
    channels = 2 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else 0)
    if channels not in conversions:
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    height, width = image.shape[:2]
    out = np.empty((height + below, width, 3), np.uint8)
    code = conversions[channels]
    out[:height] = image if code is None else cv2.cvtColor(image[:, :, 0] if channels == 1 else image, code)
    return out


def band_height(height: int, width: int) -> int:
    """Pixels of the band ``annotate`` adds below an image of that size.

    It grows with the image, so the text is as readable at 1080p as at
    480p, and makes the annotated frame's height even (what video codecs want).
    """
    band = max(36, round(min(height, width) * 0.16))
    return band + (height + band) % 2


def tags_of(flags: Sequence[str]) -> tuple[str, ...]:
    """The band tags of a score's flags (``FLAG_TAGS``), in the flags' order."""
    return tuple(FLAG_TAGS[f] for f in flags if f in FLAG_TAGS)


def _text_scale(text: str, height: float, width: float) -> float:
    """The font scale at which ``text`` is ``height`` pixels tall, shrunk to fit in ``width``."""
    (w, h), _ = cv2.getTextSize(text, _FONT, 1.0, 1)
    return max(0.1, min(height / h, width / w))


def _thickness(scale: float) -> int:
    return max(1, round(scale * 1.5))


def _put(image: np.ndarray, text: str, x: int, baseline: int, scale: float, colour: tuple[int, int, int]) -> int:
    """Draw ``text`` with its baseline at ``baseline``; returns its width."""
    cv2.putText(image, text, (x, baseline), _FONT, scale, colour, _thickness(scale), cv2.LINE_AA)
    return _width(text, scale)


def _width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, _thickness(scale))[0][0]


def annotate(image: np.ndarray, score: float | None, threshold: float, decision: bool | None = None, *,
             verdict: bool | None = None, tags: Sequence[str] = ()) -> np.ndarray:
    """The frame above a band that shows its verdict: uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) in ->
    new uint8 (H + band_height(H, W), W, 3) BGR.

    The image itself is copied unchanged (the verdict hides nothing of the
    scan); the band below it is green for Head and red for Not-Head, with
    the verdict written large on the left (black on green, white on red),
    the score and threshold on the right, and a score bar along its
    bottom with an amber mark at ``threshold``. ``verdict`` is the verdict
    shown (the smoothed one); None shows ``decision``, and ``decision``
    None means ``score >= threshold``. ``tags`` (e.g. ``tags_of(flags)``:
    ``warm-up``, ``gap``, or ``repeated``) are written in boxes after the
    verdict and hatch the band: such a score stands on fewer frames than
    the model's window, or the frame is a stand-in. ``score`` None marks a
    frame whose score never arrived: a grey band that says "no score".
    """
    if score is not None and not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be in [0, 1] or None, got {score}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    height, width = image.shape[:2]
    band = band_height(height, width)
    out = _bgr(image, band)
    if score is None:
        head, colour = None, UNSCORED_COLOUR
    else:
        head = bool(verdict) if verdict is not None else (score >= threshold if decision is None else bool(decision))
        colour = HEAD_COLOUR if head else NOT_HEAD_COLOUR
    ink = _INK[colour]
    # A view of the rows below the scan, contiguous, so OpenCV draws into ``out`` (and far faster than numpy fills).
    strip = out[height:]
    cv2.rectangle(strip, (0, 0), (width - 1, band - 1), colour, -1)
    if tags:
        stripe = max(3, band // 6)
        dark = tuple(round(c * _HATCH_SHADE) for c in colour)
        for x in range(0, width + band, 2 * stripe):
            corners = [(x + stripe, 0), (x + 2 * stripe, 0), (x + 2 * stripe - band, band), (x + stripe - band, band)]
            cv2.fillConvexPoly(strip, np.array(corners, np.int32), dark)

    pad = max(2, band // 12)
    bar_h = max(4, band // 5)
    bar_y1 = band - pad
    bar_y0 = bar_y1 - bar_h
    text_h = max(6.0, (bar_y0 - 2 * pad) * 0.75)
    baseline = bar_y0 - pad - round((bar_y0 - 2 * pad - text_h) / 2)
    label = "no score" if head is None else class_name(head)
    scale = _text_scale("Not-Head", text_h, width * 0.45)
    x = pad + _put(strip, label, pad, baseline, scale, ink) + 2 * pad
    # Below this scale text is a few pixels tall: better left out than shown unreadable.
    small = max(scale * 0.6, _MIN_SCALE)
    for tag in tags:
        tag_w = _width(tag, small)
        if x + tag_w + 2 * pad > width - pad:
            break
        tag_h = cv2.getTextSize(tag, _FONT, small, _thickness(small))[0][1]
        cv2.rectangle(strip, (x, baseline - tag_h - pad), (x + tag_w + 2 * pad, baseline + pad), ink, -1)
        _put(strip, tag, x + pad, baseline, small, colour)
        x += tag_w + 3 * pad
    if score is not None:
        for text in (f"score {score:.2f}  threshold {threshold:.2f}", f"{score:.2f} / {threshold:.2f}",
                     f"{score:.2f}"):
            if x + _width(text, small) <= width - pad:
                _put(strip, text, width - pad - _width(text, small), baseline, small, ink)
                break
        x0, x1 = pad, width - pad - 1
        cv2.rectangle(strip, (x0, bar_y0), (x1, bar_y1), _BAR_TRACK, -1)
        filled = x0 + round((x1 - x0) * score)
        if filled > x0:
            cv2.rectangle(strip, (x0, bar_y0), (filled, bar_y1), _BAR_FILL, -1)
        mark = x0 + round((x1 - x0) * threshold)
        mark_w = max(1, bar_h // 4)
        cv2.line(strip, (mark, bar_y0 - pad // 2), (mark, min(band - 1, bar_y1 + pad // 2)), _BAR_TRACK, mark_w + 2)
        cv2.line(strip, (mark, bar_y0 - pad // 2), (mark, min(band - 1, bar_y1 + pad // 2)), _THRESHOLD_MARK, mark_w)
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


def csv_row(score: protocol.Score, verdict: bool) -> dict[str, str]:
    """A Score and the smoothed verdict after it as a CSV row of CSV_FIELDS; flags joined with ';'."""
    return {
        "stream": score.stream, "seq": str(score.seq), "score": f"{score.score:.6f}",
        "decision": class_name(score.decision), "threshold": f"{score.threshold:.6f}",
        "flags": ";".join(score.flags), "latency_ms": f"{score.latency * 1000:.3f}",
        "t_capture": f"{score.t_capture:.6f}", "t_scored": f"{score.t_scored:.6f}", "model": score.model,
        "verdict": class_name(verdict),
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

    def write(self, score: protocol.Score, verdict: bool) -> None:
        self._writer.writerow(csv_row(score, verdict))
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
    size are resized to it; holes in the seqs are filled, up to
    ``_MAX_FILL_S`` seconds, with the stand-in the previous frame came with
    (its ``hole``), or that frame again.
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
        self._last_hole: Callable[[], np.ndarray] | None = None
        self._probe: list[tuple[int, np.ndarray, float | None, Callable[[], np.ndarray] | None]] = []

    def add(self, seq: int, image: np.ndarray, t: float | None,
            hole: Callable[[], np.ndarray] | None = None) -> None:
        """Append frame ``seq`` (uint8 (H, W, 3) BGR); ``t`` its t_source or t_capture.

        ``hole()`` makes the image that stands in for frames missing right
        after this one, called only when some are (default: ``image`` again).
        """
        if self._writer is None:
            self._probe.append((seq, image, t, hole))
            if self.fps is None and len(self._probe) < _FPS_PROBE_FRAMES:
                return
            self._open()
        else:
            self._write(seq, image, hole)

    def _open(self) -> None:
        if self.fps is None:
            fps = estimate_fps([s for s, _, _, _ in self._probe], [t for _, _, t, _ in self._probe])
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
        for seq, image, _, hole in probe:
            self._write(seq, image, hole)

    def _fit(self, image: np.ndarray) -> np.ndarray:
        assert self._size is not None
        if (image.shape[1], image.shape[0]) == self._size:
            return image
        if not self.resized:
            logger.warning("video %s: frame size changed from %dx%d to %dx%d; resizing", self.path,
                           *self._size, image.shape[1], image.shape[0])
        self.resized += 1
        return cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)

    def _write(self, seq: int, image: np.ndarray, hole: Callable[[], np.ndarray] | None) -> None:
        assert self._writer is not None and self.fps is not None
        image = self._fit(image)
        if self._last_seq is not None and self._last_image is not None:
            missing = seq - self._last_seq - 1
            if 0 < missing <= _MAX_FILL_S * self.fps:
                stand_in = self._fit(self._last_hole()) if self._last_hole is not None else self._last_image
                for _ in range(missing):
                    self._writer.write(stand_in)
                self.filled += missing
        self._writer.write(image)
        self.frames += 1
        self._last_seq, self._last_image, self._last_hole = seq, image, hole

    def close(self) -> None:
        """Write what is still held for the frame-rate estimate, and finish the file."""
        if self._writer is None and self._probe:
            self._open()
        if self._writer is not None:
            self._writer.release()
            self._writer = None


# --- best frames ------------------------------------------------------------------------

EPISODE_FIELDS = ("stream", "first_seq", "last_seq", "peak_score", "peak_seq", "best_seq", "t_first", "t_last",
                  "duration_s", "threshold", "model", "png", "dicom")
EPISODES_CSV = "episodes.csv"


def secondary_capture(image: np.ndarray, *, description: str, comments: str, study_uid: str, series_uid: str,
                      series_number: int, instance_number: int, when: datetime.datetime, patient_name: str = "",
                      patient_id: str = ""):
    """A DICOM Secondary Capture Image (a ``pydicom.Dataset``) of one frame: uint8 (H, W), (H, W, 1),
    (H, W, 3) BGR or (H, W, 4) BGRA; grey stays MONOCHROME2, colour becomes RGB.

    pydicom rather than highdicom: highdicom's SC constructor wants the
    patient and study attributes this tool does not have and would add a
    large dependency for a dozen attributes; the modules written here are
    those the SC IOD makes mandatory (Patient, General Study, General Series,
    SC Equipment, General Image, Image Pixel, SOP Common), the type 2 ones
    present and empty. ``description`` goes to SeriesDescription, ``comments``
    (score, model, seq) to ImageComments and DerivationDescription.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image must be uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.dtype} "
                         f"{image.shape}")
    grey = image.ndim == 2 or image.shape[2] == 1
    if grey:
        pixels = image.reshape(image.shape[:2])
    else:
        pixels = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = when.strftime("%H%M%S.%f")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description[:64]
    ds.Modality = "US"
    # WSD (workstation): made by software from frames that came over the network, not by a frame grabber.
    ds.ConversionType = "WSD"
    ds.Manufacturer = "fetalhead"
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ImageComments = comments
    ds.DerivationDescription = comments[:1024]
    ds.SamplesPerPixel = 1 if grey else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if grey else "RGB"
    if not grey:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


class BestFrames:
    """The best frame of each head episode as PNG and DICOM, and ``episodes.csv``, in ``folder``.

    Driven by the worker's ``episode`` messages and the scored frames (each
    with its Score): per stream only the highest-scored Head frame since the
    verdict last stood at Not-Head is kept, the candidate for the episode
    that may be starting or is open; when an episode ends its candidate is
    written if it is the episode's ``best_seq``, and the episode's row is
    written either way (empty file columns, counted in ``missing`` and
    logged, when the best frame never came). An episode open when the
    recording stops gets its row and files with ``last_seq`` empty.
    """

    def __init__(self, folder: Path, *, patient_name: str = "", patient_id: str = "", append: bool = False) -> None:
        from pydicom.uid import generate_uid

        self.folder = folder
        self.patient_name = patient_name
        self.patient_id = patient_id
        self.written = 0
        self.missing = 0
        self.rows = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._fh = (folder / EPISODES_CSV).open("a" if append else "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, fieldnames=EPISODE_FIELDS)
        if self._fh.tell() == 0:
            self._writer.writeheader()
        self._study_uid = generate_uid()
        self._series: dict[str, tuple[str, int]] = {}
        self._candidate: dict[str, tuple[protocol.Frame, protocol.Score]] = {}
        # A candidate set aside when its stream's seq went back: its episode's end comes after the new run's score.
        self._previous: dict[str, tuple[protocol.Frame, protocol.Score]] = {}
        self._open: dict[str, protocol.Episode] = {}
        self._last_seq: dict[str, int] = {}
        self._log = net.Throttled(logger)

    def scored(self, frame: protocol.Frame, score: protocol.Score) -> None:
        """A frame and its score, in the stream's order."""
        stream = score.stream
        last = self._last_seq.get(stream)
        self._last_seq[stream] = score.seq
        if last is not None and score.seq <= last and stream in self._candidate:
            self._previous[stream] = self._candidate.pop(stream)
        if not score.decision:
            if stream not in self._open:
                self._candidate.pop(stream, None)
            return
        kept = self._candidate.get(stream)
        if kept is None or score.score > kept[1].score:
            self._candidate[stream] = (frame, score)

    def episode(self, msg: protocol.Episode) -> None:
        """An episode message: a start opens the stream's episode, an end writes its best frame and row."""
        if msg.kind == "start":
            self._open[msg.stream] = msg
            return
        self._open.pop(msg.stream, None)
        best = None
        for kept in (self._previous.pop(msg.stream, None), self._candidate.get(msg.stream)):
            if kept is not None and kept[1].seq == msg.best_seq:
                best = kept
        self._candidate.pop(msg.stream, None)
        self._write(msg, best)

    def _write(self, msg: protocol.Episode, best: tuple[protocol.Frame, protocol.Score] | None) -> None:
        png = dicom = ""
        if best is None:
            self.missing += 1
            self._log.warning("missing", f"episode {msg.stream}#{msg.first_seq}: best frame {msg.best_seq} never "
                                         f"came (is the worker forwarding frames? --forward-frames); row written "
                                         f"without files")
        else:
            try:
                png, dicom = self._files(*best)
                self.written += 1
            except (protocol.ProtocolError, ValueError, OSError) as exc:
                self.missing += 1
                self._log.warning("unwritten", f"episode {msg.stream}#{msg.first_seq}: best frame {msg.best_seq} "
                                               f"not written: {exc}")
        t_last = "" if msg.t_last is None else f"{msg.t_last:.6f}"
        self._writer.writerow({
            "stream": msg.stream, "first_seq": msg.first_seq, "last_seq": "" if msg.last_seq is None else msg.last_seq,
            "peak_score": f"{msg.peak_score:.6f}", "peak_seq": msg.peak_seq, "best_seq": msg.best_seq,
            "t_first": f"{msg.t_first:.6f}", "t_last": t_last,
            "duration_s": "" if msg.t_last is None else f"{msg.t_last - msg.t_first:.6f}",
            "threshold": f"{msg.threshold:.6f}", "model": msg.model, "png": png, "dicom": dicom})
        self._fh.flush()
        self.rows += 1

    def _files(self, frame: protocol.Frame, score: protocol.Score) -> tuple[str, str]:
        image = frame.image()
        name = f"{frame.stream.replace(':', '%3A')}-{frame.seq:08d}"
        png = free_path(self.folder / f"{name}.png")
        if not cv2.imwrite(str(png), image):
            raise OSError(f"OpenCV could not write {png}")
        if frame.stream not in self._series:
            from pydicom.uid import generate_uid

            self._series[frame.stream] = (generate_uid(), len(self._series) + 1)
        series_uid, series_number = self._series[frame.stream]
        comments = (f"fetalhead best frame: stream {frame.stream} seq {frame.seq} score {score.score:.4f} "
                    f"threshold {score.threshold:.4f} model {score.model}")
        ds = secondary_capture(image, description=f"fetalhead best frames {frame.stream}", comments=comments,
                               study_uid=self._study_uid, series_uid=series_uid, series_number=series_number,
                               instance_number=self.written + 1,
                               when=datetime.datetime.fromtimestamp(frame.t_capture),
                               patient_name=self.patient_name, patient_id=self.patient_id)
        dcm = free_path(png.with_suffix(".dcm"))
        ds.save_as(dcm, enforce_file_format=True)
        return png.name, dcm.name

    def close(self) -> None:
        """Write the episodes still open (``last_seq`` empty) and finish episodes.csv; idempotent."""
        if self._fh.closed:
            return
        try:
            for stream, start in list(self._open.items()):
                kept = self._candidate.pop(stream, None)
                self._write(dataclasses.replace(start, peak_score=kept[1].score, peak_seq=kept[1].seq,
                                                best_seq=kept[1].seq) if kept is not None else start, kept)
            self._open.clear()
        finally:
            self._fh.close()


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
class RecordConfig(ConsumerConfig):
    """Settings of ``fetalhead record`` (a ``[record]`` TOML table).

    The consumer's settings (``stream.consumer.ConsumerConfig``: address,
    stream, receive queue, verdict hold, CURVE keys), and: at least one of
    ``csv``, ``video`` and ``show``. ``stream`` None records every stream
    (one video per stream, see the module doc). ``fps`` None estimates each
    stream's rate. ``append`` adds to an existing CSV and writes videos next
    to existing ones instead of over them. ``hwm`` is longer than a
    viewer's: frames and scores must not be dropped.
    """

    stream: str | None = setting(None, "record only this stream (the video is written to --video as given)",
                                 shown="every stream")
    hwm: int = setting(256, "receive queue in messages")
    csv: Path | None = setting(None, "write every score to this CSV file")
    video: Path | None = setting(None, "write annotated frames to this .mp4 (mp4v) or .avi (MJPG); needs worker "
                                       "--forward-frames; without --stream one file per stream, named NAME-STREAM.EXT")
    show: bool = setting(False, "also show the annotated frames in a window (needs opencv-python and a display)")
    fps: float | None = setting(None, "video frame rate", shown="estimated from the frames' times")
    append: bool = setting(False, "append to an existing CSV and keep existing videos (write NAME-1.EXT ...)")
    flush_s: float = setting(1.0, "seconds between flushes of the CSV file", flag="flush-interval")
    best_frames: Path | None = setting(None, "for each head episode, write its best frame (PNG and DICOM Secondary "
                                             "Capture) and a row of episodes.csv into this folder; needs worker "
                                             "--forward-frames")
    patient_name: str = setting("", "PatientName of the best frames' DICOM files", shown="empty")
    patient_id: str = setting("", "PatientID of the best frames' DICOM files", shown="empty")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.csv is not None or self.video is not None or self.show or self.best_frames is not None,
              "nothing to record: give --csv, --video, --show or --best-frames")
        for name in ("patient_name", "patient_id"):
            value = getattr(self, name)
            check(isinstance(value, str) and len(value) <= 64 and value.isprintable() and "\\" not in value,
                  f"{name}: must be at most 64 printable characters without a backslash, got {value!r}")
        if self.video is not None:
            check(self.video.suffix.lower() in CODECS,
                  f"video: {str(self.video)!r} must end in {' or '.join(CODECS)}")
        check(self.fps is None or 0 < self.fps <= 1000, f"fps: must be in (0, 1000], got {self.fps}")
        check(self.flush_s > 0, f"flush_s: must be > 0, got {self.flush_s}")

    @property
    def needs_frames(self) -> bool:
        return self.video is not None or self.show or self.best_frames is not None


@dataclasses.dataclass(frozen=True)
class RecordStats:
    """What a recording wrote and what it could not match.

    ``unscored_frames``: frames written without a score (it never came);
    ``frameless_scores``: scores in the CSV whose frame never came;
    ``missing_seqs``: seqs absent between scores (dropped or lost upstream);
    ``lost_at_start``: frames that never reached the worker before a
    stream's first score (``stream.consumer.lost_at_start``).
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
    lost_at_start: int = 0
    episodes: int = 0
    best_frames: int = 0
    best_frames_missing: int = 0


class Recorder:
    """Scores to CSV and matched frames to videos/windows, driven by protocol messages.

    ``handle(msg)`` takes any message; ``close()`` writes what is pending,
    finishes every file and returns RecordStats. Usable as a context manager.
    """

    def __init__(self, config: RecordConfig) -> None:
        self.config = config
        self.csv = ScoreCsv(config.csv, append=config.append, flush_s=config.flush_s) if config.csv else None
        self.best = (BestFrames(config.best_frames, patient_name=config.patient_name, patient_id=config.patient_id,
                                append=config.append) if config.best_frames is not None else None)
        self.videos: dict[str, StreamVideo] = {}
        self.frames: dict[str, collections.OrderedDict[int, protocol.Frame]] = collections.defaultdict(
            collections.OrderedDict)
        # Scores waiting for their frame, with the verdict after each.
        self.scores: dict[str, collections.OrderedDict[int, tuple[protocol.Score, Verdict]]] = (
            collections.defaultdict(collections.OrderedDict))
        self.verdicts = StreamVerdicts(config.hold)
        self.gaps: dict[str, GapCounter] = collections.defaultdict(GapCounter)
        self.lost_at_start: collections.Counter[str] = collections.Counter()
        # Streams whose next score begins a run: an end of stream came.
        self._ended_runs: set[str] = set()
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
        elif isinstance(msg, protocol.Episode):
            if self.best is not None:
                self.best.episode(msg)
        elif isinstance(msg, protocol.EndOfStream):
            self._flush_stream(msg.stream)
            self.ended[msg.stream] = True
            self.verdicts.end(msg.stream)
            self._ended_runs.add(msg.stream)
            if self.csv is not None:
                self.csv.flush()
            logger.info("stream %s ended (%s): %d scores", msg.stream, msg.reason, self.score_count[msg.stream])

    def _score(self, score: protocol.Score) -> None:
        self.ended[score.stream] = False
        gaps = self.gaps[score.stream]
        if gaps.last is None or score.seq <= gaps.last or score.stream in self._ended_runs:
            self._ended_runs.discard(score.stream)
            self.lost_at_start[score.stream] += consumer.lost_at_start(score)
        gaps.add(score.seq)
        self.score_count[score.stream] += 1
        verdict = self.verdicts.update(score)
        if self.csv is not None:
            self.csv.write(score, verdict.head)
        if not self.config.needs_frames:
            return
        frames = self.frames[score.stream]
        # Scores come in seq order, so a frame older than this score will never get one.
        for seq in [s for s in frames if s < score.seq]:
            self._emit(frames.pop(seq), None)
        frame = frames.pop(score.seq, None)
        if frame is not None:
            self._emit(frame, (score, verdict))
            return
        self.scores[score.stream][score.seq] = (score, verdict)
        self._check_frames_come(score.stream)

    def _frame(self, frame: protocol.Frame) -> None:
        self.ended[frame.stream] = False
        scores = self.scores[frame.stream]
        # Frames come in seq order too: a waiting score older than this frame has lost its frame.
        for seq in [s for s in scores if s < frame.seq]:
            del scores[seq]
            self.frameless_scores += 1
        scored = scores.pop(frame.seq, None)
        if scored is not None:
            self._emit(frame, scored)
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

    def _emit(self, frame: protocol.Frame, scored: tuple[protocol.Score, Verdict] | None) -> None:
        """Annotate and write one frame with its score and the verdict after it (None: its score never came)."""
        try:
            image = frame.image()
        except protocol.ProtocolError as exc:
            logger.warning("frame %s#%d not recorded: %s", frame.stream, frame.seq, exc)
            return
        if scored is not None and self.best is not None:
            self.best.scored(frame, scored[0])
        self.frame_count[frame.stream] += 1
        if scored is None:
            self.unscored_frames += 1
        if self.config.video is None and self.window is None:
            return
        hole = None
        if scored is None:
            annotated = annotate(image, None, 0.5)
        else:
            score, verdict = scored
            tags = tags_of(score.flags)
            annotated = annotate(image, score.score, score.threshold, verdict=verdict.head, tags=tags)
            hole = functools.partial(annotate, image, score.score, score.threshold, verdict=verdict.head,
                                     tags=(*tags, REPEATED_TAG))
        if self.config.video is not None:
            video = self.videos.get(frame.stream)
            if video is None:
                path = self.config.video if self.config.stream else stream_path(self.config.video, frame.stream)
                if self.config.append:
                    path = free_path(path)
                video = self.videos[frame.stream] = StreamVideo(path, self.config.fps)
            video.add(frame.seq, annotated, frame.t_source if frame.t_source is not None else frame.t_capture,
                      hole)
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
            if self.best is not None:
                self.best.close()
            if self.window is not None:
                cv2.destroyWindow(self.window)
        stats = RecordStats(
            scores=sum(self.score_count.values()), frames=dict(self.frame_count),
            unscored_frames=self.unscored_frames, frameless_scores=self.frameless_scores,
            missing_seqs=sum(g.missing for g in self.gaps.values()),
            streams_ended=tuple(sorted(s for s, ended in self.ended.items() if ended)),
            csv=self.config.csv, videos={s: v.path for s, v in self.videos.items()},
            lost_at_start=sum(self.lost_at_start.values()),
            episodes=self.best.rows if self.best is not None else 0,
            best_frames=self.best.written if self.best is not None else 0,
            best_frames_missing=self.best.missing if self.best is not None else 0)
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
    if stats.episodes:
        logger.info("%d head episodes, %d best frames written", stats.episodes, stats.best_frames)
    if stats.best_frames_missing:
        logger.warning("%d episodes without a best frame (it never came, or could not be written)",
                       stats.best_frames_missing)
    if stats.unscored_frames:
        logger.warning("%d frames had no score; written with a 'no score' label", stats.unscored_frames)
    if stats.frameless_scores:
        logger.warning("%d scores had no frame (not in the video)", stats.frameless_scores)
    if stats.lost_at_start:
        logger.warning("%d frames lost before the first score: they never reached the worker, which subscribed "
                       "after the capture had started (--mode lossless keeps every frame)", stats.lost_at_start)
    if stats.missing_seqs:
        logger.warning("%d seqs missing between scores (frames dropped or lost upstream)", stats.missing_seqs)
    if stats.rejected:
        logger.warning("%d messages could not be decoded", stats.rejected)


def record(config: RecordConfig, stop_event: threading.Event | None = None) -> RecordStats:
    """Record from ``config.sub`` until stopped (or, with ``until_eos``, every stream seen has ended).

    Every file is finished on the way out, whatever ends the loop.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    with consumer.subscriber(config) as sub:
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
