"""models.bundle: a bundle round-trips, refuses what it cannot trust in one line, and exports to Keras."""

import json
import zipfile

import numpy as np
import pytest

from models.bundle import FORMAT_VERSION, load, read_meta, save
from models.errors import BundleError
from models.preprocess import PREPROCESS_VERSION


@pytest.fixture
def bundle_path(tmp_path, tiny_config, tiny_models):
    extractor, head = tiny_models
    return save(tmp_path / "model.fhb", tiny_config, extractor, head, threshold=0.37,
                info={"metrics": {"roc_auc": 0.9}})


def test_save_and_load_give_identical_scores(bundle_path, tiny_config, tiny_models, rng):
    extractor, head = tiny_models
    bundle = load(bundle_path)
    assert bundle.config == tiny_config
    assert bundle.threshold == pytest.approx(0.37)
    assert bundle.info["metrics"]["roc_auc"] == 0.9
    assert bundle.model_id.startswith("tiny-")
    frames = [rng.integers(0, 256, (90, 120), dtype=np.uint8) for _ in range(10)]
    before = bundle.runtime().__class__(tiny_config, extractor, head)
    after = bundle.runtime()
    f_before, f_after = before.frame_features(frames), after.frame_features(frames)
    np.testing.assert_array_equal(f_before, f_after)
    np.testing.assert_array_equal(before.scan_scores(f_before), after.scan_scores(f_after))


def test_not_a_bundle(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(BundleError, match="not a fetalhead bundle or truncated"):
        load(path)
    with pytest.raises(BundleError, match="not found"):
        load(tmp_path / "missing.fhb")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(BundleError, match="missing bundle.json"):
        load(other)


def test_truncated_bundle(bundle_path, tmp_path):
    data = bundle_path.read_bytes()
    cut = tmp_path / "cut.fhb"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError) as info:
        load(cut)
    assert str(cut) in str(info.value) and "truncated" in str(info.value)


def _rewrite_meta(src, dst, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "bundle.json":
                meta = json.loads(data)
                change(meta)
                data = json.dumps(meta)
            zout.writestr(item, data)
    return dst


def test_newer_bundle_version(bundle_path, tmp_path):
    newer = _rewrite_meta(bundle_path, tmp_path / "newer.fhb",
                          lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="made by a newer fetalhead"):
        read_meta(newer)


def test_a_bundle_records_its_preprocessing_version(bundle_path):
    assert read_meta(bundle_path)["preprocess_version"] == PREPROCESS_VERSION


def test_a_bundle_made_with_another_preprocessing_is_refused_in_one_line(bundle_path, tmp_path):
    other = _rewrite_meta(bundle_path, tmp_path / "other.fhb",
                          lambda m: m.update(preprocess_version=PREPROCESS_VERSION + 1))
    for read in (read_meta, load):
        with pytest.raises(BundleError) as info:
            read(other)
        message = str(info.value)
        assert message == (f"model bundle {other}: made with preprocessing version {PREPROCESS_VERSION + 1}, but "
                           f"this fetalhead preprocesses frames with version {PREPROCESS_VERSION}: retrain the model "
                           "(fetalhead train) to use it")


def test_a_bundle_from_before_the_preprocessing_version_was_recorded_is_version_1(bundle_path, tmp_path):
    older = _rewrite_meta(bundle_path, tmp_path / "older.fhb", lambda m: m.pop("preprocess_version"))
    assert PREPROCESS_VERSION == 1  # a later version must refuse these bundles: update this test then
    assert load(older).threshold == pytest.approx(0.37)


def test_config_that_does_not_match_the_weights(bundle_path, tmp_path):
    wrong = _rewrite_meta(bundle_path, tmp_path / "wrong.fhb",
                          lambda m: m["config"].update(lstm_units=[32, 8]))
    with pytest.raises(BundleError) as info:
        load(wrong)
    assert "head.weights.h5 does not match" in str(info.value)
    swapped = _rewrite_meta(bundle_path, tmp_path / "swapped.fhb",
                            lambda m: m["config"].update(backbone="mobilenetv2", image_size=64))
    with pytest.raises(BundleError, match="mobilenetv2"):
        load(swapped)


def test_bundle_is_written_atomically(bundle_path, tiny_config, tiny_models):
    assert not list(bundle_path.parent.glob("*.partial"))
    assert sorted(p.name for p in bundle_path.parent.iterdir()) == ["model.fhb"]


def test_extra_members_are_never_read_or_extracted(bundle_path, tmp_path):
    """Only weights and bundle.json are read: a pickle, code or a path-escaping name in the zip is ignored."""
    laden = tmp_path / "laden.fhb"
    with zipfile.ZipFile(bundle_path) as zin, zipfile.ZipFile(laden, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item.filename))
        zout.writestr("model.pkl", b"\x80\x04cos\nsystem\n(S'touch pwned'\ntR.")
        zout.writestr("__init__.py", "raise SystemExit('code from a bundle ran')")
        zout.writestr("../escaped.txt", "outside")
    bundle = load(laden)
    assert bundle.threshold == pytest.approx(0.37)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"config": "vgg19"}, "bundle.json config must be a table of model settings, got 'vgg19'"),
    ({"threshold": "0.5"}, "bundle.json threshold must be a number in [0, 1], got '0.5'"),
    ({"threshold": 7}, "bundle.json threshold must be a number in [0, 1], got 7"),
    ({"threshold": True}, "bundle.json threshold must be a number in [0, 1], got True"),
    ({"class_names": ["Head"]}, "bundle.json class_names must be two class names of 1 to 64 characters, "
                                "got ['Head']"),
    ({"feature_dim": "64"}, "bundle.json feature_dim must be an integer, got '64'"),
    ({"preprocess_version": "1"}, "bundle.json preprocess_version must be an integer, got '1'"),
    ({"info": [1, 2]}, "bundle.json info must be a table, got [1, 2]"),
    ({"format_version": True}, "format_version missing or not an integer"),
    ({"head_members": 0}, "bundle.json head_members must be an integer in [1, 64], got 0"),
    ({"head_members": 1000}, "bundle.json head_members must be an integer in [1, 64], got 1000"),
    ({"head_members": 3}, "head.weights.h5 does not match the config's tiny model"),
])
def test_bundle_json_fields_of_unexpected_types_are_rejected_in_one_line(bundle_path, tmp_path, change, message):
    odd = _rewrite_meta(bundle_path, tmp_path / "odd.fhb", lambda m: m.update(change))
    with pytest.raises(BundleError) as info:
        load(odd)
    assert message in str(info.value) and str(odd) in str(info.value) and "\n" not in str(info.value)


