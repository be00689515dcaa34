"""Model bundles: one file holding the weights and the config they were built from.

A bundle is a zip file::

    bundle.json            format, version, preprocessing version, ModelConfig,
                           threshold, calibration (optional), head_members
                           (optional, the fold heads averaged), class names,
                           training summary and metrics, package versions
    extractor.weights.h5   the backbone's weights (Keras weights file)
    head.weights.h5        the temporal head's weights (all members')

``load`` rebuilds both models from the bundle's own config, never from
command-line flags, then loads the weights. Only weights are read from the
file: no code, no pickle, and no Keras config is deserialised, which is
stricter than Keras's safe mode. Only the three members above are read, so
anything else in the zip is ignored; bundle.json's fields are type-checked,
its nesting and every model setting bounded (``ModelConfig``), and the
members' stated sizes capped before anything is read. A damaged file (a
flipped byte, a corrupt compressed member) is a one-line ``BundleError``
naming the member, like every other problem with a bundle.

A bundle made with another preprocessing version (``PREPROCESS_VERSION``)
is refused: its weights were fitted to inputs this code no longer makes.
``models.export`` writes a bundle as one model for Keras, ONNX or TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from models.calibration import Calibration
from models.classes import CLASS_NAMES
from models.config import ModelConfig
from models.errors import BundleError, ConfigError, WeightsError
from models.preprocess import PREPROCESS_VERSION
from models.settings import from_mapping, to_dict

# Keras and the model code are imported where a model is built, so that reading a bundle's
# metadata (``read_meta``: a check before a pipeline starts, ``model info``) costs no TensorFlow.
if TYPE_CHECKING:
    import keras

    from models.runtime import Runtime

FORMAT = "fetalhead-bundle"
FORMAT_VERSION = 1
# Bundles written before bundle.json recorded it were made with the first preprocessing.
_FIRST_PREPROCESS_VERSION = 1
_MEMBERS = ("bundle.json", "extractor.weights.h5", "head.weights.h5")
# Far above any real bundle (VGG19's weights are 80 MB), far below a zip bomb's claims.
_MAX_MEMBER_BYTES = {"bundle.json": 1 << 20, "extractor.weights.h5": 2 << 30, "head.weights.h5": 2 << 30}
# bundle.json written by ``save`` is 4 levels deep; whoever reads its info later may recurse.
_MAX_JSON_DEPTH = 32
_MAX_CLASS_NAME = 64
# More heads than any k-fold run makes: a larger count is a damaged file, not a model.
_MAX_HEAD_MEMBERS = 64


def package_versions() -> dict[str, str]:
    from importlib import metadata

    import keras

    versions = {"python": platform.python_version(), "keras_backend": keras.backend.backend()}
    for name in ("fetalhead", "keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy",
                 "opencv-python-headless", "opencv-python"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclasses.dataclass
class Bundle:
    """A loaded model: config, both models, decision threshold and training info."""

    config: ModelConfig
    extractor: keras.Model
    head: keras.Model
    threshold: float = 0.5
    class_names: tuple[str, str] = CLASS_NAMES
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: Path | None = None
    model_id: str = ""
    calibration: Calibration | None = None

    def runtime(self) -> Runtime:
        from models.runtime import Runtime

        return Runtime(self.config, self.extractor, self.head, calibration=self.calibration)


def save(path: str | Path, config: ModelConfig, extractor: keras.Model, head: keras.Model, *,
         threshold: float = 0.5, info: dict[str, Any] | None = None,
         calibration: Calibration | None = None) -> Path:
    """Write a bundle to ``path`` atomically (a temporary file, then rename).

    With ``calibration``, ``threshold`` must be on the calibrated scale (the
    scale every ``Runtime`` of the loaded bundle scores on).
    """
    from models.cnn_lstm import head_members

    path = Path(path)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    members = head_members(head)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preprocess_version": PREPROCESS_VERSION,
        "config": to_dict(config),
        "feature_dim": int(extractor.output_shape[-1]),
        "threshold": float(threshold),
        "class_names": list(CLASS_NAMES),
        **({"calibration": calibration.to_dict()} if calibration is not None else {}),
        **({"head_members": members} if members > 1 else {}),
        "info": info or {},
        "versions": package_versions(),
    }
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        extractor.save_weights(os.path.join(tmp, "extractor.weights.h5"))
        head.save_weights(os.path.join(tmp, "head.weights.h5"))
        partial = os.path.join(tmp, "bundle.partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("bundle.json", json.dumps(meta, indent=2, default=str))
            zf.write(os.path.join(tmp, "extractor.weights.h5"), "extractor.weights.h5")
            zf.write(os.path.join(tmp, "head.weights.h5"), "head.weights.h5")
        os.replace(partial, path)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The bundle's bundle.json, checked for format and version, without loading models."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"model bundle {path}: not found")
    if path.is_dir():
        raise BundleError(f"model bundle {path}: is a folder, expected a bundle file")
    with _open_zip(path) as zf:
        names = set(zf.namelist())
        missing = [m for m in _MEMBERS if m not in names]
        if missing:
            raise BundleError(f"model bundle {path}: not a fetalhead bundle (missing {', '.join(missing)})")
        for member, cap in _MAX_MEMBER_BYTES.items():
            size = zf.getinfo(member).file_size
            if size > cap:
                raise BundleError(f"model bundle {path}: {member} is {size} bytes unpacked, more than "
                                  f"the {cap} a bundle may hold")
        with _unpacking(path, "bundle.json"):
            text = zf.read("bundle.json")
    try:
        meta = json.loads(text)
    except RecursionError:
        raise BundleError(f"model bundle {path}: bundle.json is nested more than {_MAX_JSON_DEPTH} levels "
                          "deep") from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, and integers of over 4300 digits
        raise BundleError(f"model bundle {path}: bundle.json is not valid JSON") from None
    if _depth(meta) > _MAX_JSON_DEPTH:
        raise BundleError(f"model bundle {path}: bundle.json is nested more than {_MAX_JSON_DEPTH} levels deep")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"model bundle {path}: not a fetalhead bundle (bundle.json has no format {FORMAT!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleError(f"model bundle {path}: format_version missing or not an integer")
    if version > FORMAT_VERSION:
        raise BundleError(f"model bundle {path}: made by a newer fetalhead (bundle format {version}, "
                          f"this version reads up to {FORMAT_VERSION}): upgrade fetalhead")
    _check_meta_types(path, meta)
    made_with = meta.get("preprocess_version", _FIRST_PREPROCESS_VERSION)
    if made_with != PREPROCESS_VERSION:
        raise BundleError(f"model bundle {path}: made with preprocessing version {made_with}, but this fetalhead "
                          f"preprocesses frames with version {PREPROCESS_VERSION}: retrain the model "
                          "(fetalhead train) to use it")
    return meta


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The bundle as an open zip file; BundleError when it is not one."""
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise BundleError(f"model bundle {path}: not a fetalhead bundle or truncated "
                          "(not a complete zip file)") from None
    except (zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise BundleError(f"model bundle {path}: cannot be read ({exc})") from None


@contextlib.contextmanager
def _unpacking(path: Path, member: str) -> Iterator[None]:
    """Turn any failure to unpack ``member`` into one BundleError line naming it."""
    try:
        yield
    # zipfile lets each decompressor's own error through (zlib.error, lzma.LZMAError, ...)
    # besides its own BadZipFile for a bad header or CRC.
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"model bundle {path}: {member} is damaged, it cannot be unpacked ({first})") from None


