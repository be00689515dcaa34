"""Where the model looked: LayerCAM of a frame's score on the backbone's convolutional maps.

The score of frame t comes from the temporal head run over the window of
features ending at t. ``LayerCam`` takes the gradient of that score with
respect to frame t's convolutional maps A (G_h, G_w, C), with the other
frames' features held as they were scored, and weighs each cell of each
channel by its own positive gradient (Jiang et al., LayerCAM, IEEE TIP 2021)::

    cam_l = relu(sum_c relu(d score_t / d A_l[..., c]) * A_l[..., c]) / its maximum
    heat  = mean over layers l of cam_l, resized to the finest grid, / its maximum     float32 (G_h, G_w) in 0..1

LayerCAM suits a frozen backbone: like Grad-CAM it needs gradients with
respect to activations, never to weights, so it measures what the trained
head reads from the frozen features. It differs from Grad-CAM in the
weights: Grad-CAM averages each channel's gradient over the whole map, so
cells that raise the score and cells that lower it cancel, and what is left
says which channels matter, not where. Measured on phantom sweeps a model
never saw (``python -m tools.saliency_study``: Head frames whose heat-map
peak lies inside the skull, which covers 14 % of the scan area), over two
training seeds and two image sizes, LayerCAM fused over the two layers below
put the peak inside the skull in 88-96 % of Head frames; Grad-CAM of the
coarser layer alone (this module's method before), 34-64 %; LayerCAM of
either layer alone, 51-96 %: which one wins changes from model to model.
The table is in the README's Saliency section. The score differentiated is the
probability, not its logit: both give the same direction, which the
normalisation keeps, and the probability is what the worker publishes.

The layers (``map_layers``) are the last convolution of each of the two
coarsest stages whose grid is at least ``MIN_GRID`` cells a side: the
coarser one says what the features mean, the finer one where (VGG19 at 224:
block4_conv4, 28x28, and block5_conv4, 14x14; tiny at 64: 32x32 and 8x8).
The frames go through the same preprocessing and the same extractor and
inference head as scoring (``models.runtime.Runtime``), so a frame's
``scores`` here equal its streaming score. Gradients are taken with
TensorFlow, the backend the project runs on.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import keras
import numpy as np

from models.config import ModelConfig
from models.errors import ConfigError, DataError
from models.preprocess import preprocess, scan_area
from models.progress import NO_PROGRESS, Progress
from models.runtime import Runtime
from models.settings import check, setting

logger = logging.getLogger(__name__)

MIN_GRID = 4
# Stages fused: the coarsest with a grid of at least MIN_GRID, and the one finer.
STAGES = 2
# Frames per batch through the backbone, both to score and to explain: bounds memory at VGG19's 224 px.
_BATCH = 16


@dataclasses.dataclass(frozen=True)
class Saliency:
    """Heat maps of B frames: ``heat`` float32 (B, G_h, G_w) in 0..1, calibrated ``scores`` (B,), the ``layer`` names.

    ``layer`` is the layers fused, joined by "+", finest first.
    """

    heat: np.ndarray
    scores: np.ndarray
    layer: str


def _grid(layer: keras.layers.Layer) -> tuple[int, int]:
    return int(layer.output.shape[1]), int(layer.output.shape[2])


def map_layers(extractor: keras.Model, min_grid: int = MIN_GRID, stages: int = STAGES) -> tuple[str, ...]:
    """The Conv2D layers of ``extractor`` to explain, finest first: each the last of its grid size.

    They are the ``stages`` coarsest grid sizes of at least ``min_grid`` a
    side; when no grid is that large, the largest-grid convolution alone.
    """
    convolutions = [layer for layer in extractor.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convolutions:
        raise ConfigError(f"backbone {extractor.name} has no 2-D convolution to explain")
    last_of: dict[tuple[int, int], keras.layers.Layer] = {}
    for layer in convolutions:
        last_of[_grid(layer)] = layer
    large = sorted((grid for grid in last_of if min(grid) >= min_grid), key=min)
    if not large:
        return (max(convolutions, key=lambda layer: min(_grid(layer))).name,)
    return tuple(last_of[grid].name for grid in reversed(large[:stages]))


class LayerCam:
    """LayerCAM of per-frame scores through a ``Runtime``'s extractor and inference head.

    layers: the convolutions to explain and fuse; None picks ``map_layers``.
    ``grid`` is the finest of their grids, the heat maps' shape.
    """

    def __init__(self, runtime: Runtime, layers: Sequence[str] | None = None) -> None:
        if keras.backend.backend() != "tensorflow":
            raise ConfigError(f"saliency needs the TensorFlow backend, got {keras.backend.backend()}")
        self.runtime = runtime
        extractor = runtime.extractor
        self.layers = tuple(layers) if layers else map_layers(extractor)
        convs = []
        for name in self.layers:
            try:
                convs.append(extractor.get_layer(name).output)
            except ValueError:
                raise ConfigError(f"backbone {extractor.name} has no layer {name!r}") from None
        self.layer = "+".join(self.layers)
        self._split = keras.Model(extractor.inputs, [*convs, extractor.outputs[0]], name=f"{extractor.name}_cam")
        self.grid = max((tuple(int(v) for v in conv.shape[1:3]) for conv in convs), key=lambda grid: grid[0] * grid[1])
        import tensorflow as tf

        # Traced once per batch shape: eager, the Python around each op costs more than the ops at these sizes.
        self._compute = tf.function(self._cam, reduce_retracing=True)

    def _cam(self, images, windows, chosen):
        """(the fused maps, scores): float32 (B, G_h, G_w) with 1 at most, unnormalised, and (B,)."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            *convs, features = self._split(images, training=False)
            mixed = windows * (1.0 - chosen[:, :, None]) + features[:, None, :] * chosen[:, :, None]
            scores = tf.reduce_sum(self.runtime.head(mixed, training=False) * chosen, axis=1)
        # Frames are independent (no batch statistics at inference), so the
        # gradient of the sum is each frame's own gradient.
        grads = tape.gradient(scores, convs)
        fused = []
        for conv, grad in zip(convs, grads):
            cam = tf.nn.relu(tf.reduce_sum(conv * tf.nn.relu(grad), axis=-1))
            cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
            fused.append(tf.image.resize(cam[..., None], self.grid, method="bilinear")[..., 0])
        return tf.add_n(fused) / len(fused), scores

    def maps(self, images: np.ndarray, windows: np.ndarray, positions: Sequence[int]) -> Saliency:
        """Heat maps of B frames, each scored at its place in its window.

        images: float32 (B, S, S, 3), preprocessed frames. windows: float32
        (B, W, F), the features each frame is scored with; row b's features at
        ``positions[b]`` are replaced by frame b's own (differentiated), the
        rest are held. Positions after ``positions[b]`` do not matter (the
        head is causal), so short windows are padded at the end.
        """
        import tensorflow as tf

        images = np.asarray(images, np.float32)
        windows = np.asarray(windows, np.float32)
        positions = np.asarray(positions, np.int64)
        if len(images) != len(windows) or len(images) != len(positions):
            raise ValueError(f"images, windows and positions must be as many, got "
                             f"{len(images)}, {len(windows)} and {len(positions)}")
        if len(images) == 0:
            return Saliency(np.zeros((0, *self.grid), np.float32), np.zeros(0, np.float32), self.layer)
        length = windows.shape[1]
        if np.any(positions < 0) or np.any(positions >= length):
            raise ValueError(f"positions must be in 0..{length - 1}, got {positions.tolist()}")
        chosen = tf.one_hot(positions, length, dtype=tf.float32)
        cam, scores = self._compute(tf.constant(images), tf.constant(windows), chosen)
        cam = cam.numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1)
        # A frame with no positive evidence anywhere has an all-zero map, not noise scaled up.
        heat = np.where(peak[:, None, None] > 0, cam / np.maximum(peak, 1e-12)[:, None, None], 0.0)
        # The map is of the head's own score; the score shown beside it is the one the worker publishes.
        return Saliency(heat.astype(np.float32), self.runtime.calibrate(scores.numpy().astype(np.float32)),
                        self.layer)

    def scan(self, images: np.ndarray, indices: Sequence[int], *, features: np.ndarray | None = None,
             batch_size: int = 16) -> Saliency:
        """Heat maps of frames ``indices`` of one scan, each scored as streaming scores it.

        images: float32 (N, S, S, 3), the scan's preprocessed frames in order;
        features: float32 (N, F), their features when already computed.
        """
        window = self.runtime.config.window
        features = self.runtime.features(images) if features is None else features
        indices = [int(i) for i in indices]
        heats, scores = [], []
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            windows = np.zeros((len(chunk), window, features.shape[1]), np.float32)
            positions = []
            for row, t in enumerate(chunk):
                held = features[max(0, t - window + 1):t + 1]
                windows[row, :len(held)] = held
                positions.append(len(held) - 1)
            part = self.maps(images[chunk], windows, positions)
            heats.append(part.heat)
            scores.append(part.scores)
        if not heats:
            return Saliency(np.zeros((0, *self.grid), np.float32), np.zeros(0, np.float32), self.layer)
        return Saliency(np.concatenate(heats), np.concatenate(scores), self.layer)


