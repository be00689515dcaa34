"""Does the heat map point at the head? LayerCAM peaks against the phantom's known skull.

``python -m tools.saliency_study [--bundle FHB | --save FHB] [--scans 16] [--frames 80] [--epochs 20]
[--image-size 64] [--seed 11] [--test-scans 8] [--layers A,B]``
trains a tiny CNN-LSTM with its backbone on phantom scans (unless given a
bundle), then, on phantom sweeps it never saw, counts the Head frames whose
heat-map peak (``models.saliency.peak``) lies inside the skull ellipse
(``train.synth.Sweep.head_region``). A heat map that knew nothing would hit
about as often as the head's share of the scan area, which is printed beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from models import bundle as bundles
from models.config import ModelConfig
from models.preprocess import preprocess_batch, scan_area
from models.runtime import Runtime
from models.saliency import LayerCam, peak
from train.synth import Sweep


@dataclasses.dataclass(frozen=True)
class Hits:
    """Head frames explained, how many peaked inside the skull, and the skull's mean share of the scan area."""

    frames: int
    hits: int
    area_share: float

    @property
    def fraction(self) -> float:
        return self.hits / self.frames if self.frames else float("nan")


def head_hits(cam: LayerCam, config: ModelConfig, sweeps: list[Sweep]) -> Hits:
    """Explain every Head frame of ``sweeps`` and count the peaks inside the skull."""
    frames = hits = 0
    shares = []
    for sweep in sweeps:
        raw = [sweep.frame(i) for i in range(len(sweep))]
        heads = [int(i) for i in np.flatnonzero(sweep.labels)]
        saliency = cam.scan(preprocess_batch(raw, config), heads)
        for i, heat in zip(heads, saliency.heat):
            region = sweep.head_region(i)
            x, y = peak(heat, raw[i], config)
            column = min(max(int(x), 0), sweep.width - 1)
            row = min(max(int(y), 0), sweep.height - 1)
            hits += bool(region[row, column])
            frames += 1
            x0, y0, w, h = scan_area(raw[i], config.roi_threshold)
            shares.append(region[y0:y0 + h, x0:x0 + w].mean())
    return Hits(frames, hits, float(np.mean(shares)) if shares else float("nan"))


def train_phantom(out: Path, *, scans: int, frames: int, epochs: int, image_size: int, seed: int = 11) -> Runtime:
    """A tiny CNN-LSTM trained with its backbone on ``scans`` phantom scans of ``frames`` frames.

    It is the model ``fetalhead train`` would bundle with these settings
    (``--train-backbone`` bundles the final model), trained alone: the folds
    would only add figures this study does not need.
    """
    from models.cnn_lstm import build_feature_extractor
    from train.config import TrainConfig
    from train.data import load_dataset
    from train.kfold import final_job, prepare, train_pack
    from train.synth import SynthConfig, synth_dataset

    data = out / "scans"
    synth_dataset(data, SynthConfig(scans=scans, frames=frames, height=96, width=128, seed=seed, video_fraction=0.0))
    model = ModelConfig(backbone="tiny", weights="none", image_size=image_size, lstm_units=(32, 16), dense_units=16)
    config = TrainConfig(epochs=epochs, learning_rate=1e-3, train_backbone=True, early_stopping=False, progress=False)
    extractor = build_feature_extractor(model)
    by_name = {d.name: d for d in prepare(load_dataset(data, window=model.window), model, config, extractor)}
    runtime, _ = train_pack(out, [final_job(out, list(by_name), by_name, config, epochs)], model, config, extractor)[0]
    return Runtime(model, runtime.extractor, runtime.training_head)


def unseen_sweeps(count: int, frames: int = 80) -> list[Sweep]:
    """Phantom sweeps from seeds no training set of ``train.synth.synth_dataset`` uses."""
    return [Sweep(np.random.default_rng((97, k)), frames, 96, 128) for k in range(count)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.saliency_study", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="explain this bundle instead of training one")
    p.add_argument("--scans", type=int, default=16, help="phantom scans to train on")
    p.add_argument("--frames", type=int, default=80, help="frames per scan")
    p.add_argument("--epochs", type=int, default=20, help="epochs per fold and of the final model")
    p.add_argument("--image-size", type=int, default=64, help="backbone input side")
    p.add_argument("--test-scans", type=int, default=8, help="unseen phantom sweeps to measure on")
    p.add_argument("--seed", type=int, default=11, help="seed of the phantom scans trained on")
    p.add_argument("--save", help="keep the trained bundle at this path")
    p.add_argument("--layers", help="comma-separated backbone layers to explain and fuse "
                                    "(default: models.saliency.map_layers's choice)")
    args = p.parse_args(argv)
    if args.bundle:
        model = bundles.load(args.bundle)
        runtime, config = model.runtime(), model.config
    else:
        with tempfile.TemporaryDirectory() as tmp:
            runtime = train_phantom(Path(tmp), scans=args.scans, frames=args.frames, epochs=args.epochs,
                                    image_size=args.image_size, seed=args.seed)
        config = runtime.config
        if args.save:
            bundles.save(args.save, config, runtime.extractor, runtime.training_head)
    cam = LayerCam(runtime, args.layers.split(",") if args.layers else None)
    result = head_hits(cam, config, unseen_sweeps(args.test_scans))
    print(f"layers {cam.layer} grid {cam.grid[0]}x{cam.grid[1]}: {result.hits}/{result.frames} Head frames peak "
          f"inside the skull ({result.fraction:.1%}); the skull covers {result.area_share:.1%} of the scan area")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