def test_a_member_claiming_a_huge_size_is_refused_before_reading(bundle_path, tmp_path):
    bomb = tmp_path / "bomb.fhb"
    with zipfile.ZipFile(bundle_path) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "bundle.json":
                meta = json.loads(data)
                meta["info"]["padding"] = " " * (2 << 20)
                data = json.dumps(meta).encode()
            zout.writestr(item.filename, data)
    with pytest.raises(BundleError, match=r"bundle.json is \d+ bytes unpacked, more than the 1048576"):
        read_meta(bomb)


@pytest.mark.slow
def test_export_writes_an_end_to_end_model_that_loads_with_keras_alone(bundle_path, tiny_config, tmp_path, rng):
    import subprocess
    import sys

    from tools.commands.model import main

    out = tmp_path / "model.keras"
    assert main(["export", str(bundle_path), str(out)]) == 0
    clip = rng.normal(size=(2, tiny_config.window, 64, 64, 3)).astype(np.float32)
    np.save(tmp_path / "clip.npy", clip)
    bundle = load(bundle_path)
    features = bundle.runtime().features(clip.reshape(-1, 64, 64, 3)).reshape(2, tiny_config.window, -1)
    # A fresh process that imports Keras and nothing of fetalhead.
    code = ("import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1]); "
            "np.save(sys.argv[3], m.predict_on_batch(np.load(sys.argv[2])))")
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "clip.npy"), str(tmp_path / "scores.npy")],
                   check=True, capture_output=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), bundle.runtime().score_windows(features), atol=1e-5)


def test_a_bundle_of_fold_heads_scores_their_mean_on_every_path(tiny_config, tiny_models, tmp_path, rng):
    from models.cnn_lstm import build_temporal_head, ensemble_head, head_members
    from models.export import streaming_models
    from models.runtime import Runtime

    extractor, _ = tiny_models
    feature_dim = int(extractor.output_shape[-1])
    heads = [build_temporal_head(tiny_config, feature_dim, name=f"fold_{i}") for i in range(3)]
    bundle = load(save(tmp_path / "folds.fhb", tiny_config, extractor, ensemble_head(tiny_config, heads)))
    assert head_members(bundle.head) == 3 and read_meta(tmp_path / "folds.fhb")["head_members"] == 3
    windows = rng.normal(size=(4, 8, feature_dim)).astype(np.float32)
    each = [Runtime(tiny_config, extractor, h).score_windows(windows) for h in heads]
    runtime = bundle.runtime()
    np.testing.assert_allclose(runtime.score_windows(windows), np.mean(each, axis=0), atol=1e-6)
    np.testing.assert_allclose(runtime.score_newest([windows[0]]), np.mean(each, axis=0)[0, -1:], atol=1e-6)
    _, exported = streaming_models(bundle)
    np.testing.assert_allclose(exported.predict_on_batch(windows), np.mean(each, axis=0), atol=1e-6)


def test_a_calibrated_bundle_publishes_calibrated_scores(tiny_config, tiny_models, tmp_path, rng):
    from models.calibration import Calibration
    from models.runtime import Runtime

    extractor, head = tiny_models
    calibration = Calibration(slope=2.0, intercept=-0.5, fitted_on="test")
    bundle = load(save(tmp_path / "c.fhb", tiny_config, extractor, head, calibration=calibration))
    assert bundle.calibration == calibration
    windows = rng.normal(size=(2, 8, int(extractor.output_shape[-1]))).astype(np.float32)
    raw = Runtime(tiny_config, extractor, head).score_windows(windows)
    np.testing.assert_allclose(bundle.runtime().score_windows(windows), calibration.apply(raw), atol=1e-6)
    assert calibration.inverse(float(calibration.apply(np.float32(0.3)))) == pytest.approx(0.3, abs=1e-6)
