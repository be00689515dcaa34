"""The GPU benchmark runs end to end on the CPU backend at hand (tiny model, few frames); no timing targets."""

import json
import math

import keras
import pytest

from tools.gpu_bench import PRECISIONS, main

FRAMES = 24


def test_gpu_bench_reports_every_figure_for_every_precision(tmp_path, capsys):
    path = tmp_path / "out" / "gpu.json"
    assert main(["--backbone", "tiny", "--image-size", "64", "--frames", str(FRAMES), "--batches", "8,1",
                 "--live-frames", "12", "--repeats", "2", "--precision", ",".join(PRECISIONS),
                 "--json", str(path)]) == 0

    report = json.loads(path.read_text())
    for key in ("backend", "keras_version", "device", "host", "backbone", "image_size", "window", "frames",
                "live_frames", "repeats", "inputs", "target_replay_fps", "target_live_p99_ms", "results"):
        assert key in report
    assert report["backend"] == keras.backend.backend()
    assert report["target_replay_fps"] == 1000 and report["target_live_p99_ms"] == 10
    # float32 first: the mixed-precision scores are compared against it.
    assert [r["precision"] for r in report["results"]] == list(PRECISIONS)
    for result in report["results"]:
        assert [run["batch"] for run in result["replay"]] == [1, 8]
        for run in result["replay"]:
            assert run["frames_scored"] == FRAMES
            assert run["frames_per_s"] > 0 and run["first_call_s"] > 0 and run["repeats"] == 2
            # Of two passes the median reported is the slower one.
            assert run["frames_per_s_min"] == run["frames_per_s"] <= run["frames_per_s_max"]
            assert math.isclose(run["frames_per_s"], FRAMES / run["seconds"])
        assert result["best_frames_per_s"] == max(run["frames_per_s"] for run in result["replay"])
        assert result["skipped_batches"] == []
        live = result["live"]
        assert live["frames"] == 12
        assert live["max_ms"] >= live["p99_ms"] >= live["p50_ms"] > 0
        assert math.isfinite(result["max_abs_diff_vs_float32"]) and result["max_abs_diff_vs_float32"] < 0.1
        assert math.isfinite(result["live_vs_replay_max_abs_diff"])
    float32 = report["results"][0]
    assert float32["max_abs_diff_vs_float32"] == 0.0
    # Frame by frame live gives the scores the batched lossless replay gives.
    assert float32["live_vs_replay_max_abs_diff"] < 1e-4
    assert keras.mixed_precision.global_policy().name == "float32"

    out = capsys.readouterr().out
    assert "lossless replay, 24 frames" in out and "p99 ms" in out and "preprocessing" in out
    assert "targets (set for vgg19" in out


@pytest.mark.parametrize("flag, value", [("--precision", "float8"), ("--frames", "0"), ("--batches", "8,-1"),
                                         ("--live-frames", "x"), ("--seconds-budget", "0"),
                                         ("--repeats", "0")])
def test_bad_flag_is_one_argparse_error_naming_it(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main([flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gpu_bench.py: error: argument ") and flag in err and value.split(",")[-1] in err


def test_image_size_too_small_for_the_backbone_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--backbone", "tiny", "--image-size", "32"])
    assert exc.value.code == 2
    assert "image_size" in capsys.readouterr().err


def test_seconds_budget_skips_the_larger_batches(tmp_path):
    path = tmp_path / "gpu.json"
    assert main(["--backbone", "tiny", "--image-size", "64", "--frames", "8", "--batches", "1,2,4",
                 "--live-frames", "2", "--precision", "float32", "--seconds-budget", "1e-9",
                 "--json", str(path)]) == 0
    (result,) = json.loads(path.read_text())["results"]
    assert [run["batch"] for run in result["replay"]] == [1]
    assert result["skipped_batches"] == [2, 4]
