"""Capture sources backed by training data, and ``open_source``, which opens any source by its name.

``fetalhead capture SOURCE`` takes a device index, a video file, a scan
folder in the training data format (``ScanFolderSource``, read with
``train.data.load_scan``) or ``synthetic`` (``SyntheticSource``, endless
``train.synth`` sweeps). The device and video sources are
``stream.sources``'; the two here need ``train``, which the ``stream``
package does not import. Every bad source is a one-line ``SourceError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Generator, Iterator

import numpy as np

from models.errors import DataError
from stream.sources import DEFAULT_FPS, DeviceSource, Source, SourceError, VideoFileSource, play_video

if TYPE_CHECKING:
    from train.data import Problem, Scan

SYNTHETIC = "synthetic"
SYNTHETIC_FPS = 30.0


class ScanFolderSource(Source):
    """A scan folder in the training data format (see ``train.data``), at ``fps`` (default 25).

    A frame that cannot be read is left out with a warning (``Source.skip``):
    the frames after it keep their index. A looped folder is retried when it
    goes missing or unreadable.
    """

    def __init__(self, path: str | Path, *, fps: float | None = None, loop: bool = False) -> None:
        self.path = Path(path)
        self.scan = self._load()
        self.name = self.scan.name
        self.fps = float(fps) if fps else DEFAULT_FPS
        self.loop = loop
        self.retry = loop

    def _load(self) -> Scan:
        """The scan, checked; SourceError naming the folder's first fatal problem and its file."""
        # Imported here: pandas and the data checks are needed for a scan folder only.
        from train.data import load_scan

        scan, problems = load_scan(self.path)
        if scan is None:
            fatal = [p for p in problems if p.fatal]
            more = f" (and {len(fatal) - 1} more problems)" if len(fatal) > 1 else ""
            first = self._where(fatal[0]) if fatal else "cannot be read"
            raise SourceError(f"scan folder {self.path}: {first}{more}")
        if len(scan) == 0:
            raise SourceError(f"scan folder {self.path}: no frames")
        return scan

    def _where(self, problem: Problem) -> str:
        """A problem's text led by its file (the folder's own problems as they are)."""
        if problem.path == self.path:
            return problem.message
        row = f" row {problem.row}" if problem.row is not None else ""
        return f"{self._relative(problem.path)}{row}: {problem.message}"

    def _relative(self, path: Path) -> str:
        """``path`` as seen from the folder, since every message already names the folder."""
        try:
            return str(path.relative_to(self.path))
        except ValueError:
            return str(path)

    def reopen(self) -> None:
        self.scan = self._load()

    def _play_frames(self) -> Generator[tuple[np.ndarray, float], None, int]:
        from train.data import read_image

        played = 0
        unreadable: list[tuple[int, Path, str]] = []  # the frames since the last good one
        for index, path in enumerate(self.scan.frame_files):
            try:
                image = read_image(path)
            except DataError as exc:
                unreadable.append((index, path, str(exc).removeprefix(f"{path}: ")))
                continue
            if unreadable:
                self._leave_out(unreadable)
                unreadable = []
            yield image, index / self.fps
            played += 1
        if unreadable:
            self._leave_out(unreadable)
        return played

    def _leave_out(self, unreadable: list[tuple[int, Path, str]]) -> None:
        """One warning for a run of unreadable frames, naming the first file and why it failed."""
        (first, path, reason), last = unreadable[0], unreadable[-1][0]
        what = f"{self._relative(path)} (frame {first})"
        if last != first:
            what += f" and the {last - first} frames after it"
        self.skip(len(unreadable), f"scan folder {self.path}: {what}: {reason}, left out")

    def _play_once(self) -> Iterator[tuple[np.ndarray, float | None]]:
        if self.scan.video is not None:
            played = yield from play_video(self.scan.video, self.fps, self.skip)
        else:
            played = yield from self._play_frames()
        if not played:
            raise SourceError(f"scan folder {self.path}: no frame could be read")

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        yield from self._play_once()
        while self.loop:
            yield from self._play_once()


class SyntheticSource(Source):
    """Endless synthetic ultrasound sweeps (``train.synth``), uint8 (height, width)."""

    def __init__(self, *, fps: float | None = None, seed: int = 0, height: int = 256, width: int = 320) -> None:
        # Imported here, like load_scan: a device or file capture needs none of train.
        from train.synth import synthetic_frames

        self.name = SYNTHETIC
        self.fps = float(fps) if fps else SYNTHETIC_FPS
        self._frames = synthetic_frames(seed, height, width)

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        index = 0
        for frame, _label in self._frames:
            yield frame, index / self.fps
            index += 1


def open_source(spec: str, *, fps: float | None = None, loop: bool = False, seed: int = 0,
                size: tuple[int, int] = (256, 320)) -> Source:
    """The source that ``spec`` names, opened and checked.

    spec: a device index (``"0"``), a video file, a scan folder, ``"synthetic"`` or an
    OpenIGTLink server ``igtl://HOST:PORT[/DEVICE]`` (``stream.igtl.IgtlSource``).
    fps: the nominal frame rate, overriding the file's own (for a device, a
    request to the driver). loop: replay a file or folder endlessly.
    seed, size (height, width): the synthetic source's frames.
    Raises SourceError (one line) when the source cannot be used.
    """
    if fps is not None and not fps > 0:
        raise SourceError(f"source {spec}: fps must be > 0, got {fps}")
    text = str(spec).strip()
    if text.isdigit():
        return DeviceSource(int(text), fps=fps)
    if text == SYNTHETIC:
        return SyntheticSource(fps=fps, seed=seed, height=size[0], width=size[1])
    if text.startswith("igtl://"):
        # Imported here, like load_scan: an OpenIGTLink client is needed for igtl:// only.
        from stream.igtl import IgtlSource

        return IgtlSource(text)
    path = Path(text)
    # Imported here, like load_scan: pydicom is needed for DICOM only.
    from stream.dicom import DicomSource, is_dicom, is_dicom_folder

    if is_dicom_folder(path) or (path.is_file() and (path.suffix.lower() == ".dcm" or is_dicom(path))):
        return DicomSource(path, fps=fps, loop=loop)
    if path.is_dir():
        folder = ScanFolderSource(path, fps=fps, loop=loop)
        if folder.scan.video is None or not is_dicom(folder.scan.video):
            return folder
        # A scan whose frames are a DICOM cine plays with the cine's own timing, under the scan's name.
        cine = DicomSource(folder.scan.video, fps=fps, loop=loop)
        cine.name = folder.name
        return cine
    if not path.exists():
        raise SourceError(f"source {text}: not found (expected a device index, a video file, "
                          f"a scan folder or '{SYNTHETIC}')")
    return VideoFileSource(path, fps=fps, loop=loop)