def _depth(value: Any) -> int:
    """How deeply JSON lists and tables nest in ``value`` (a scalar is 0), without recursing."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > _MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_meta_types(path: Path, meta: dict[str, Any]) -> None:
    """BundleError naming the first bundle.json field of the wrong type (JSON can hold anything)."""
    checks = (
        ("config", isinstance(meta.get("config"), dict), "a table of model settings"),
        ("threshold", "threshold" not in meta or (_is_number(meta["threshold"]) and 0 <= meta["threshold"] <= 1),
         "a number in [0, 1]"),
        ("class_names", "class_names" not in meta or (
            isinstance(meta["class_names"], list) and len(meta["class_names"]) == 2
            and all(isinstance(c, str) and 0 < len(c) <= _MAX_CLASS_NAME for c in meta["class_names"])),
         f"two class names of 1 to {_MAX_CLASS_NAME} characters"),
        ("feature_dim", meta.get("feature_dim") is None or _is_integer(meta["feature_dim"]), "an integer"),
        ("preprocess_version", "preprocess_version" not in meta or _is_integer(meta["preprocess_version"]),
         "an integer"),
        ("head_members", "head_members" not in meta or (
            _is_integer(meta["head_members"]) and 1 <= meta["head_members"] <= _MAX_HEAD_MEMBERS),
         f"an integer in [1, {_MAX_HEAD_MEMBERS}]"),
        ("info", isinstance(meta.get("info", {}), dict), "a table"),
        ("versions", isinstance(meta.get("versions", {}), dict), "a table"),
    )
    for name, ok, what in checks:
        if not ok:
            shown = repr(meta.get(name))
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise BundleError(f"model bundle {path}: bundle.json {name} must be {what}, got {shown}")
    calibration_of(path, meta)


def calibration_of(path: str | Path, meta: dict[str, Any]) -> Calibration | None:
    """The bundle's calibration, None for bundles without one (older ones); BundleError when malformed."""
    if meta.get("calibration") is None:
        return None
    try:
        return Calibration.from_dict(meta["calibration"])
    except (ValueError, TypeError) as exc:
        raise BundleError(f"model bundle {path}: bundle.json calibration: {exc}") from None


