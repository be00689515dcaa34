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
from pathlib import Path
from typing import Sequence

from models.config import check, load
from tools.cli import parser as make_parser, run


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out: str = "fetalhead-demo"
    scans: int = 10
    frames: int = 96
    height: int = 144
    width: int = 192
    folds: int = 4
    epochs: int = 12
    stride: int = 2
    image_size: int = 64
    learning_rate: float = 1e-3
    watch: bool = True
    seed: int = 0

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
    from stream.run import main as run_main
    from train.config import TrainConfig
    from train.data import load_scan
    from train.kfold import train
    from train.synth import SynthConfig, synth_dataset

    console = Console()
    out = Path(config.out).resolve()
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    console.rule("1. synthetic phantom scans")
    synth_dataset(data, SynthConfig(scans=config.scans, frames=config.frames, height=config.height,
                                    width=config.width, seed=config.seed))
    holdout = sorted(p.name for p in data.iterdir() if p.is_dir())[-1]

    console.rule(f"2. {config.folds}-fold training, {holdout} held out")
    model_config = ModelConfig(backbone="tiny", weights="none", image_size=config.image_size, seed=config.seed)
    train_config = TrainConfig(folds=config.folds, epochs=config.epochs, learning_rate=config.learning_rate,
                               stride=config.stride, patience=4, holdout=(holdout,), seed=config.seed,
                               cache_dir=str(out / "feature-cache"))
    run_dir = out / "run"
    summary = train(data, run_dir, model_config, train_config)
    from train.cli import print_fold_table

    bundle_path = Path(summary["bundle"])
    cv = load_bundle(bundle_path).info["cross_validation"]
    print_fold_table(summary["folds"], cv)

    console.rule(f"3. live replay of {holdout}: capture -> worker -> watch + record")
    csv_path, video_path = out / "scores.csv", out / "annotated.mp4"
    args = [str(data / holdout), "--model", str(bundle_path), "--mode", "lossless", "--csv", str(csv_path),
            "--video", str(video_path), "--log", str(out / "pipeline.log")]
    if not config.watch:
        args.append("--no-watch")
    code = run_main(args)
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


def main(argv: Sequence[str] | None = None) -> int:
    p = make_parser("demo", "Synthetic data -> k-fold training -> live replay of a held-out scan.")
    p.add_argument("--out", help="folder for everything the demo writes (default ./fetalhead-demo)")
    p.add_argument("--scans", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--folds", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--no-watch", dest="watch", action="store_const", const=False, help="no live table")
    p.add_argument("--config", help="TOML file with a [demo] table")
    args = p.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("out", "scans", "frames", "folds", "epochs", "watch")}
    return run(lambda: demo(load(DemoConfig, "demo", args.config, overrides)), verbose=args.verbose)
