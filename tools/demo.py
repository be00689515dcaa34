"""``fetalhead demo``: the whole tool on synthetic data, in a few minutes on 2 CPU cores.

1. writes a synthetic ultrasound phantom dataset,
2. trains a small CNN-LSTM (tiny frozen backbone) with k-fold cross-validation,
   leaving one scan out,
3. replays the held-out scan through capture -> ZeroMQ -> worker, with the
   live view, recording the scores to CSV and the annotated frames to video,
4. checks the live scores against offline evaluation of the same scan,
5. prints where everything is.

The training settings differ from the seed's on purpose: a few hundred
frames and a dozen epochs cannot move Adam at 1e-5, so the demo trains at 1e-3
on windows taken every second frame (training steps here cost about the same
at any batch size, so fewer steps is what makes it quick).
"""

from __future__ import annotations

import dataclasses
import shutil
import signal
from pathlib import Path

from models.settings import check, setting


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What ``fetalhead demo`` writes and trains (a ``[demo]`` TOML table)."""

    out: str = setting("fetalhead-demo", "folder for everything the demo writes")
    scans: int = setting(10, "synthetic scans to write (one is held out)")
    frames: int = setting(96, "frames per scan")
    height: int = setting(144, "frame height in pixels")
    width: int = setting(192, "frame width in pixels")
    folds: int = setting(4, "cross-validation folds")
    epochs: int = setting(12, "training epochs per fold")
    stride: int = setting(2, "step between training windows")
    image_size: int = setting(64, "backbone input size in pixels")
    learning_rate: float = setting(1e-3, "Adam's learning rate")
    watch: bool = setting(True, "show the live table while the held-out scan replays")
    seed: int = setting(0, "seed of the data, the folds and the weights")

    def __post_init__(self) -> None:
        check(self.scans >= self.folds + 1, f"scans: need at least folds + 1 = {self.folds + 1}, got {self.scans}")
        check(self.frames >= 16, f"frames: must be >= 16, got {self.frames}")
        check(self.folds >= 2, f"folds: must be >= 2, got {self.folds}")
        check(self.epochs >= 1, f"epochs: must be >= 1, got {self.epochs}")
        check(self.stride >= 1, f"stride: must be >= 1, got {self.stride}")


def demo(config: DemoConfig) -> int:
    import numpy as np
    import pandas as pd
    from rich.console import Console

    from models.bundle import load as load_bundle
    from models.config import ModelConfig
    from stream.net import signal_stop
    from stream.run import RunConfig, run_pipeline
    from tools.render import print_fold_table, print_warnings, progress
    from train.config import TrainConfig
    from train.data import load_scan
    from train.kfold import train
    from train.synth import SynthConfig, synth_dataset

    console = Console()
    bars = progress(True)
    out = Path(config.out).resolve()
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    console.rule("1. synthetic phantom scans")
    synth_dataset(data, SynthConfig(scans=config.scans, frames=config.frames, height=config.height,
                                    width=config.width, seed=config.seed), progress=bars)
    holdout = sorted(p.name for p in data.iterdir() if p.is_dir())[-1]

    console.rule(f"2. {config.folds}-fold training, {holdout} held out")
    model_config = ModelConfig(backbone="tiny", weights="none", image_size=config.image_size, seed=config.seed)
    train_config = TrainConfig(folds=config.folds, epochs=config.epochs, learning_rate=config.learning_rate,
                               stride=config.stride, patience=4, holdout=(holdout,), seed=config.seed,
                               cache_dir=str(out / "feature-cache"))
    run_dir = out / "run"
    summary = train(data, run_dir, model_config, train_config, progress=bars)
    bundle_path = Path(summary["bundle"])
    print_fold_table(summary["folds"], summary["cross_validation"])
    print_warnings(summary["warnings"])

    console.rule(f"3. live replay of {holdout}: capture -> worker -> watch + record")
    csv_path, video_path = out / "scores.csv", out / "annotated.mp4"
    replay = RunConfig(source=str(data / holdout), model=str(bundle_path), mode="lossless", csv=csv_path,
                       video=video_path, log=out / "pipeline.log", watch=config.watch)
    with signal_stop((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stop:
        code = run_pipeline(replay, stop).exit_code
    if code != 0:
        console.print(f"[red]the pipeline ended with exit code {code}; see {out / 'pipeline.log'}")
        return code

    console.rule("4. live scores against offline scores")
    scores = pd.read_csv(csv_path)
    bundle = load_bundle(bundle_path)
    runtime = bundle.runtime()
    scan, _ = load_scan(data / holdout)
    offline = runtime.scan_scores(runtime.frame_features(scan.iter_frames()))
    live = scores.sort_values("seq")["score"].to_numpy()
    same = len(live) == len(offline) and np.allclose(live, offline, atol=1e-5)
    worst = float(np.max(np.abs(live - offline))) if len(live) == len(offline) else float("nan")
    decided = (live >= bundle.threshold).astype(int) if len(live) == len(offline) else None
    accuracy = float(np.mean(decided == scan.labels)) if decided is not None else float("nan")
    console.print(f"{len(live)} of {len(scan)} frames scored live; largest difference from offline {worst:.2e} "
                  f"({'equal within 1e-5' if same else 'NOT equal'}); accuracy on {holdout} {accuracy:.3f}")

    console.rule("where everything is")
    for label, path in (("dataset", data), ("cross-validation report", Path(summary["report"]) / "report.md"),
                        ("model bundle", bundle_path), ("live scores", csv_path), ("annotated video", video_path),
                        ("pipeline log", out / "pipeline.log")):
        console.print(f"{label:>24}: {path}")
    console.print(f"\nNext: fetalhead run {data / holdout} --model {bundle_path}   (or a video file, or a device "
                  "index such as 0)")
    return 0 if same else 1
