"""A synthetic ultrasound phantom: probe sweeps past a fetal head, written as a dataset.

Each scan is one ``Sweep``: a convex-probe sector (fan) on a black background
with burned-in text outside it, showing a static scene (tissue layers, the
uterine wall, amniotic fluid, a few fetal-body echoes and one fetal head) that
slides through the fan as the probe moves. The head is a bright elliptical
skull ring with a midline echo. A frame is labelled Head when at least half of
the ring lies inside the fan, and the sweep speed is chosen so that 20-30 % of
each scan's frames are Head frames, with Not-Head frames on both sides.

The scene is rendered once per scan as a panorama in log-intensity, so a frame
costs a slice, a noise draw and a clip: about a millisecond at 256x320.

``synth_dataset`` (the command ``fetalhead synth OUT``) writes the dataset
format that ``train.data`` reads: ``scan_000/frames/frame_0000.png ...`` with
``labels.csv``; a fraction of the scans as ``scan_xxx/scan.avi`` (MJPG,
labels by frame index); and, from four scans up, one image scan with
``labels.xlsx`` instead of ``labels.csv`` so that every format is exercised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pandas as pd

from models.classes import class_name
from models.errors import DataError
from models.progress import NO_PROGRESS, Progress, Task
from models.settings import check, setting

# Ring points sampled to decide how much of the skull is inside the fan.
_RING_POINTS = 96
# Display mapping: log-intensity LOG_FLOOR maps to 0, LOG_FLOOR + DYNAMIC_RANGE to 255.
_LOG_FLOOR = -3.6
_DYNAMIC_RANGE = 4.4
_GRAY_PER_LOG = 255.0 / _DYNAMIC_RANGE
_TEXT_GRAY = 215
_VIDEO_FPS = 25.0


@dataclass(frozen=True)
class SynthConfig:
    """What ``fetalhead synth`` writes: ``scans`` scans of ``frames`` frames, uint8 (height, width).

    ``video_fraction`` of the scans (at least one from three scans up, unless
    it is 0) are written as videos; ``head_fraction`` bounds each scan's share
    of Head frames. TOML table ``[synth]``.
    """

    scans: int = setting(12, "number of scans")
    frames: int = setting(120, "frames per scan")
    height: int = setting(256, "frame height in pixels")
    width: int = setting(320, "frame width in pixels")
    seed: int = setting(0, "random seed; scan k depends only on it, k and the frame size and count")
    video_fraction: float = setting(0.2, "share of scans written as MJPG video")
    head_fraction: tuple[float, float] = setting((0.2, 0.3), "lowest and highest share of Head frames in a scan")

    def __post_init__(self) -> None:
        check(self.scans >= 1, f"scans: must be >= 1, got {self.scans}")
        check(self.frames >= 10, f"frames: must be >= 10, got {self.frames}")
        check(64 <= self.height <= 2048, f"height: must be 64..2048, got {self.height}")
        check(64 <= self.width <= 2048, f"width: must be 64..2048, got {self.width}")
        check(self.seed >= 0, f"seed: must be >= 0, got {self.seed}")
        check(0.0 <= self.video_fraction <= 1.0, f"video_fraction: must be in [0, 1], got {self.video_fraction}")
        low, high = self.head_fraction
        check(0.0 < low <= high <= 0.8,
              f"head_fraction: must be low, high with 0 < low <= high <= 0.8, got {self.head_fraction}")


@dataclass(frozen=True)
class _Fan:
    """Sector geometry in pixels: apex (x, y), radii r0..r1, half angle in radians."""

    apex_x: float
    apex_y: float
    r0: float
    r1: float
    half_angle: float

    @classmethod
    def for_frame(cls, height: int, width: int) -> _Fan:
        apex_y = 0.02 * height
        r1 = height - 2.0 - apex_y
        # Leave a tenth of the width each side for the depth scale.
        half_angle = min(math.radians(38.0), math.asin(min(1.0, 0.4 * width / r1)))
        return cls(width / 2.0, apex_y, 0.13 * height, r1, half_angle)

    def polar(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.apex_x, y - self.apex_y
        return np.hypot(dx, dy), np.arctan2(dx, dy)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r, phi = self.polar(x, y)
        return (r >= self.r0) & (r <= self.r1) & (np.abs(phi) <= self.half_angle)


@dataclass(frozen=True)
class _Head:
    """Skull ellipse: semi-axes a >= b, rotation (radians) and centre depth y, in pixels."""

    a: float
    b: float
    angle: float
    y: float

    @property
    def thickness(self) -> float:
        """The skull ring's half-width in pixels (the scale of its Gaussian profile)."""
        return max(1.2, 0.07 * self.b)

    def ring(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 (_RING_POINTS,) x and y offsets of points on the ring from its centre."""
        t = np.linspace(0.0, 2 * np.pi, _RING_POINTS, endpoint=False)
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        u, v = self.a * np.cos(t), self.b * np.sin(t)
        return u * ca - v * sa, u * sa + v * ca

    def fraction_inside(self, fan: _Fan, centres_x: np.ndarray) -> np.ndarray:
        """float64 (G,): share of the ring inside the fan for each centre x at depth ``y``."""
        ox, oy = self.ring()
        inside = fan.contains(centres_x[:, None] + ox[None, :], np.full((1, ox.size), self.y) + oy[None, :])
        return inside.mean(axis=1)


class Sweep:
    """One scan: a probe sweep past a fetal head, frame by frame.

    ``frame(i)`` is uint8 (height, width), deterministic for the sweep's seed
    and ``i`` in any order; ``labels`` is int8 (n_frames,) with 1 = Head.
    ``rng`` is a seed or a numpy Generator (which the sweep advances).
    """

    def __init__(self, rng: int | np.random.Generator, n_frames: int, height: int = 256, width: int = 320,
                 *, head_fraction: tuple[float, float] = (0.2, 0.3)):
        if n_frames < 3:
            raise ValueError(f"n_frames must be >= 3, got {n_frames}")
        if height < 32 or width < 32:
            raise ValueError(f"height and width must be >= 32, got {height}x{width}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.n_frames, self.height, self.width = n_frames, height, width
        self._fan = _Fan.for_frame(height, width)
        fan = self._fan
        depth = rng.uniform(0.5, 0.66) * fan.r1
        # In a narrow fan the head must still fit across it to be seen whole.
        a = min(rng.uniform(0.17, 0.25) * fan.r1, 0.8 * depth * math.tan(fan.half_angle))
        self._head = _Head(a=a, b=a * rng.uniform(0.72, 0.86), angle=math.radians(rng.uniform(-35, 35)),
                           y=fan.apex_y + depth)
        head_x = self._head_path(rng, head_fraction)
        self.labels = (self._head.fraction_inside(fan, head_x) >= 0.5).astype(np.int8)
        self.labels.flags.writeable = False
        # The scene slides by whole pixels; the head's centre in the scene is
        # placed so that every shift is >= 0.
        self._head_u = math.ceil(head_x.max())
        self._shifts = np.rint(self._head_u - head_x).astype(np.int64)
        self._noise_seed = int(rng.integers(2**63))
        self._panorama = self._render_scene(rng)
        self._static, self._floor, self.fan_mask = self._render_probe(rng)

    def __len__(self) -> int:
        return self.n_frames

    def _head_path(self, rng: np.random.Generator, head_fraction: tuple[float, float]) -> np.ndarray:
        """float64 (n_frames,): the head centre's x in frame pixels, moving at constant speed."""
        fan, head, n = self._fan, self._head, self.n_frames
        step = 0.25
        grid = np.arange(fan.apex_x - fan.r1 - head.a, fan.apex_x + fan.r1 + head.a, step)
        seen = grid[head.fraction_inside(fan, grid) >= 0.5]
        x_in, x_out = seen.min(), seen.max() + step
        low = min(max(math.ceil(head_fraction[0] * n), 1), n - 2)
        high = max(min(math.floor(head_fraction[1] * n), n - 2), low)
        # Aim inside the bounds: a frame at the edge of the ring's half-in
        # position can fall either side.
        target_low, target_high = (low + 1, high - 1) if high - low >= 2 else (low, high)
        n_head = int(np.clip(round(rng.uniform(*head_fraction) * n), target_low, target_high))
        first = int(rng.integers(1, n - n_head))  # Not-Head frames before and after
        direction = 1.0 if rng.random() < 0.5 else -1.0
        speed = (x_out - x_in) / n_head
        progress = (np.arange(n) - first + 0.5) * speed
        return x_in + progress if direction > 0 else x_out - progress

    def _render_scene(self, rng: np.random.Generator) -> np.ndarray:
        """float32 (height, panorama width): log-intensity of the scene, pre-scaled to gray levels."""
        fan, head = self._fan, self._head
        h, pw = self.height, self.width + int(self._shifts.max()) + 1
        y = np.arange(h, dtype=np.float32)[:, None]
        u = np.arange(pw, dtype=np.float32)[None, :]

        def wavy(depth: float, amplitude: float) -> np.ndarray:
            period = rng.uniform(0.8, 2.0) * self.width
            return depth + amplitude * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))

        reach = max(head.a, head.b)
        wave = 0.025 * fan.r1
        wall = rng.uniform(0.04, 0.08) * fan.r1
        # Some maternal tissue under the probe, then the uterine wall, which
        # stays above the head.
        wall_depth = min(fan.apex_y + fan.r0 + rng.uniform(0.05, 0.12) * fan.r1,
                         head.y - reach - wall - wave - 0.02 * fan.r1)
        wall_top = wavy(wall_depth, wave)
        wall_bottom = wall_top + wall
        back_top = wavy(head.y + reach + rng.uniform(0.04, 0.12) * fan.r1, wave)
        back_bottom = back_top + rng.uniform(0.06, 0.16) * fan.r1
        echo = np.select([y < wall_top, y < wall_bottom, y < back_top, y < back_bottom],
                         [0.35, 0.55, 0.04, rng.uniform(0.4, 0.55)], 0.28).astype(np.float32)
        line = max(1.0, 0.008 * h)
        for boundary in (wall_top, wall_bottom, back_top):
            echo += 0.6 * np.exp(-(((y - boundary) / line) ** 2))

        # Fetal body and limbs: echoes in the fluid that are not a skull ring.
        for _ in range(int(rng.integers(2, 5))):
            centre_u = rng.uniform(0, pw)
            if abs(centre_u - self._head_u) < 2.5 * head.a:
                continue
            size = head.a * rng.uniform(0.3, 0.7)
            centre = (int(centre_u), int(head.y + rng.uniform(-0.3, 0.3) * head.a))
            if rng.random() < 0.5:
                cv2.ellipse(echo, centre, (int(size), int(size * rng.uniform(0.4, 0.8))),
                            rng.uniform(0, 180), 0, 360, float(rng.uniform(0.25, 0.45)), -1)
            else:
                end = (int(centre_u + size * rng.uniform(-1, 1)), int(centre[1] + size * rng.uniform(-1, 1)))
                cv2.line(echo, centre, end, float(rng.uniform(0.6, 0.9)), max(1, int(0.012 * h)))

        self._draw_head(echo)
        echo = cv2.GaussianBlur(echo, (0, 0), max(0.5, 0.004 * h))
        speckle = _speckle(rng, (h, pw), scale=max(0.6, h / 256))
        return ((np.log(echo * speckle + 1e-4) - _LOG_FLOOR) * _GRAY_PER_LOG).astype(np.float32)

    def _draw_head(self, echo: np.ndarray) -> None:
        """Skull ring, brain and midline echo into ``echo`` float32 (height, panorama width)."""
        head, h = self._head, self.height
        thickness = head.thickness
        reach = int(head.a + 3 * thickness) + 1
        cy = int(round(head.y))
        y0, y1 = max(cy - reach, 0), min(cy + reach + 1, h)
        x0, x1 = max(self._head_u - reach, 0), min(self._head_u + reach + 1, echo.shape[1])
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(head.y)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(self._head_u)
        ca, sa = math.cos(head.angle), math.sin(head.angle)
        along, across = dx * ca + dy * sa, -dx * sa + dy * ca
        rho = np.sqrt((along / head.a) ** 2 + (across / head.b) ** 2)
        # The skull echoes brightest where the beam (vertical) meets it square on.
        facing = 0.45 + 0.55 * np.abs(dy) / (np.hypot(dx, dy) + 1e-3)
        ring = 1.6 * facing * np.exp(-(((rho - 1.0) * head.b / thickness) ** 2))
        midline = 0.7 * np.exp(-((across / max(1.0, 0.02 * h)) ** 2)) * (rho < 0.85)
        region = echo[y0:y1, x0:x1]
        np.copyto(region, np.float32(0.12), where=rho < 1.0)
        region += ring + midline

    def _render_probe(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What moves with the probe, per scan.

        Returns float32 (H, W) gray levels added to every frame (gain, depth
        attenuation, near-field band; -1e4 outside the fan so it clips to 0),
        uint8 (H, W) floor (noise floor inside the fan, burned-in text outside
        it, 0 elsewhere), and bool (H, W) fan mask.
        """
        fan, h, w = self._fan, self.height, self.width
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r, phi = fan.polar(x, y)
        mask = fan.contains(x, y)
        depth = (r - fan.r0) / (fan.r1 - fan.r0)
        log_gain = (math.log(rng.uniform(0.75, 1.3)) - rng.uniform(0.5, 1.2) * depth
                    + 0.7 * np.exp(-((depth / 0.03) ** 2)) - 0.8 * (np.abs(phi) / fan.half_angle) ** 6)
        static = np.where(mask, log_gain * _GRAY_PER_LOG, -1e4).astype(np.float32)

        floor = np.zeros((h, w), np.uint8)
        noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5)
        floor[mask] = np.clip(17 + 12 * noise[mask], 14, 24).astype(np.uint8)
        text = _burned_in_text(rng, fan, h, w)
        # Text never reaches into the fan, so the scan area stays clean.
        near_fan = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        text[near_fan] = 0
        np.maximum(floor, text, out=floor)
        mask.flags.writeable = False
        return static, floor, mask

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i``: uint8 (height, width)."""
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {i} is out of range for a sweep of {self.n_frames} frames")
        rng = np.random.default_rng((self._noise_seed, i))
        shift = int(self._shifts[i])
        # Fresh noise per frame: without it frames with the same shift would
        # be identical files, which the data check reports.
        out = rng.standard_normal((self.height, self.width), dtype=np.float32)
        out *= np.float32(0.12 * _GRAY_PER_LOG)
        out += self._panorama[:, shift:shift + self.width]
        out += self._static
        np.clip(out, 0, 255, out=out)
        return np.maximum(out.astype(np.uint8), self._floor)

    def label(self, i: int) -> int:
        """1 (Head) when at least half of the skull ring is inside the fan in frame ``i``, else 0."""
        return int(self.labels[i])

    def head_region(self, i: int) -> np.ndarray:
        """bool (height, width): the pixels of frame ``i`` inside the skull, its bone included (saliency's truth).

        The bone reaches two ring half-widths beyond the ellipse, where its echo has faded to 2 %.
        """
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {i} is out of range for a sweep of {self.n_frames} frames")
        head = self._head
        y, x = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
        dx, dy = x - (self._head_u - self._shifts[i]), y - head.y
        ca, sa = math.cos(head.angle), math.sin(head.angle)
        rho = np.sqrt(((dx * ca + dy * sa) / head.a) ** 2 + ((-dx * sa + dy * ca) / head.b) ** 2)
        return rho <= 1.0 + 2 * head.thickness / head.b


def _speckle(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """float32 ``shape``: fully developed speckle, Rayleigh envelope of a blurred complex field, mean 1."""
    # A beam is wider than it is long, so speckle grains are stretched sideways.
    sigma_x, sigma_y = 1.4 * scale, 0.8 * scale
    real = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), sigma_x, sigmaY=sigma_y)
    imag = cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), sigma_x, sigmaY=sigma_y)
    envelope = cv2.magnitude(real, imag)
    return envelope / envelope.mean()


