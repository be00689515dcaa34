"""The one preprocessing function: raw ultrasound frame -> backbone input.

Training, evaluation, the benchmark and the streaming worker all call
``preprocess``; nothing else resizes, crops or normalises frames.
"""

from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from models.config import ModelConfig

# Bump when preprocessing changes its output: feature caches keyed on it go stale.
PREPROCESS_VERSION = 1

# The auto ROI is found on a copy shrunk to at most this many pixels a side:
# the scan area is large, so its box is exact to a few raw pixels and the
# search costs well under a millisecond.
_ROI_SEARCH_SIDE = 160
# Padding to a square allocates max(H, W)**2 pixels, so a thin frame costs far more than its
# own size (1 x 40000 pixels would pad to 1.6 G). Frames are bounded before anything is
# allocated: the long side (8192: beyond any scanner's output) and the aspect ratio (8:1:
# wider than any single or side-by-side view), which caps the padding at 8x the frame.
MAX_SIDE = 8192
MAX_ASPECT = 8


def _as_bgr_or_gray(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise ValueError(f"frame must be (H, W), (H, W, 1) or (H, W, 3), got shape {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame is empty: shape {frame.shape}")
    long_side, short_side = max(frame.shape[:2]), min(frame.shape[:2])
    if long_side > MAX_SIDE:
        raise ValueError(f"frame of shape {frame.shape} is too large: at most {MAX_SIDE} pixels a side")
    if long_side > MAX_ASPECT * short_side:
        raise ValueError(f"frame of shape {frame.shape} is too thin: its aspect ratio may be at most "
                         f"{MAX_ASPECT}:1 (padding it to a square would take {long_side}x{long_side} pixels)")
    return frame


def scan_area(frame: np.ndarray, threshold: int = 12) -> tuple[int, int, int, int]:
    """Bounding box (x, y, w, h) of the scanned area of a raw frame.

    The scan area is the largest connected bright region; burned-in text and
    calibration marks outside it are thin strokes that a morphological opening
    removes before the search. A frame with no region above ``threshold``
    returns the whole frame.
    """
    frame = _as_bgr_or_gray(frame)
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    height, width = gray.shape
    scale = min(1.0, _ROI_SEARCH_SIDE / max(height, width))
    small = gray if scale == 1.0 else cv2.resize(
        gray, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    # Blur first so speckle's dark cells inside the scan area do not split it.
    mask = (cv2.blur(small, (3, 3)) > threshold).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return (0, 0, width, height)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[best, :4]
    # The blur already grew the mask by one shrunk pixel, which covers what
    # the shrink rounded away at the edges.
    x0 = max(0, int(np.floor(x / scale)))
    y0 = max(0, int(np.floor(y / scale)))
    x1 = min(width, int(np.ceil((x + w) / scale)))
    y1 = min(height, int(np.ceil((y + h) / scale)))
    return (x0, y0, x1 - x0, y1 - y0)


def crop(frame: np.ndarray, roi: str | tuple[int, int, int, int], threshold: int = 12) -> np.ndarray:
    """The part of ``frame`` inside ``roi`` ('auto', 'none' or (x, y, w, h))."""
    frame = _as_bgr_or_gray(frame)
    if roi == "none":
        return frame
    x, y, w, h = scan_area(frame, threshold) if roi == "auto" else roi
    out = frame[y:y + h, x:x + w]
    if out.size == 0:
        raise ValueError(f"roi {x},{y},{w},{h} lies outside the frame of shape {frame.shape}")
    return out


def pad_square(image: np.ndarray) -> np.ndarray:
    """Pad with black to a centred square, keeping the aspect ratio."""
    height, width = image.shape[:2]
    side = max(height, width)
    top = (side - height) // 2
    left = (side - width) // 2
    return cv2.copyMakeBorder(image, top, side - height - top, left, side - width - left,
                              cv2.BORDER_CONSTANT, value=0)


def normalise(images: np.ndarray, backbone: str) -> np.ndarray:
    """The backbone's own input normalisation of RGB float32 images in 0..255."""
    from keras import applications

    if backbone == "vgg19":
        return applications.vgg19.preprocess_input(images)
    if backbone == "mobilenetv2":
        return applications.mobilenet_v2.preprocess_input(images)
    if backbone == "efficientnetb0":
        # EfficientNet rescales inside the network; its preprocess_input is the identity.
        return applications.efficientnet.preprocess_input(images)
    if backbone == "tiny":
        return images / np.float32(127.5) - np.float32(1.0)
    raise ValueError(f"unknown backbone {backbone!r}")


def preprocess(frame: np.ndarray, config: ModelConfig) -> np.ndarray:
    """One raw frame -> the backbone's input.

    frame: uint8 (H, W), (H, W, 1) or (H, W, 3) BGR as OpenCV gives it, up to
    ``MAX_SIDE`` pixels a side and ``MAX_ASPECT``:1; anything else is a ValueError.
    Returns float32 (S, S, 3) with S = config.image_size, RGB, normalised as the
    backbone expects (see ``normalise``).
    """
    image = pad_square(crop(frame, config.roi_box, config.roi_threshold))
    size = config.image_size
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    image = cv2.resize(image, (size, size), interpolation=interpolation)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(normalise(image.astype(np.float32), config.backbone))


def preprocess_batch(frames: Iterable[np.ndarray], config: ModelConfig) -> np.ndarray:
    """Many raw frames -> float32 (N, S, S, 3); each exactly as ``preprocess`` makes it."""
    out = [preprocess(frame, config) for frame in frames]
    if not out:
        return np.zeros((0, config.image_size, config.image_size, 3), np.float32)
    return np.stack(out)
