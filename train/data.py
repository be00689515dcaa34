"""Reading scan datasets: frames, videos, labels, and every problem with them.

A dataset is a folder with one folder per scan. A scan folder holds either
frame images (png, jpg, jpeg, bmp, tif, tiff) directly, under ``frames/`` or
under ``ImageData/``, or exactly one video (mp4, avi, mov, mkv, or a DICOM
cine ``.dcm``, read by ``models.dicom``); and its labels in ``labels.csv`` or
``labels.xlsx``: one row per frame, naming the frame by file name (with or
without extension, any case) or, for a video, by 0-based frame index.
Instead of a label file, frames may sit in class folders ``Head/`` and
``Not-Head/``. Frames are always in natural order of their file
names (``frame2`` before ``frame10``), across both class folders.

Problems are ``fatal`` when the scan's data is wrong or ambiguous as it stands,
so training on it would learn from missing or wrong labels: no frames, no or
unreadable label file, a frame without a label, a label without a frame, an
unknown label value, a frame listed twice with different labels, an unreadable
or empty image, a video with fewer or more frames than labels, two label files
or both frames and a video in one scan; and for the whole dataset: no scan
folder, no usable scan, or no frame of one class in the usable scans. They are
warnings (``fatal=False``) when the data is usable as it is: a frame listed
twice with the same label, two frame files with identical content, a scan
shorter than the window (it gives no training window and is left out), a label
file that the class folders override. ``CheckReport.ok`` is true when there is
no fatal problem at all, and ``load_dataset`` refuses the data otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np
import pandas as pd
from natsort import natsorted, ns

from models.classes import HEAD, NOT_HEAD, class_name
from models.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# A DICOM cine is a scan's video too: its frames are labelled by index the same way.
DICOM_SUFFIX = ".dcm"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", DICOM_SUFFIX)
LABEL_SUFFIXES = (".csv", ".xlsx")
FRAME_FOLDERS = ("frames", "imagedata")  # compared lower-case
FRAME_COLUMNS = ("frame", "file", "filename", "file_name", "image", "image_name", "image_file",
                 "frame_name", "name", "index", "frame_index", "frame_id")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "head", "target")

# Beyond this many problems of one kind in one scan the rest are counted in
# one line: a wrong naming scheme would otherwise print one line per frame.
MAX_PER_KIND = 10

_LABEL_WORDS = {"head": HEAD, "nothead": NOT_HEAD, "1": HEAD, "0": NOT_HEAD,
                "true": HEAD, "false": NOT_HEAD, "yes": HEAD, "no": NOT_HEAD}
_SEPARATORS = re.compile(r"[\s_\-]+")
_UNLABELLED = -1  # label slot of a frame whose label is missing or unknown


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: the file (and spreadsheet row) it is in."""

    path: Path
    message: str
    row: int | None = None
    fatal: bool = True

    def __str__(self) -> str:
        where = f"{self.path}:row {self.row}" if self.row is not None else str(self.path)
        return f"{where}: {self.message}"


@dataclass(frozen=True, eq=False)  # eq on an ndarray field is ambiguous
class Scan:
    """One labelled scan whose every frame has a label 1 (Head) or 0 (Not-Head).

    ``labels``: int8 (N,), read-only, in frame order. ``frame_files`` is empty
    for a video scan, and ``frame_names`` then holds the indexes as strings.
    ``source`` is ``frames``, ``video`` or ``class folders``.
    """

    name: str
    root: Path
    frame_files: tuple[Path, ...]
    video: Path | None
    labels: np.ndarray
    frame_names: tuple[str, ...]
    source: str = "frames"

    def __len__(self) -> int:
        return len(self.labels)

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Every frame in order: uint8 (H, W) or (H, W, 3) BGR; a video is read in one pass."""
        if self.video is None:
            for path in self.frame_files:
                yield read_image(path)
            return
        if _is_dicom(self.video):
            yield from _dicom_frames(self.video, len(self))
            return
        capture = _open_video(self.video)
        try:
            for i in range(len(self)):
                ok, frame = capture.read()
                if not ok:
                    raise DataError(f"{self.video}: ended after {i} of {len(self)} frames")
                yield frame
        finally:
            capture.release()

    def read_frame(self, i: int) -> np.ndarray:
        """Frame ``i``: uint8 (H, W) or (H, W, 3) BGR.

        For a video this seeks, which is exact for intra-frame codecs (MJPG) but
        may land near, not on, frame ``i`` in long-GOP mp4; use ``iter_frames``
        to read a whole video.
        """
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} is out of range for scan {self.name} ({len(self)} frames)")
        if self.video is None:
            return read_image(self.frame_files[i])
        if _is_dicom(self.video):
            *_, frame = _dicom_frames(self.video, i + 1)
            return frame
        capture = _open_video(self.video)
        try:
            capture.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, frame = capture.read()
        finally:
            capture.release()
        if not ok:
            raise DataError(f"{self.video}: cannot read frame {i}")
        return frame


@dataclass(frozen=True)
class ScanSummary:
    """Frame and label counts of one scan folder, whether or not it is usable."""

    name: str
    frames: int
    head: int
    not_head: int
    source: str  # 'frames', 'video', 'class folders', or 'none' when no frames were found


@dataclass(frozen=True)
class CheckReport:
    """Every scan's counts, every problem, and the scans training can use."""

    scans: list[ScanSummary]
    problems: list[Problem]
    usable_scans: list[str]

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def ok(self) -> bool:
        """True when no problem is fatal (which implies at least one usable scan)."""
        return not self.fatal