def _burned_in_text(rng: np.random.Generator, fan: _Fan, h: int, w: int) -> np.ndarray:
    """uint8 (h, w): scanner-style annotations (name, probe, date, gain, depth scale) on black."""
    text = np.zeros((h, w), np.uint8)
    scale = 0.75 * h / 256
    font = cv2.FONT_HERSHEY_PLAIN
    line = max(7, int(13 * h / 256))
    margin = max(2, w // 80)

    def width_of(message: str) -> int:
        return cv2.getTextSize(message, font, scale, 1)[0][0]

    def put(message: str, x: int, y: int) -> None:
        cv2.putText(text, message, (x, y), font, scale, _TEXT_GRAY, 1, cv2.LINE_AA)

    left = [f"FH-PHANTOM {int(rng.choice([3, 4, 5]))}MHz", f"G{int(rng.integers(40, 70))} DR60"]
    right = [f"2024-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
             f"{int(rng.integers(8, 18)):02d}:{int(rng.integers(0, 60)):02d}"]
    for k, (first, second) in enumerate(zip(left, right), start=1):
        put(first, margin, k * line)
        x = w - margin - width_of(second)
        if x > margin + width_of(first) + margin:  # a narrow frame has room for one column only
            put(second, x, k * line)
    # Depth scale along the right edge, one tick per quarter of the depth.
    depth_cm = int(rng.choice([12, 14, 16]))
    tick = max(3, w // 60)
    for k in range(1, 4):
        y = int(fan.apex_y + fan.r0 + k * (fan.r1 - fan.r0) / 4) - 1
        cv2.line(text, (w - margin - tick, y), (w - margin, y), _TEXT_GRAY, 1)
        label = str(k * depth_cm // 4)
        size = cv2.getTextSize(label, font, scale, 1)[0]
        put(label, w - margin - tick - 2 - size[0], y + size[1] // 2)
    return text


def synthetic_frames(seed: int = 0, height: int = 256, width: int = 320) -> Iterator[tuple[np.ndarray, int]]:
    """An endless stream of (uint8 (height, width) frame, label) from sweep after sweep."""
    rng = np.random.default_rng(seed)
    while True:
        sweep = Sweep(rng, int(rng.integers(90, 181)), height, width)
        for i in range(len(sweep)):
            yield sweep.frame(i), sweep.label(i)


def _video_scans(config: SynthConfig) -> set[int]:
    """Indexes of the scans written as videos, spread over the dataset."""
    if config.video_fraction == 0:
        return set()
    count = round(config.video_fraction * config.scans)
    if config.scans >= 3:
        count = max(count, 1)
    count = min(count, config.scans)
    rng = np.random.default_rng((config.seed, config.scans, 1))
    return {int(k) for k in rng.choice(config.scans, size=count, replace=False)}


def _write_video(path: Path, sweep: Sweep, task: Task) -> None:
    # OpenCV's own MJPEG writer: always built in (no FFmpeg needed) and takes a
    # quality setting. It mangles single-channel frames, so frames go in as BGR.
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"),
                             _VIDEO_FPS, (sweep.width, sweep.height), True)
    if not writer.isOpened():
        raise DataError(f"{path}: cannot open a video writer (MJPG)")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    try:
        for i in range(len(sweep)):
            writer.write(cv2.cvtColor(sweep.frame(i), cv2.COLOR_GRAY2BGR))
            task.update(advance=1)
    finally:
        writer.release()


def synth_dataset(out: str | Path, config: SynthConfig, progress: Progress = NO_PROGRESS) -> list[Path]:
    """Write ``config.scans`` phantom scans under ``out`` (a new or empty folder); return their folders.

    ``progress`` gets one task over every frame written.

    The frames and labels of scan k depend only on ``config.seed``, k, the
    frame size and the frame count, so adding scans keeps the earlier ones
    (which of them are videos may change).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    videos = _video_scans(config)
    image_scans = [k for k in range(config.scans) if k not in videos]
    xlsx_scan = image_scans[1] if config.scans >= 4 and len(image_scans) > 1 else None
    digits = max(4, len(str(config.frames - 1)))
    png = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # speed over size: frames are cheap to regenerate

    folders = []
    task = progress.task("synth", config.scans * config.frames)
    try:
        for k in range(config.scans):
            folder = out / f"scan_{k:03d}"
            folder.mkdir()
            sweep = Sweep(np.random.default_rng((config.seed, k)), config.frames, config.height, config.width,
                          head_fraction=config.head_fraction)
            if k in videos:
                names = [str(i) for i in range(len(sweep))]
                _write_video(folder / "scan.avi", sweep, task)
            else:
                names = [f"frame_{i:0{digits}d}.png" for i in range(len(sweep))]
                (folder / "frames").mkdir()
                for i, name in enumerate(names):
                    if not cv2.imwrite(str(folder / "frames" / name), sweep.frame(i), png):
                        raise DataError(f"{folder / 'frames' / name}: cannot write")
                    task.update(advance=1)
            table = pd.DataFrame({"frame": names, "label": [class_name(v) for v in sweep.labels]})
            if k == xlsx_scan:
                table.to_excel(folder / "labels.xlsx", index=False, engine="openpyxl")
            else:
                table.to_csv(folder / "labels.csv", index=False)
            folders.append(folder)
    finally:
        task.close()
    return folders