def _placement(frame: np.ndarray, config: ModelConfig) -> tuple[int, int, int, int, int, int, int]:
    """(x0, y0, w, h, side, left, top): the scan area's box in ``frame`` and its padding to the backbone's square.

    Mirrors ``models.preprocess.preprocess``: crop to the ROI, pad to a centred square.
    """
    height, width = frame.shape[:2]
    roi = config.roi_box
    if roi == "none":
        x0, y0, w, h = 0, 0, width, height
    elif roi == "auto":
        x0, y0, w, h = scan_area(frame, config.roi_threshold)
    else:
        x0, y0 = min(roi[0], width), min(roi[1], height)
        w, h = min(roi[2], width - x0), min(roi[3], height - y0)
    side = max(w, h)
    return x0, y0, w, h, side, (side - w) // 2, (side - h) // 2


def square(frame: np.ndarray, config: ModelConfig) -> tuple[int, int, int]:
    """(x, y, side): the backbone's square input in pixels of raw ``frame`` (x, y < 0 where padding lies outside)."""
    x0, y0, _, _, side, left, top = _placement(frame, config)
    return x0 - left, y0 - top, side


def to_frame(heat: np.ndarray, frame: np.ndarray, config: ModelConfig) -> np.ndarray:
    """A heat map float32 (G_h, G_w) laid over raw ``frame``: float32 (H, W) in 0..1, 0 outside the scan area."""
    height, width = frame.shape[:2]
    x0, y0, w, h, side, left, top = _placement(frame, config)
    square = cv2.resize(np.asarray(heat, np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((height, width), np.float32)
    out[y0:y0 + h, x0:x0 + w] = square[top:top + h, left:left + w]
    return np.clip(out, 0.0, 1.0)


def peak(heat: np.ndarray, frame: np.ndarray, config: ModelConfig) -> tuple[float, float]:
    """The raw-frame pixel (x, y) at the centre of the hottest cell whose centre lies in the scan area.

    Cells of the padding are left out: a peak there points at nothing a person can see.
    """
    heat = np.asarray(heat, np.float32)
    rows, cols = heat.shape
    x0, y0, w, h, side, left, top = _placement(frame, config)
    xs = x0 - left + (np.arange(cols) + 0.5) * side / cols
    ys = y0 - top + (np.arange(rows) + 0.5) * side / rows
    inside = ((ys >= y0) & (ys < y0 + h))[:, None] & ((xs >= x0) & (xs < x0 + w))[None, :]
    row, col = np.unravel_index(int(np.argmax(np.where(inside, heat, -1.0))), heat.shape)
    return float(xs[col]), float(ys[row])


def overlay(frame: np.ndarray, heat: np.ndarray, config: ModelConfig, *, alpha: float = 0.45) -> np.ndarray:
    """uint8 BGR (H, W, 3): ``frame`` (uint8 (H, W) or BGR) with the heat map in the JET colour map over it.

    Cold cells stay see-through: each pixel blends in proportion to its heat.
    """
    image = frame if frame.ndim == 3 and frame.shape[2] == 3 else cv2.cvtColor(
        frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    laid = to_frame(heat, frame, config)
    colours = cv2.applyColorMap((laid * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    weight = (alpha * laid)[:, :, None]
    return (image.astype(np.float32) * (1 - weight) + colours * weight).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    """Settings of ``fetalhead explain`` (an ``[explain]`` TOML table); ``progress`` is the command's.

    ``frames`` is ``head`` (frames scored at or over the bundle's threshold),
    ``all``, or a number N (every N-th frame, from the first).
    """

    frames: str = setting("head", "frames to explain: head (score at or over the threshold), all, or N for every N-th")
    alpha: float = setting(0.45, "opacity of the hottest cells of the overlay")
    progress: bool = setting(True, "draw progress bars")

    def __post_init__(self) -> None:
        text = str(self.frames).strip().lower()
        check(text in ("head", "all") or (text.isdigit() and int(text) >= 1),
              f"frames: {self.frames!r} is not head, all or a number >= 1")
        object.__setattr__(self, "frames", text)
        check(0.0 < self.alpha <= 1.0, f"alpha: must be in (0, 1], got {self.alpha}")

    def chosen(self, index: int, score: float, threshold: float) -> bool:
        """Whether frame ``index`` with ``score`` is explained."""
        if self.frames == "all":
            return True
        if self.frames == "head":
            return score >= threshold
        return index % int(self.frames) == 0


Frames = Callable[[], Iterable[tuple[int, np.ndarray]]]
"""Opens a source afresh: yields (frame number, uint8 raw frame) in order, numbers counting frames left out."""


def _checked(frames: Iterable[tuple[int, np.ndarray]], config: ModelConfig,
             rejected: list[str]) -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
    """(number, raw frame, preprocessed image); a frame that cannot be preprocessed is left out with one line."""
    for number, frame in frames:
        try:
            image = preprocess(frame, config)
        except ValueError as exc:
            rejected.append(f"frame {number}: {exc}")
            if len(rejected) <= 5:
                logger.warning("frame %d left out: %s", number, exc)
            continue
        yield number, frame, image


def _batches(items: Iterable, size: int) -> Iterable[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def explain(runtime: Runtime, threshold: float, frames: Frames, out: str | Path, config: ExplainConfig, *,
            total: int = 0, progress: Progress = NO_PROGRESS) -> dict:
    """Score a source's frames, then write a heat-map overlay PNG per chosen frame and ``saliency.csv``.

    Two passes over ``frames()``, so only features stay in memory: the first
    scores every frame as a stream would, the second explains the chosen
    ones. ``total``, when known, sizes the first progress bar. The CSV has
    one row per explained frame: frame, score, peak_x, peak_y (raw-frame
    pixels of the hottest cell), png. Returns the counts: ``frames``,
    ``explained``, ``rejected`` (frames left out, each logged), ``layer``, ``csv``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = runtime.config
    rejected: list[str] = []
    numbers, features = [], []
    task = progress.task("scoring", total)
    try:
        for batch in _batches(_checked(frames(), model, rejected), _BATCH):
            numbers += [number for number, _, _ in batch]
            features.append(runtime.features(np.stack([image for _, _, image in batch])))
            task.update(advance=len(batch))
    finally:
        task.close()
    if not numbers:
        raise DataError("source has no frame that can be scored" +
                          (f" ({len(rejected)} left out, first: {rejected[0]})" if rejected else ""))
    features = np.concatenate(features)
    scores = runtime.scan_scores(features)
    row_of = {number: row for row, number in enumerate(numbers)}
    chosen = {n for n, score in zip(numbers, scores) if config.chosen(n, float(score), threshold)}
    cam = LayerCam(runtime)
    window = model.window
    digits = max(6, len(str(numbers[-1])))
    rows = []
    task = progress.task("explaining", len(chosen))
    try:
        wanted = ((n, f, i) for n, f, i in _checked(frames(), model, []) if n in chosen)
        for batch in _batches(wanted, _BATCH):
            windows = np.zeros((len(batch), window, features.shape[1]), np.float32)
            positions = []
            for b, (number, _, _) in enumerate(batch):
                row = row_of[number]
                held = features[max(0, row - window + 1):row + 1]
                windows[b, :len(held)] = held
                positions.append(len(held) - 1)
            saliency = cam.maps(np.stack([image for _, _, image in batch]), windows, positions)
            for (number, frame, _), heat in zip(batch, saliency.heat):
                name = f"frame_{number:0{digits}d}.png"
                cv2.imwrite(str(out / name), overlay(frame, heat, model, alpha=config.alpha))
                x, y = peak(heat, frame, model)
                rows.append((number, float(scores[row_of[number]]), round(x, 1), round(y, 1), name))
            task.update(advance=len(batch))
    finally:
        task.close()
    path = out / "saliency.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("frame", "score", "peak_x", "peak_y", "png"))
        writer.writerows((n, f"{score:.6f}", x, y, name) for n, score, x, y, name in rows)
    return {"frames": len(numbers), "explained": len(rows), "rejected": len(rejected), "layer": cam.layer,
            "grid": cam.grid, "csv": path}
