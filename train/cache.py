"""The on-disk feature cache: each frame goes through the frozen backbone once.

A frame's features are stored under a key made of the frame's pixels (hash),
and a folder made of the backbone, a fingerprint of its weights and the
preprocessing settings. Change any of them and the key changes, so a stale
entry can never be read. Files are written to a temporary name and renamed;
an entry that fails to load or has the wrong shape is deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from models.errors import DataError
from models.preprocess import PREPROCESS_VERSION, preprocess_batch
from models.progress import NO_PROGRESS, Progress, Task
from models.runtime import Runtime
from train.data import Scan

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$FETALHEAD_CACHE, else ~/.cache/fetalhead/features."""
    env = os.environ.get("FETALHEAD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fetalhead" / "features"


def frame_hash(frame: np.ndarray) -> str:
    """Content hash of a decoded frame: its pixels, shape and dtype."""
    digest = hashlib.sha256(f"{frame.shape}{frame.dtype}".encode())
    digest.update(np.ascontiguousarray(frame).data)
    return digest.hexdigest()[:32]


def weights_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
        digest.update(f"{weight.path}{value.shape}{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).data)
    return digest.hexdigest()


def extractor_key(runtime: Runtime) -> str:
    """Folder name for one backbone + weights + preprocessing combination."""
    config = runtime.config
    parts = {
        "backbone": config.backbone,
        "image_size": config.image_size,
        "roi": config.roi,
        "roi_threshold": config.roi_threshold,
        "preprocess_version": PREPROCESS_VERSION,
        "weights": weights_fingerprint(runtime.extractor),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    return f"{config.backbone}-{config.image_size}-{digest}"


@dataclass
class ScanFeatures:
    """Features of one scan: float32 (N, F) and each frame's content hash."""

    scan: str
    features: np.ndarray
    hashes: list[str]
    labels: np.ndarray


class FeatureCache:
    """Features of scans, computed in batches once and read from disk after."""

    def __init__(self, runtime: Runtime, root: str | Path | None = None, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.runtime = runtime
        self.key = extractor_key(runtime)
        self.root = Path(root) if root is not None else default_cache_dir()
        self.folder = self.root / self.key
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0
        self.rebuilt = 0

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npy"

    def _read(self, digest: str) -> np.ndarray | None:
        path = self._path(digest)
        if not path.exists():
            return None
        try:
            value = np.load(path, allow_pickle=False)
            if value.shape != (self.runtime.feature_dim,) or value.dtype != np.float32 or not np.isfinite(value).all():
                raise ValueError(f"shape {value.shape} dtype {value.dtype}")
        except (ValueError, OSError, EOFError) as exc:
            log.warning("feature cache entry %s is corrupt (%s): rebuilding it", path, exc)
            path.unlink(missing_ok=True)
            self.rebuilt += 1
            return None
        return value

    def _write(self, digest: str, value: np.ndarray) -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.asarray(value, np.float32), allow_pickle=False)
        os.replace(tmp, path)

    def _flush(self, frames: list[np.ndarray], digests: list[str], out: np.ndarray, rows: list[int]) -> None:
        features = self.runtime.features(preprocess_batch(frames, self.runtime.config))
        for digest, row, value in zip(digests, rows, features):
            self._write(digest, value)
            out[row] = value
        self.misses += len(frames)
        frames.clear()
        digests.clear()
        rows.clear()

    def scan_features(self, scan: Scan, task: Task | None = None) -> ScanFeatures:
        """Features of every frame of ``scan``; ``task``, when given, advances by one a frame."""
        out = np.empty((len(scan), self.runtime.feature_dim), np.float32)
        hashes: list[str] = []
        pending: list[np.ndarray] = []
        pending_digests: list[str] = []
        pending_rows: list[int] = []
        count = 0
        for row, frame in enumerate(scan.iter_frames()):
            digest = frame_hash(frame)
            hashes.append(digest)
            cached = self._read(digest)
            if cached is not None:
                out[row] = cached
                self.hits += 1
            else:
                pending.append(frame)
                pending_digests.append(digest)
                pending_rows.append(row)
                if len(pending) >= self.batch_size:
                    self._flush(pending, pending_digests, out, pending_rows)
            count += 1
            if task is not None:
                task.update(advance=1)
        if pending:
            self._flush(pending, pending_digests, out, pending_rows)
        if count != len(scan):
            raise DataError(f"scan {scan.root}: read {count} frames but the labels list {len(scan)}")
        return ScanFeatures(scan.name, out, hashes, np.asarray(scan.labels, np.int8))

    def extract(self, scans: Sequence[Scan], *, progress: Progress = NO_PROGRESS) -> dict[str, ScanFeatures]:
        """Features of all ``scans`` by name; ``progress`` gets one task over their frames."""
        backbone = self.runtime.config.backbone
        task = progress.task(f"features {backbone}", sum(len(scan) for scan in scans))
        result = {}
        try:
            for scan in scans:
                task.update(description=f"features {backbone} {scan.name}")
                result[scan.name] = self.scan_features(scan, task)
        finally:
            task.close()
        log.info("feature cache %s: %d read, %d computed, %d rebuilt", self.folder, self.hits, self.misses,
                 self.rebuilt)
        return result


def data_fingerprint(features: Iterable[ScanFeatures]) -> str:
    """Hash of scan names, frame contents and labels: what a run was made from."""
    digest = hashlib.sha256()
    for item in features:
        digest.update(item.scan.encode())
        digest.update("".join(item.hashes).encode())
        digest.update(np.asarray(item.labels, np.int8).tobytes())
    return digest.hexdigest()[:20]