class _Unreadable(Exception):
    """A file that cannot be read; the message says why, without the path."""


def _decode(data: bytes) -> np.ndarray:
    if not data:
        raise _Unreadable("empty file")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise _Unreadable("not a readable image")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)  # full 16-bit range onto 0..255, the same for every frame
    elif image.dtype != np.uint8:
        raise _Unreadable(f"unsupported pixel type {image.dtype}")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        elif channels != 3:
            raise _Unreadable(f"unsupported image with {channels} channels")
    return np.ascontiguousarray(image)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W) gray or (H, W, 3) BGR.

    16-bit images are scaled to 8 bits (value >> 8), BGRA loses its alpha. An
    unreadable, empty or undecodable file is a DataError naming the path.
    """
    path = Path(path)
    try:
        # bytes then imdecode rather than imread: imread cannot open non-ASCII paths on Windows
        return _decode(path.read_bytes())
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except _Unreadable as exc:
        raise DataError(f"{path}: {exc}") from None


def parse_label(value: object) -> int | None:
    """1 (Head) or 0 (Not-Head) from a label cell, or None when the value is unknown.

    Accepts Head / Not-Head / Not Head / NotHead / Not_Head, 1 / 0, true / false,
    yes / no in any case and spacing, and the numbers 1 and 0.
    """
    if isinstance(value, (bool, np.bool_)):
        return HEAD if value else NOT_HEAD
    if isinstance(value, (int, float, np.integer, np.floating)):
        return {1: HEAD, 0: NOT_HEAD}.get(value)  # NaN and other numbers: None
    if not isinstance(value, str):
        return None
    text = _SEPARATORS.sub("", value.strip().lower())
    if text in _LABEL_WORDS:
        return _LABEL_WORDS[text]
    try:
        return {1: HEAD, 0: NOT_HEAD}.get(float(text))  # "1.0" from spreadsheets
    except ValueError:
        return None


def normalise_column(name: object) -> str:
    """A column header as compared: lower case, stripped, spaces and dashes as underscores."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _read_table(path: Path) -> pd.DataFrame:
    # Every cell as text: frame names like 0001 must keep their zeros, and
    # unknown label values are reported as written.
    if path.suffix.lower() == ".csv":
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            header = fh.readline()
        # Spreadsheets save CSV with ';' in some locales.
        sep = max((",", ";", "\t"), key=header.count)
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                           skip_blank_lines=False, encoding="utf-8-sig")
    return pd.read_excel(path, dtype=str, keep_default_na=False, engine="openpyxl")