def load(path: str | Path) -> Bundle:
    """Rebuild the models from the bundle's own config and load its weights.

    The weights are unpacked (and their checksums checked) before any model
    is built, so a damaged bundle fails at once.
    """
    from models.backbones import load_weights_strict
    from models.cnn_lstm import build_feature_extractor, build_temporal_head

    path = Path(path)
    meta = read_meta(path)
    try:
        config = from_mapping(ModelConfig, {**meta["config"], "weights": "none"})
    except (ConfigError, TypeError, KeyError) as exc:
        raise BundleError(f"model bundle {path}: bad config ({exc})") from None
    with tempfile.TemporaryDirectory() as tmp:
        with _open_zip(path) as zf:
            unpacked = {}
            for member in ("extractor.weights.h5", "head.weights.h5"):
                with _unpacking(path, member):
                    unpacked[member] = zf.extract(member, tmp)
        try:
            extractor = build_feature_extractor(config, weights="none")
        except WeightsError as exc:
            raise BundleError(f"model bundle {path}: {exc}") from None
        feature_dim = int(extractor.output_shape[-1])
        if meta.get("feature_dim") not in (None, feature_dim):
            raise BundleError(f"model bundle {path}: config builds {config.backbone} with {feature_dim} features "
                              f"but the bundle says {meta['feature_dim']}")
        head = build_temporal_head(config, feature_dim, members=meta.get("head_members", 1))
        for member, model in (("extractor.weights.h5", extractor), ("head.weights.h5", head)):
            try:
                load_weights_strict(model, unpacked[member])
            except Exception as exc:  # Keras raises ValueError or h5py errors here
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BundleError(f"model bundle {path}: {member} does not match the config's "
                                  f"{config.backbone} model ({first})") from None
    extractor.trainable = False
    threshold = float(meta.get("threshold", 0.5))
    return Bundle(config=config, extractor=extractor, head=head, threshold=threshold,
                  class_names=tuple(meta.get("class_names", CLASS_NAMES)), info=meta.get("info", {}),
                  path=path, model_id=model_id(path, config.backbone), calibration=calibration_of(path, meta))


def model_id(path: str | Path, backbone: str) -> str:
    """The id the worker puts in every score: the backbone and the first 12 hex digits of the file's SHA-256."""
    return f"{backbone}-{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]}"
