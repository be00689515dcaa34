"""DICOM ultrasound as a capture source: one file (a multi-frame cine or a single image) or a folder of them.

Files are read by ``models.dicom`` (pydicom with the pylibjpeg plugins;
why those is said there). A folder plays its DICOM files in Instance Number
order (then by name) as one stream, frames numbered across the files.

Pacing and ``t_source`` come from the file: Frame Time Vector, Frame Time,
Cine Rate or Recommended Display Frame Rate, in that order; ``fps`` given
overrides them all (``t_source`` = index / fps, as for a video file), and a
file with none of them plays at 25 fps. The pixel size from the Sequence of
Ultrasound Regions (cm) or Pixel Spacing is ``spacing``, (row, col) mm, of
the file now playing.

Bad input follows the Source contract: a file that is not DICOM, has no
pixel data or a transfer syntax with no decoder installed (naming the package
to install) is a one-line ``SourceError`` when the source is made (in a
folder, such a file is left out with a warning and the rest plays); frames
that do not decode, and the frames a truncated file or a wrong Number of
Frames leaves without data, are left out with ``Source.skip``, so the
capture's seq has a gap and a stream that ends with frames missing ends with
reason ``error``. Nothing of the header but timing and pixel size leaves the
file, and messages name the file only: no patient field reaches a frame
message or a log line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from models.dicom import Cine, Gap, open_cine, read_frames
from models.errors import DataError
from stream.sources import DEFAULT_FPS, Source, SourceError

logger = logging.getLogger(__name__)

_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
# A DICOM folder's index file: no pixel data, not a frame.
_DICOMDIR = "DICOMDIR"


def is_dicom(path: str | Path) -> bool:
    """True when ``path`` is a file in the DICOM file format (the ``DICM`` mark after the preamble)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(_MAGIC_OFFSET)
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != _DICOMDIR)


def is_dicom_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder whose every file (DICOMDIR aside) is a DICOM file, and it has one."""
    path = Path(path)
    if not path.is_dir():
        return False
    files = _files(path)
    return bool(files) and all(is_dicom(p) for p in files)


def _instance_number(path: Path) -> float:
    """A file's Instance Number for ordering a folder; files without one go last."""
    import pydicom

    try:
        value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"]).get("InstanceNumber")
        return float(value) if value not in (None, "") else float("inf")
    except Exception:  # noqa: BLE001 - ordering only: open_cine reports what is wrong with the file
        return float("inf")


class DicomSource(Source):
    """A DICOM file or folder of DICOM files, once or looped; iterate for (uint8 image, t_source s).

    Images are uint8 (H, W) gray or (H, W, 3) BGR. ``spacing`` is the
    (row, col) mm of the file now playing, None when it does not say.
    """

    def __init__(self, path: str | Path, *, fps: float | None = None, loop: bool = False) -> None:
        self.path = Path(path)
        self.name = self.path.name if self.path.is_dir() else self.path.stem
        self.loop = loop
        self.retry = loop
        self._fps_given = float(fps) if fps else None
        self.cines = self._open()
        self.spacing = self.cines[0].spacing
        self.fps = self._fps_given or self.cines[0].fps or DEFAULT_FPS
        if self._fps_given is None and self.cines[0].fps is None:
            logger.warning("DICOM %s: no frame time or rate in the file, playing at %g fps", self.path, DEFAULT_FPS)

    def _open(self) -> list[Cine]:
        """Every usable file's header, in playing order; SourceError when there is none."""
        if not self.path.is_dir():
            try:
                return [open_cine(self.path)]
            except DataError as exc:
                raise SourceError(str(exc)) from None
        files = sorted(_files(self.path), key=lambda p: (_instance_number(p), p.name))
        cines = []
        for file in files:
            try:
                cines.append(open_cine(file))
            except DataError as exc:
                self.warn(f"{exc}; left out of {self.path}")
        if not cines:
            raise SourceError(f"DICOM folder {self.path}: no DICOM file with frames that can be read")
        return cines

    def reopen(self) -> None:
        self.cines = self._open()

    def _play_once(self) -> Iterator[tuple[np.ndarray, float | None]]:
        played = 0
        first = 0  # the stream index of this file's first frame
        t_first = 0.0  # the time of this file's first frame
        for cine in self.cines:
            self.spacing = cine.spacing
            period = 1.0 / (cine.fps or self.fps)
            try:
                for item in read_frames(cine):
                    if isinstance(item, Gap):
                        self.skip(item.count, f"DICOM file {cine.path}: {item.reason}, left out")
                        continue
                    index, image = item
                    yield image, self._time(cine, first + index, index, t_first)
                    played += 1
            except DataError as exc:
                self.skip(cine.frame_count, f"{exc}, left out")
            first += cine.frame_count
            t_first += (cine.frame_times[-1] if cine.frame_times else (cine.frame_count - 1) * period) + period
        if not played:
            raise SourceError(f"DICOM {self.path}: no frame could be read")

    def _time(self, cine: Cine, stream_index: int, index: int, t_first: float) -> float:
        if self._fps_given is not None:
            return stream_index / self._fps_given
        if cine.frame_times is not None:
            return t_first + cine.frame_times[index]
        return t_first + index / self.fps

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        yield from self._play_once()
        while self.loop:
            yield from self._play_once()
