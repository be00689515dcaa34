"""Reading DICOM ultrasound cine loops and single images: frames, their times and their pixel size.

One reader for both users of DICOM, the capture (``stream.dicom``) and the
training data (``train.data``), which may not import each other: so it lives
here, below both, like the preprocessing.

The files are read by pydicom with the pylibjpeg plugins (pylibjpeg-libjpeg:
JPEG baseline, JPEG lossless, JPEG-LS; pylibjpeg-openjpeg: JPEG 2000;
pylibjpeg-rle: RLE, faster than pydicom's own). They are self-contained pip
wheels (Linux, macOS, Windows), installed with the package, and pydicom
picks them up by itself; python-gdcm decodes the same syntaxes but is one
large binary that pydicom only uses as a fallback, and would be a second
decoder stack to keep in step. Uncompressed data needs none of them.

Frames come out as the rest of the tool takes them: uint8 (H, W) for
MONOCHROME1/2 (MONOCHROME1 inverted, more than 8 bits scaled down to 8),
(H, W, 3) BGR for RGB and YBR_FULL(_422) (pydicom converts YBR to RGB).
Only pixel values leave the file: a ``Cine`` holds no tag that names or
describes the patient, and every message names the file, never a patient field.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from models.errors import DataError

# What to install for each compressed transfer syntax, by pydicom's name for it.
_PLUGINS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE lossless
}
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
_GRAY = ("MONOCHROME1", "MONOCHROME2")
# The header of encapsulated pixel data: tag (7FE0,0010), VR OB, undefined length.
_ENCAPSULATED_HEADER = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_CM_UNITS = 3  # Physical Units X/Y Direction: 3 is cm


@dataclass(frozen=True)
class Gap:
    """Frames ``first`` .. ``first + count - 1`` of a file that cannot be read, and why (one line)."""

    first: int
    count: int
    reason: str


@dataclass(frozen=True)
class Cine:
    """What a DICOM file says about its frames; no patient field.

    ``frame_count`` is the Number of Frames the header declares (1 when
    absent); ``frame_times`` each frame's time in seconds from the first
    (from Frame Time Vector, Frame Time or Cine Rate), None when the file
    gives none; ``fps`` its nominal rate, None likewise; ``spacing`` the
    (row, col) pixel size in mm from the Sequence of Ultrasound Regions
    (when in cm) or Pixel Spacing, None when unknown.
    """

    path: Path
    frame_count: int
    rows: int
    columns: int
    photometric: str
    transfer_syntax: str
    encapsulated: bool
    fps: float | None
    frame_times: tuple[float, ...] | None
    spacing: tuple[float, float] | None


def _read_header(path: Path):
    """The dataset without its pixel data, and the file offset where the pixel data begins (None when absent)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.exists():
        raise DataError(f"DICOM file {path}: not found")
    if path.is_dir():
        raise DataError(f"DICOM file {path}: is a folder")
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(f, stop_before_pixels=True)
            offset = f.tell()
            has_pixels = f.read(4) == b"\xe0\x7f\x10\x00"
    except InvalidDicomError:
        raise DataError(f"DICOM file {path}: not a DICOM file (no DICM header)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged header raises whatever the parser tripped on
        raise DataError(f"DICOM file {path}: cannot be read ({type(exc).__name__})") from None
    return dataset, (offset if has_pixels else None)


def _decoder_problem(uid) -> str | None:
    """Why frames of transfer syntax ``uid`` cannot be decoded here, or None when they can."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (f"transfer syntax {uid.name} ({uid}) has no decoder in pydicom; "
                "convert the file first (e.g. dcmtk's dcmdjpeg, or gdcmconv --raw)")
    if decoder.is_available:
        return None
    packages = _PLUGINS.get(str(uid), "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle")
    return f"transfer syntax {uid.name} needs a decoder that is not installed: pip install {packages}"


def _times(dataset, frame_count: int) -> tuple[float | None, tuple[float, ...] | None]:
    """(nominal fps, per-frame times in s) from the first of Frame Time Vector, Frame Time, Cine Rate and
    Recommended Display Frame Rate that is usable; (None, None) when none is."""
    vector = dataset.get("FrameTimeVector")
    if vector is not None:
        steps = [float(v) for v in (vector if hasattr(vector, "__iter__") else [vector])]
        if len(steps) == frame_count and all(math.isfinite(s) and s >= 0 for s in steps) and sum(steps[1:]) > 0:
            times = tuple(float(t) / 1000.0 for t in np.cumsum(steps) - steps[0])
            return (frame_count - 1) / times[-1], times
    for keyword, to_fps in (("FrameTime", lambda v: 1000.0 / v), ("CineRate", float),
                            ("RecommendedDisplayFrameRate", float)):
        value = dataset.get(keyword)
        try:
            fps = to_fps(float(value)) if value not in (None, "") else None
        except (TypeError, ValueError, ZeroDivisionError):
            fps = None
        if fps is not None and math.isfinite(fps) and fps > 0:
            return fps, tuple(i / fps for i in range(frame_count))
    return None, None


def _spacing(dataset) -> tuple[float, float] | None:
    """(row, col) mm of the first ultrasound region measured in cm, else Pixel Spacing."""
    for region in dataset.get("SequenceOfUltrasoundRegions", None) or ():
        if region.get("PhysicalUnitsXDirection") == _CM_UNITS and region.get("PhysicalUnitsYDirection") == _CM_UNITS:
            dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
            if dx and dy and float(dx) > 0 and float(dy) > 0:
                return abs(float(dy)) * 10.0, abs(float(dx)) * 10.0
    pixel_spacing = dataset.get("PixelSpacing")
    if pixel_spacing is not None and len(pixel_spacing) == 2 and all(float(s) > 0 for s in pixel_spacing):
        return float(pixel_spacing[0]), float(pixel_spacing[1])
    return None


def open_cine(path: str | Path) -> Cine:
    """The header of the DICOM file at ``path``, checked; DataError (one line naming the file) when unusable."""
    path = Path(path)
    dataset, offset = _read_header(path)
    if offset is None:
        raise DataError(f"DICOM file {path}: no pixel data (not an image: a report, a structured or raw data set?)")
    meta = getattr(dataset, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        raise DataError(f"DICOM file {path}: no transfer syntax in its file meta information")
    if (problem := _decoder_problem(uid)) is not None:
        raise DataError(f"DICOM file {path}: {problem}")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if photometric not in _GRAY + _COLOUR:
        raise DataError(f"DICOM file {path}: colour model {photometric or '(none)'} is not supported "
                        f"(use one of {', '.join(_GRAY + _COLOUR)})")
    rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
    if rows < 1 or columns < 1:
        raise DataError(f"DICOM file {path}: no image size (Rows {rows}, Columns {columns})")
    try:
        frame_count = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise DataError(f"DICOM file {path}: Number of Frames is not a number") from None
    if frame_count < 1:
        raise DataError(f"DICOM file {path}: Number of Frames is {frame_count}")
    fps, times = _times(dataset, frame_count)
    return Cine(path, frame_count, rows, columns, photometric, uid.name, bool(uid.is_encapsulated),
                fps, times, _spacing(dataset))


def _to_uint8(array: np.ndarray, dataset) -> np.ndarray:
    """A decoded frame as the tool's uint8 gray or BGR image."""
    if array.dtype != np.uint8:
        bits = int(dataset.get("BitsStored") or array.dtype.itemsize * 8)
        array = np.clip(array.astype(np.int64) >> max(bits - 8, 0), 0, 255).astype(np.uint8)
    if str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        array = 255 - array
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])
    return array


