"""The model under the JAX backend gives the TensorFlow backend's scores (JAX comes with the test extra)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.bundle import save

SCRIPT = """
import sys, numpy as np
from models.bundle import load
rng = np.random.default_rng(0)
frames = [rng.integers(0, 256, (90, 120), dtype=np.uint8) for _ in range(10)]
runtime = load(sys.argv[1]).runtime()
np.save(sys.argv[2], runtime.scan_scores(runtime.frame_features(frames)))
"""


@pytest.mark.slow
def test_jax_backend_scores_equal_tensorflows(tmp_path, tiny_config, tiny_models):
    bundle = save(tmp_path / "m.fhb", tiny_config, *tiny_models)
    results = {}
    for backend in ("tensorflow", "jax"):
        out = tmp_path / f"{backend}.npy"
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(Path(__file__).parents[2])}
        subprocess.run([sys.executable, "-c", SCRIPT, str(bundle), str(out)], env=env, check=True, timeout=300)
        results[backend] = np.load(out)
    np.testing.assert_allclose(results["jax"], results["tensorflow"], atol=1e-5)
