"""Does the heat map point at the head? Grad-CAM peaks against the phantom's known skull.

``python -m tools.saliency_study [--bundle FHB | --save FHB] [--scans 16] [--frames 80] [--epochs 20]
[--image-size 64]``
trains a tiny CNN-LSTM with its backbone on phantom scans (unless given a
bundle), then, on phantom sweeps it never saw, counts the Head frames whose
heat-map peak (``models.saliency.peak``) lies inside the skull ellipse
(``train.synth.Sweep.head_region``). A heat map that knew nothing would hit
about as often as the head's share of the scan area, which is printed beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np

from models import bundle as bundles
from models.config import ModelConfig
from models.preprocess import preprocess_batch, scan_area
from models.saliency import GradCam, peak
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


def head_hits(cam: GradCam, config: ModelConfig, sweeps: list[Sweep]) -> Hits:
    """Grad-CAM every Head frame of ``sweeps`` and count the peaks inside the skull."""
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


def train_phantom(out: Path, *, scans: int, frames: int, epochs: int, image_size: int) -> tuple[Path, float]:
    """A tiny CNN-LSTM trained with its backbone on ``scans`` phantom scans: (bundle, pooled out-of-fold ROC-AUC)."""
    from train.config import TrainConfig
    from train.kfold import train
    from train.synth import SynthConfig, synth_dataset

    data = out / "scans"
    synth_dataset(data, SynthConfig(scans=scans, frames=frames, height=96, width=128, seed=11, video_fraction=0.0))
    model = ModelConfig(backbone="tiny", weights="none", image_size=image_size, lstm_units=(32, 16), dense_units=16)
    config = TrainConfig(folds=2, epochs=epochs, learning_rate=1e-3, train_backbone=True, early_stopping=False,
                         cache_dir=str(out / "cache"), progress=False)
    summary = train(data, out / "run", model, config)
    return Path(summary["bundle"]), float(summary["cross_validation"]["pooled_out_of_fold"]["roc_auc"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.saliency_study", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="explain this bundle instead of training one")
    p.add_argument("--scans", type=int, default=16, help="phantom scans to train on")
    p.add_argument("--frames", type=int, default=80, help="frames per scan")
    p.add_argument("--epochs", type=int, default=20, help="epochs per fold and of the final model")
    p.add_argument("--image-size", type=int, default=64, help="backbone input side")
    p.add_argument("--test-scans", type=int, default=4, help="unseen phantom sweeps to measure on")
    p.add_argument("--save", help="keep the trained bundle at this path")
    p.add_argument("--layer", help="the backbone layer to explain (default: models.saliency.map_layer's choice)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path, auc = (Path(args.bundle), None) if args.bundle else train_phantom(
            Path(tmp), scans=args.scans, frames=args.frames, epochs=args.epochs, image_size=args.image_size)
        if args.save and not args.bundle:
            shutil.copyfile(path, args.save)
        model = bundles.load(path)
        cam = GradCam(model.runtime(), args.layer)
        sweeps = [Sweep(np.random.default_rng((97, k)), args.frames, 96, 128) for k in range(args.test_scans)]
        result = head_hits(cam, model.config, sweeps)
    if auc is not None:
        print(f"trained on {args.scans} phantom scans: pooled out-of-fold ROC-AUC {auc:.3f}")
    print(f"layer {cam.layer} grid {cam.grid[0]}x{cam.grid[1]}: {result.hits}/{result.frames} Head frames peak "
          f"inside the skull ({result.fraction:.1%}); the skull covers {result.area_share:.1%} of the scan area")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
