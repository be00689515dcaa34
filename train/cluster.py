"""Training on a Ray cluster (``fetalhead train --ray ADDRESS``): the feature cache and the models as Ray tasks.

The feature cache is extracted one task per scan and the features come back
through Ray's object store, so the workers need no shared cache folder. Every
fold and the final model is one task (one GPU each when the cluster has
GPUs); a task writes its fold folder (history, best weights) into the run
folder, which must therefore be on a filesystem every worker sees (the
cluster's shared disk; on one machine it is). The scoring of the folds and the
report stay on the driver, in ``train.kfold``, so a Ray run writes the same
files as a local one.

Ray is imported here only: it is the ``ray`` extra.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pandas as pd

from models.cnn_lstm import build_feature_extractor, build_temporal_head
from models.config import ModelConfig
from models.errors import ConfigError
from models.progress import NO_PROGRESS, Progress
from models.runtime import Runtime
from train.cache import FeatureCache, ScanFeatures
from train.config import TrainConfig
from train.data import Scan

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray: Ray is not installed; pip install -e '.[ray]'") from None
    return ray


def connect(address: str):
    """Ray, connected to the cluster at ``address``; "auto": a running one on this machine, or a new local one.

    A session already connected (``ray.init`` by the caller) is used as it is.
    """
    ray = _ray()
    if ray.is_initialized():
        return ray
    if address != "auto":
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise ConfigError(f"--ray {address}: no Ray cluster reached there ({str(exc).splitlines()[0]})") from None
        return ray
    try:
        ray.init(address="auto", log_to_driver=False)
    except ConnectionError:
        log.info("--ray auto: no running Ray cluster found, starting a local one")
        ray.init(include_dashboard=False, log_to_driver=False)
    return ray


def _extractor(model_config: ModelConfig, weights: list[np.ndarray]) -> keras.Model:
    extractor = build_feature_extractor(model_config)
    extractor.set_weights(weights)
    return extractor


def _scan_features(scan: Scan, model_config: ModelConfig, train_config: TrainConfig,
                   weights: list[np.ndarray]):
    extractor = _extractor(model_config, weights)
    runtime = Runtime(model_config, extractor, build_temporal_head(model_config, extractor.output_shape[-1]))
    cache = FeatureCache(runtime, train_config.cache_dir or None, batch_size=train_config.extract_batch)
    return cache.scan_features(scan)


def _train_job(train_pack: Callable, out: Path, job, names: tuple[list[str], list[str]], data: dict,
               model_config: ModelConfig, train_config: TrainConfig, weights: list[np.ndarray]
               ) -> tuple[list[Any], list[Any], pd.DataFrame]:
    job = dataclasses.replace(job, train=[data[n] for n in names[0]], val=[data[n] for n in names[1]])
    runtime, history = train_pack(out, [job], model_config, train_config, _extractor(model_config, weights))[0]
    extractor_weights = runtime.extractor.get_weights() if train_config.train_backbone else []
    return extractor_weights, runtime.training_head.get_weights(), history


class RayTrainer:
    """``train.kfold.train``'s two cluster-sized steps, as Ray tasks on the cluster at ``address``.

    ``train_pack`` is ``train.kfold.train_pack``, passed in rather than
    imported, as ``train.kfold`` imports this module.
    """

    def __init__(self, address: str, train_pack: Callable) -> None:
        self.ray = connect(address)
        self.train_pack = train_pack
        gpus = self.ray.cluster_resources().get("GPU", 0)
        self.resources = {"num_cpus": 1, "num_gpus": 1 if gpus >= 1 else 0}
        log.info("Ray cluster: %s", ", ".join(f"{k} {v:g}" for k, v in sorted(self.ray.cluster_resources().items())
                                             if k in ("CPU", "GPU")))

    def features(self, scans: list[Scan], model_config: ModelConfig, train_config: TrainConfig,
                 extractor: keras.Model, progress: Progress = NO_PROGRESS) -> list[ScanFeatures]:
        """Each scan's cached features by ``extractor``, extracted one task per scan."""
        if train_config.cache_dir:
            # Workers run in folders of their own: a relative path would name another folder there.
            train_config = dataclasses.replace(train_config, cache_dir=str(Path(train_config.cache_dir).resolve()))
        task = self.ray.remote(**self.resources)(_scan_features)
        weights = self.ray.put(extractor.get_weights())
        refs = [task.remote(scan, model_config, train_config, weights) for scan in scans]
        bar = progress.task("features (Ray)", total=len(refs))
        features = []
        for ref in refs:
            features.append(self.ray.get(ref))
            bar.update(advance=1)
        bar.close()
        return features

    def train_jobs(self, out: Path, jobs: list, model_config: ModelConfig, train_config: TrainConfig,
                   shared_extractor: keras.Model, progress: Progress = NO_PROGRESS
                   ) -> list[tuple[Runtime, pd.DataFrame]]:
        """``train_pack``'s result for ``jobs``, each job a task of its own."""
        by_name = {d.name: d for job in jobs for d in (*job.train, *job.val)}
        data = self.ray.put(by_name)
        weights = self.ray.put(shared_extractor.get_weights())
        task = self.ray.remote(**self.resources)(_train_job)
        refs = []
        for job in jobs:
            names = ([d.name for d in job.train], [d.name for d in job.val])
            bare = dataclasses.replace(job, train=[], val=[], folder=job.folder.resolve())
            refs.append(task.remote(self.train_pack, out.resolve(), bare, names, data, model_config,
                                    train_config, weights))
        bar = progress.task(f"{len(jobs)} models (Ray)", total=len(refs))
        trained = []
        for job, ref in zip(jobs, refs):
            extractor_weights, head_weights, history = self.ray.get(ref)
            extractor = _extractor(model_config, extractor_weights) if extractor_weights else shared_extractor
            head = build_temporal_head(model_config, int(extractor.output_shape[-1]), name=f"head_{job.tag}")
            head.set_weights(head_weights)
            trained.append((Runtime(model_config, extractor, head), history))
            bar.update(advance=1)
        bar.close()
        return trained