def _read_labels(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise _Unreadable(f"unknown label file format {suffix or '(no suffix)'}; use labels.csv or labels.xlsx")
    if not path.is_file():
        raise _Unreadable("not found")
    try:
        table = _read_table(path)
    # pandas and openpyxl raise many unrelated types for a malformed file
    # (ParserError, UnicodeDecodeError, BadZipFile, InvalidFileException ...);
    # each of them means only that this file cannot be read.
    except Exception as exc:  # noqa: BLE001
        kind = "CSV" if suffix == ".csv" else "an Excel workbook"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _Unreadable(f"cannot read as {kind} ({reason})") from None
    columns = [normalise_column(c) for c in table.columns]
    found = ", ".join(columns) or "none"
    positions = {}
    for role, names in (("frame", FRAME_COLUMNS), ("label", LABEL_COLUMNS)):
        match = next((n for n in names if n in columns), None)
        if match is None:
            raise _Unreadable(f"no {role} column (columns: {found}; expected one of {', '.join(names)})")
        positions[role] = columns.index(match)
    frames = table.iloc[:, positions["frame"]].astype(str).str.strip()
    values = table.iloc[:, positions["label"]].astype(str).str.strip()
    keep = ((frames != "") | (values != "")).to_numpy()
    labels = [parse_label(v) for v in values[keep]]
    return pd.DataFrame({
        "frame": list(frames[keep]),
        "label": np.array([_UNLABELLED if v is None else v for v in labels], dtype=np.int8),
        "value": list(values[keep]),
        # +2: the header is row 1 and the first data row is row 2, as a spreadsheet shows them
        "row": np.flatnonzero(keep).astype(np.int64) + 2,
    })


def read_labels(path: str | Path) -> pd.DataFrame:
    """A label file as columns ``frame`` (str), ``label`` (int8), ``value`` (str), ``row`` (int).

    ``label`` is 1 (Head), 0 (Not-Head) or -1 where the cell is not a known
    label; ``value`` is the cell as written, for messages. ``row`` is the
    1-based spreadsheet row counting the header. Rows with neither a frame nor
    a label are skipped. An unknown suffix, an unparsable file or a missing
    frame or label column is a DataError naming the file.
    """
    path = Path(path)
    try:
        return _read_labels(path)
    except _Unreadable as exc:
        raise DataError(f"{path}: {exc}") from None


def _natural(paths: list[Path]) -> list[Path]:
    return natsorted(paths, key=lambda p: p.name, alg=ns.IGNORECASE)


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _with_suffix(paths: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    return _natural([p for p in paths if p.is_file() and p.suffix.lower() in suffixes])


def _class_of_folder(name: str) -> int | None:
    return {"head": HEAD, "nothead": NOT_HEAD}.get(_SEPARATORS.sub("", name.lower()))


def scan_dirs(root: str | Path) -> list[Path]:
    """The scan folders of a dataset in natural order (hidden folders skipped)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return _natural([p for p in _visible(root) if p.is_dir()])


class _Problems:
    """A scan's problems, with long runs of one kind cut to MAX_PER_KIND lines plus a count."""

    def __init__(self, root: Path):
        self.root = root
        self.by_kind: dict[str, list[Problem]] = {}

    def add(self, problem: Problem, kind: str | None = None) -> None:
        self.by_kind.setdefault(kind or problem.message, []).append(problem)

    def as_list(self) -> list[Problem]:
        out: list[Problem] = []
        for kind, items in self.by_kind.items():
            if len(items) <= MAX_PER_KIND + 1:
                out.extend(items)
                continue
            out.extend(items[:MAX_PER_KIND])
            rest = items[MAX_PER_KIND:]
            out.append(Problem(self.root, f"and {len(rest)} more: {kind}",
                               fatal=any(p.fatal for p in rest)))
        return out


class _Found(NamedTuple):
    """A scan folder as read: ``labels`` int8 (N,) with -1 where a frame has no usable label."""

    frame_files: tuple[Path, ...]
    video: Path | None
    labels: np.ndarray
    frame_names: tuple[str, ...]
    source: str


_NOTHING = _Found((), None, np.zeros(0, np.int8), (), "none")  # a scan folder without usable frames


def _check_images(files: list[Path], problems: _Problems, decode: bool) -> None:
    """Empty files always; with ``decode``, undecodable images and files with identical bytes."""
    seen: dict[bytes, Path] = {}
    for path in files:
        if not decode:
            if path.stat().st_size == 0:
                problems.add(Problem(path, "empty file"), "unreadable images")
            continue
        try:
            data = path.read_bytes()
            _decode(data)
        except OSError as exc:
            problems.add(Problem(path, f"cannot read ({exc.strerror or exc})"), "unreadable images")
            continue
        except _Unreadable as exc:
            problems.add(Problem(path, str(exc)), "unreadable images")
            continue
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest in seen:
            problems.add(Problem(path, f"same content as {seen[digest].name}", fatal=False),
                         "frames identical to another frame")
        else:
            seen[digest] = path


def _open_video(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise DataError(f"{path}: cannot open video")
    return capture


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() == DICOM_SUFFIX


def _open_cine(path: Path):
    """The cine's header; its DataError led by the path alone, as every Problem here is."""
    from models.dicom import open_cine

    try:
        return open_cine(path)
    except DataError as exc:
        raise DataError(f"{path}: {str(exc).removeprefix(f'DICOM file {path}: ')}") from None


def _dicom_frames(path: Path, count: int) -> Iterator[np.ndarray]:
    """The first ``count`` frames of a DICOM cine: uint8 (H, W) or (H, W, 3) BGR; DataError at a damaged one."""
    from models.dicom import Gap, read_frames

    if count <= 0:
        return
    for item in read_frames(_open_cine(path)):
        if isinstance(item, Gap):
            raise DataError(f"{path}: {item.reason}")
        yield item[1]
        if item[0] + 1 >= count:
            return


def _count_dicom_frames(path: Path, decode: bool) -> int:
    """The header's Number of Frames, checked against the data by decoding every frame (``decode``)."""
    frame_count = _open_cine(path).frame_count
    if decode:
        for _ in _dicom_frames(path, frame_count):
            pass
    return frame_count


def _count_video_frames(path: Path, decode: bool) -> int:
    """Decodable frames (``decode``) or the container's frame count, which may be approximate."""
    if _is_dicom(path):
        return _count_dicom_frames(path, decode)
    capture = _open_video(path)
    try:
        if not decode:
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            if count > 0:
                return count
        count = 0
        while capture.grab() and capture.retrieve()[0]:
            count += 1
        return count
    finally:
        capture.release()


def _find_label_file(path: Path, problems: _Problems) -> Path | None:
    candidates = _natural([p for p in _visible(path) if p.is_file() and p.stem.lower() == "labels"])
    known = [p for p in candidates if p.suffix.lower() in LABEL_SUFFIXES]
    if len(known) > 1:
        problems.add(Problem(path, f"both {' and '.join(p.name for p in known)}; keep one"))
        return None
    if known:
        return known[0]
    if candidates:
        problems.add(Problem(candidates[0], f"unknown label file format {candidates[0].suffix or '(no suffix)'}; "
                                            "use labels.csv or labels.xlsx"))
    else:
        problems.add(Problem(path, "no label file (labels.csv or labels.xlsx) and no Head/ Not-Head/ folders"))
    return None


def _assign_labels(table: pd.DataFrame, n_frames: int, names: list[str], label_file: Path,
                   index_of: Callable[[str], int | str], problems: _Problems) -> tuple[np.ndarray, np.ndarray]:
    """Labels int8 (N,) from the table rows, -1 where unknown; and bool (N,) of frames named by a row.

    ``names`` are the frames as messages call them; ``index_of(frame)`` gives
    the index of the frame a row names, or a message saying why none matches.
    """
    labels = np.full(n_frames, _UNLABELLED, dtype=np.int8)
    first_row: dict[int, tuple[int, str, int]] = {}  # frame index -> its first row, value and label
    for frame, label, value, row in table[["frame", "label", "value", "row"]].itertuples(index=False):
        row, label = int(row), int(label)
        if not frame:
            problems.add(Problem(label_file, f"label {value!r} names no frame", row), "labels without a frame")
            continue
        i = index_of(frame)
        if isinstance(i, str):
            problems.add(Problem(label_file, i, row), "labels without a frame")
            continue
        if label == _UNLABELLED:
            problems.add(Problem(label_file, f"unknown label {value!r} for {names[i]} "
                                             "(expected Head or Not-Head, 1 or 0)", row), "unknown label values")
        if i not in first_row:
            first_row[i] = (row, value, label)
            labels[i] = label
            continue
        earlier_row, earlier_value, earlier_label = first_row[i]
        if earlier_label == label:
            problems.add(Problem(label_file, f"{names[i]} is listed again (first on row {earlier_row})",
                                 row, fatal=False), "frames listed twice")
        elif _UNLABELLED not in (label, earlier_label):  # an unknown value is reported on its own
            problems.add(Problem(label_file, f"{names[i]} is listed again with another label "
                                             f"({earlier_value!r} on row {earlier_row}, {value!r} here)", row),
                         "frames listed twice with different labels")
            labels[i] = _UNLABELLED
    named = np.zeros(n_frames, dtype=bool)
    named[list(first_row)] = True
    return labels, named


def _image_index(files: list[Path], folder: str) -> Callable[[str], int | str]:
    by_name = {f.name.lower(): i for i, f in enumerate(files)}
    by_stem: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_stem.setdefault(f.stem.lower(), []).append(i)

    def index_of(frame: str) -> int | str:
        key = frame.replace("\\", "/").rsplit("/", 1)[-1].lower()
        if key in by_name:
            return by_name[key]
        matches = by_stem.get(key, [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            both = " and ".join(files[i].name for i in matches)
            return f"{frame} matches {both}; name the file with its extension"
        return f"{frame} has no frame file in {folder}"

    return index_of


def _video_index(video: Path, n_frames: int) -> Callable[[str], int | str]:
    def index_of(frame: str) -> int | str:
        try:
            number = float(frame)
        except ValueError:
            number = float("nan")
        if not number.is_integer():
            return f"frame {frame!r} is not a frame index (0, 1, 2 ...) of {video.name}"
        if not 0 <= number < n_frames:
            return f"frame {int(number)} is not in {video.name} (frames 0..{n_frames - 1})"
        return int(number)

    return index_of


def _inspect_class_folders(path: Path, class_dirs: dict[Path, int], check_images: bool,
                           problems: _Problems) -> _Found:
    files: list[Path] = []
    classes: dict[Path, int] = {}
    for folder, cls in class_dirs.items():
        for f in _with_suffix(_visible(folder), IMAGE_SUFFIXES):
            files.append(f)
            classes[f] = cls
    files = _natural(files)
    folder_of: dict[str, Path] = {}
    for f in files:
        if f.name.lower() in folder_of:
            problems.add(Problem(f, f"also in {folder_of[f.name.lower()].name}/: which label is right?"),
                         "frames in both class folders")
        folder_of.setdefault(f.name.lower(), f.parent)
    if not files:
        problems.add(Problem(path, "no frames: the class folders hold no images"))
    for label_file in (p for p in _visible(path) if p.is_file() and p.stem.lower() == "labels"):
        problems.add(Problem(label_file, "ignored: labels come from the class folders", fatal=False))
    _check_images(files, problems, check_images)
    labels = np.array([classes[f] for f in files], dtype=np.int8)
    return _Found(tuple(files), None, labels, tuple(f.name for f in files), "class folders")


def _inspect(path: Path, check_images: bool) -> tuple[_Found, list[Problem]]:
    """Everything in one scan folder, readable or not, and its problems."""
    problems = _Problems(path)
    if not path.is_dir():
        problems.add(Problem(path, "not a folder"))
        return _NOTHING, problems.as_list()
    entries = _visible(path)
    class_dirs = {d: c for d in entries if d.is_dir() and (c := _class_of_folder(d.name)) is not None}
    if class_dirs:
        found = _inspect_class_folders(path, class_dirs, check_images, problems)
        return found, problems.as_list()

    files, folder = _with_suffix(entries, IMAGE_SUFFIXES), path
    for sub in _natural([d for d in entries if d.is_dir() and d.name.lower() in FRAME_FOLDERS]):
        images = _with_suffix(_visible(sub), IMAGE_SUFFIXES)
        if images:
            files, folder = images, sub
            break
    videos = _with_suffix(entries, VIDEO_SUFFIXES)
    if files and videos:
        problems.add(Problem(path, f"holds both frame images and a video ({videos[0].name}); keep one"))
        return _NOTHING, problems.as_list()
    if len(videos) > 1:
        problems.add(Problem(path, f"holds {len(videos)} videos ({', '.join(v.name for v in videos)}); "
                                   "a scan is one video"))
        return _NOTHING, problems.as_list()
    if not files and not videos:
        problems.add(Problem(path, "no frames: no images (" + ", ".join(s[1:] for s in IMAGE_SUFFIXES)
                                   + ") here, in frames/ or in ImageData/, and no video ("
                                   + ", ".join(s[1:] for s in VIDEO_SUFFIXES) + ")"))
        return _NOTHING, problems.as_list()

    video = videos[0] if videos else None
    if video is not None:
        try:
            n_frames = _count_video_frames(video, decode=check_images)
        except DataError as exc:
            problems.add(Problem(video, str(exc).removeprefix(f"{video}: ")))
            return _NOTHING, problems.as_list()
        if n_frames == 0:
            problems.add(Problem(video, "no decodable frames"))
        names = [str(i) for i in range(n_frames)]
        index_of = _video_index(video, n_frames)
    else:
        _check_images(files, problems, check_images)
        n_frames = len(files)
        names = [f.name for f in files]
        index_of = _image_index(files, f"{folder.relative_to(path.parent)}/")

    labels = np.full(n_frames, _UNLABELLED, dtype=np.int8)
    source = "video" if video is not None else "frames"
    label_file = _find_label_file(path, problems)
    if label_file is not None:
        try:
            table = _read_labels(label_file)
        except _Unreadable as exc:
            problems.add(Problem(label_file, str(exc)))
        else:
            shown = names if video is None else [f"frame {n}" for n in names]
            labels, named = _assign_labels(table, n_frames, shown, label_file, index_of, problems)
            for i in np.flatnonzero(~named):
                if video is None:
                    problems.add(Problem(files[i], f"no label in {label_file.name}"), "frames without a label")
                else:
                    problems.add(Problem(video, f"frame {i} has no label in {label_file.name}"),
                                 "frames without a label")
    found = _Found(tuple(files) if video is None else (), video, labels, tuple(names), source)
    return found, problems.as_list()


def _to_scan(path: Path, found: _Found) -> Scan:
    labels = found.labels.copy()
    labels.flags.writeable = False
    return Scan(path.name, path, found.frame_files, found.video, labels, found.frame_names, found.source)


def load_scan(path: str | Path, *, check_images: bool = False) -> tuple[Scan | None, list[Problem]]:
    """One scan folder and its problems; the Scan is None when any problem is fatal.

    Without ``check_images`` images are only checked for being empty and a
    video's length is the container's frame count; with it every image and
    video frame is decoded, and frame files with identical bytes are reported.
    """
    path = Path(path)
    found, problems = _inspect(path, check_images)
    if any(p.fatal for p in problems):
        return None, problems
    return _to_scan(path, found), problems


def _check(root: Path, window: int, check_images: bool) -> tuple[CheckReport, dict[str, Scan]]:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    dirs = scan_dirs(root)
    problems: list[Problem] = []
    summaries: list[ScanSummary] = []
    usable: dict[str, Scan] = {}
    for label_file in (p for p in _visible(root) if p.is_file() and p.stem.lower() == "labels"):
        problems.append(Problem(label_file, "a label file in the dataset folder, which should hold "
                                            "one folder per scan; is this a scan folder?", fatal=False))
    if not dirs:
        problems.append(Problem(root, "no scan folders (a dataset holds one folder per scan)"))
    for path in dirs:
        found, scan_problems = _inspect(path, check_images)
        summaries.append(ScanSummary(path.name, len(found.labels), int(np.sum(found.labels == HEAD)),
                                     int(np.sum(found.labels == NOT_HEAD)), found.source))
        problems.extend(scan_problems)
        if any(p.fatal for p in scan_problems):
            continue
        if len(found.labels) < window:
            problems.append(Problem(path, f"{len(found.labels)} frames, shorter than the window of {window}: "
                                          "no training window, left out", fatal=False))
            continue
        usable[path.name] = _to_scan(path, found)
    if dirs and not usable:
        problems.append(Problem(root, "no usable scan"))
    elif usable:
        labels = np.concatenate([s.labels for s in usable.values()])
        for cls in (HEAD, NOT_HEAD):
            if not np.any(labels == cls):
                problems.append(Problem(root, f"no {class_name(cls)} frame in any usable scan"))
    return CheckReport(summaries, problems, list(usable)), usable


def check_dataset(root: str | Path, *, window: int = 8, check_images: bool = True) -> CheckReport:
    """Every scan's counts and every problem of the dataset at ``root``.

    A missing ``root`` is a DataError; everything else is a Problem in the
    report. See the module docstring for which problems are fatal.
    """
    return _check(Path(root), window, check_images)[0]


def load_dataset(root: str | Path, *, window: int = 8, check_images: bool = False) -> list[Scan]:
    """The usable scans of the dataset at ``root``, in natural order.

    Runs the same checks as ``check_dataset`` and logs the warnings. Any fatal
    problem is a DataError whose first line says how many there are and whose
    next lines list them. Scans shorter than ``window`` are left out (a warning).
    """
    root = Path(root)
    report, scans = _check(root, window, check_images)
    for problem in report.problems:
        if not problem.fatal:
            logger.warning("%s", problem)
    if not report.ok:
        fatal = report.fatal
        lines = [f"{root}: {len(fatal)} problem{'s' if len(fatal) != 1 else ''} make the data "
                 "unusable for training (fetalhead data check DATA for the full report):"]
        lines += [f"  {p}" for p in fatal]
        raise DataError("\n".join(lines))
    logger.debug("%s: %d usable scans", root, len(scans))
    return [scans[name] for name in report.usable_scans]