def _decoded(dataset, index: int, frame: int) -> tuple[int, np.ndarray] | Gap:
    """(``frame``, image) of frame ``index`` of ``dataset``, or a Gap of one when it does not decode."""
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return frame, _to_uint8(pixel_array(dataset, index=index), dataset)
    except Exception as exc:  # noqa: BLE001 - each decoder plugin raises its own types
        return Gap(frame, 1, f"frame {frame} cannot be decoded ({type(exc).__name__})")


def read_frames(cine: Cine) -> Iterator[tuple[int, np.ndarray] | Gap]:
    """Every frame of the file in order: (index, uint8 image), or a Gap for frames that cannot be read.

    A frame that does not decode is a Gap of one; a file that holds fewer
    frames than its header declares (truncated, or a wrong Number of Frames)
    ends with a Gap for the rest, after every frame before the damage. A
    compressed file cut short loses its last frame read too, whose data the
    cut may fall inside. Raises DataError when the file cannot be read again.
    """
    import pydicom
    from pydicom.encaps import encapsulate

    dataset, offset = _read_header(cine.path)
    if offset is None:
        raise DataError(f"DICOM file {cine.path}: no pixel data")
    if not cine.encapsulated:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                full = pydicom.dcmread(cine.path)
        except Exception as exc:  # noqa: BLE001 - as in _read_header
            raise DataError(f"DICOM file {cine.path}: cannot be read ({type(exc).__name__})") from None
        pixels = full.get("PixelData") or b""
        per_frame = _native_frame_bytes(full)
        held = min(len(pixels) // per_frame, cine.frame_count)
        if held < cine.frame_count:
            full.NumberOfFrames = held
            full.PixelData = pixels[:held * per_frame]
        for index in range(held):
            yield _decoded(full, index, index)
    else:
        with open(cine.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        if not data.startswith(_ENCAPSULATED_HEADER):
            raise DataError(f"DICOM file {cine.path}: compressed pixel data without the encapsulated header")
        # Without the closing delimiter the file was cut short: its last fragment may be too.
        complete = _SEQUENCE_END in data[-64:]
        fragments = list(_frames(io.BytesIO(data[len(_ENCAPSULATED_HEADER):]), cine.frame_count))
        if not complete and fragments:
            fragments.pop()
        held = min(len(fragments), cine.frame_count)
        single = _single_frame(dataset)
        for index in range(held):
            single.PixelData = encapsulate([fragments[index]])
            yield _decoded(single, 0, index)
    if held < cine.frame_count:
        yield Gap(held, cine.frame_count - held,
                  f"ended after {held} of {cine.frame_count} frames (truncated, or Number of Frames is wrong)")


def _frames(stream: io.BytesIO, count: int) -> Iterator[bytes]:
    """The encapsulated frames that pydicom's fragment reader finds, up to where the data breaks off."""
    from pydicom.encaps import generate_frames

    try:
        yield from generate_frames(stream, number_of_frames=count)
    except (ValueError, EOFError, OSError):
        return


def _single_frame(dataset):
    """A copy of the header for decoding one frame at a time."""
    single = dataset.copy()
    single.file_meta = dataset.file_meta
    single.NumberOfFrames = 1
    return single


def _native_frame_bytes(dataset) -> int:
    from pydicom.pixels.utils import get_expected_length

    frames = int(dataset.get("NumberOfFrames") or 1)
    return max(1, get_expected_length(dataset, unit="bytes") // frames)
