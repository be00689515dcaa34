"""``ModelConfig``: the CNN-LSTM and its preprocessing, with the seed design's defaults."""

from __future__ import annotations

import dataclasses
import typing

from models.errors import ConfigError
from models.settings import check, setting, shown

BACKBONES = ("vgg19", "mobilenetv2", "efficientnetb0", "tiny")

# The most each setting may be. A bundle's config is untrusted input: without
# bounds a window of 1e6 builds for minutes into gigabytes before anything fails.
# Each is far above what the design or any sensible variant of it uses.
MAX_WINDOW = 256
MAX_UNITS = 4096
MAX_ROI = 65535  # pixels, for each of x, y, w and h
# Layers seed their initialisers and dropout with seed + a small offset, and
# the backends take 32-bit seeds.
MAX_SEED = 2**31 - 1 - 16


def parse_roi(value: str) -> str | tuple[int, int, int, int]:
    """'auto', 'none' or 'x,y,w,h' (pixels of the raw frame) -> the ROI setting."""
    text = str(value).strip().lower()
    if text in ("auto", "none"):
        return text
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"roi: {shown(value)} is not 'auto', 'none' or 'x,y,w,h'") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ConfigError(f"roi: {shown(value)} needs x, y >= 0 and w, h > 0")
    if max(x, y, w, h) > MAX_ROI:
        raise ConfigError(f"roi: {shown(value)} needs x, y, w and h at most {MAX_ROI}")
    return (x, y, w, h)


def weights_phrase(weights: str) -> str:
    """``weights`` in words for reports: ``random weights``, ``ImageNet weights`` or ``weights from FILE``."""
    return {"none": "random weights", "imagenet": "ImageNet weights"}.get(weights, f"weights from {weights}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The CNN-LSTM and its preprocessing; defaults are the seed design.

    ``weights`` is ``imagenet`` (Keras cache), ``none`` (random) or a path to a
    ``.weights.h5`` file for the backbone; left out, it is ``imagenet``,
    but ``none`` for ``tiny``, which has no pretrained weights. ``roi`` is ``auto``, ``none`` or
    ``x,y,w,h`` in raw-frame pixels. Every setting is checked against a
    range (the ``MAX_*`` above for sizes), since a bundle's config is read
    from a file that anyone may have written.
    """

    backbone: typing.Literal["vgg19", "mobilenetv2", "efficientnetb0", "tiny"] = setting(
        "vgg19", "per-frame feature extractor")
    weights: str | None = setting(None, "backbone weights: imagenet (Keras cache), none (random) or a weights file",
                                  shown="imagenet; none for tiny, which has no pretrained weights")
    image_size: int = setting(224, "side in pixels of the square backbone input")
    window: int = setting(8, "frames per window of the temporal head")
    lstm_units: tuple[int, int] = setting((256, 128), "units of the two LSTMs")
    recurrent_dropout: float = setting(0.4, "recurrent dropout of both LSTMs")
    dropout: float = setting(0.4, "dropout after each LSTM's batch normalisation")
    dense_units: int = setting(64, "units of the per-frame dense layer")
    head_dropout: float = setting(0.3, "dropout before the per-frame output")
    roi: str = setting("auto", "scan area to crop: auto, none or x,y,w,h in raw-frame pixels")
    roi_threshold: int = setting(12, "grey level above which a pixel counts as scan area (roi auto)")
    seed: int = setting(0, "seed of weight initialisation and dropout")

    def __post_init__(self) -> None:
        if self.weights is None:
            object.__setattr__(self, "weights", "none" if self.backbone == "tiny" else "imagenet")
        check(self.backbone in BACKBONES,
              f"backbone: {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        check(32 <= self.image_size <= 1024, f"image_size: must be 32..1024, got {self.image_size}")
        # tiny halves the image six times (three strided convolutions, three poolings).
        check(self.backbone != "tiny" or self.image_size >= 43,
              f"image_size: backbone tiny needs at least 43, got {self.image_size}")
        check(self.window >= 1, f"window: must be >= 1, got {self.window}")
        check(self.window <= MAX_WINDOW, f"window: must be at most {MAX_WINDOW}, got {self.window}")
        check(all(u >= 1 for u in self.lstm_units), f"lstm_units: must be >= 1, got {self.lstm_units}")
        check(all(u <= MAX_UNITS for u in self.lstm_units),
              f"lstm_units: must be at most {MAX_UNITS}, got {self.lstm_units}")
        check(1 <= self.dense_units <= MAX_UNITS, f"dense_units: must be 1..{MAX_UNITS}, got {self.dense_units}")
        for name in ("recurrent_dropout", "dropout", "head_dropout"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, f"{name}: must be in [0, 1), got {value}")
        check(0 <= self.roi_threshold <= 255, f"roi_threshold: must be 0..255, got {self.roi_threshold}")
        check(0 <= self.seed <= MAX_SEED, f"seed: must be 0..{MAX_SEED}, got {self.seed}")
        object.__setattr__(self, "roi", _roi_text(parse_roi(self.roi)))

    @property
    def roi_box(self) -> str | tuple[int, int, int, int]:
        return parse_roi(self.roi)


def _roi_text(roi: str | tuple[int, int, int, int]) -> str:
    return roi if isinstance(roi, str) else ",".join(str(v) for v in roi)
