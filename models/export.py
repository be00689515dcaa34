"""A bundle written for other runtimes: a Keras file, ONNX, or a TensorFlow SavedModel.

The format follows the output path (``export_format``): ``.keras`` a Keras
file, ``.onnx`` an ONNX model, and a folder (a path ending in ``/``, in
``.savedmodel`` or with no extension) a TensorFlow SavedModel whose
``serve`` endpoint is the model. Any other extension is a ConfigError
naming the choices.

``export`` writes the end-to-end model, preprocessed frames float32
(B, W, S, S, 3) -> per-frame scores float32 (B, W), W = config.window and
S = config.image_size. ``pieces=True`` writes instead the two parts a
device runs its own rolling buffer with (docs/export.md):

    OUT-extractor   preprocessed frames float32 (N, S, S, 3) -> features float32 (N, F)
    OUT-head        feature windows float32 (B, W, F) -> per-position scores float32 (B, W)

with OUT's extension on each. The head takes exactly W positions: a
device pads a window still filling up with zeros at its end and reads the
score of its newest frame, as the worker does (``models.scoring.newest_scores``);
the LSTMs are causal, so the padding changes nothing before it. Every
export uses Keras's own LSTM and Dense layers without recurrent dropout,
the same weights and scores as ``Runtime``. The ONNX inputs and outputs
are named ``frames``, ``features`` and ``scores`` as above, their first
axis ``batch``, and each ONNX file carries the backbone, image size,
window, threshold and model id in its metadata. ONNX goes through Keras's
own export, which converts with tf2onnx, so it needs the TensorFlow
backend, as a SavedModel does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from models.errors import ConfigError, FetalheadError

if TYPE_CHECKING:
    import keras

    from models.bundle import Bundle

KERAS, ONNX, SAVED_MODEL = "keras", "onnx", "savedmodel"
CHOICES = "OUT.keras (Keras), OUT.onnx (ONNX), or a folder OUT/, OUT.savedmodel or OUT (TensorFlow SavedModel)"


def export_format(out: str | Path) -> str:
    """The format ``out`` asks for: KERAS, ONNX or SAVED_MODEL; ConfigError (one line) for any other extension."""
    text = os.fspath(out)
    if text.endswith(("/", os.sep)):
        return SAVED_MODEL
    suffix = Path(text).suffix.lower()
    formats = {".keras": KERAS, ".onnx": ONNX, ".savedmodel": SAVED_MODEL, "": SAVED_MODEL}
    if suffix not in formats:
        raise ConfigError(f"export {text}: unknown format {Path(text).suffix!r}: write {CHOICES}")
    return formats[suffix]


def piece_path(out: str | Path, piece: str) -> Path:
    """Where ``piece`` (``extractor`` or ``head``) of an export to ``out`` goes: OUT-PIECE with OUT's extension."""
    path = Path(out)
    return path.with_name(f"{path.stem}-{piece}{path.suffix}")


def export(bundle: Bundle, out: str | Path, *, pieces: bool = False) -> list[Path]:
    """Write ``bundle`` to ``out`` in the format its extension names; returns the paths written.

    Without ``pieces`` one end-to-end model at ``out``; with it, the
    extractor and the head at ``piece_path(out, ...)``, in that order.
    The format is checked before any model is built.
    """
    kind = export_format(out)
    if kind == ONNX:
        missing = [name for name in ("onnx", "tf2onnx") if importlib.util.find_spec(name) is None]
        if missing:
            raise FetalheadError(f"export {out}: ONNX export needs {' and '.join(missing)}: "
                                 "pip install 'fetalhead[export]'")
    if pieces:
        extractor, head = streaming_models(bundle)
        targets = [(piece_path(out, "extractor"), extractor, "frames", "features"),
                   (piece_path(out, "head"), head, "features", "scores")]
    else:
        targets = [(Path(out), end_to_end_model(bundle), "frames", "scores")]
    for path, model, input_name, output_name in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == KERAS:
            model.save(path)
        elif kind == SAVED_MODEL:
            with _quiet("tensorflow"):
                model.export(str(path), format="tf_saved_model", verbose=False)
        else:
            _export_onnx(bundle, model, path, input_name, output_name)
    return [path for path, *_ in targets]


def streaming_models(bundle: Bundle) -> tuple[keras.Model, keras.Model]:
    """The bundle's extractor (N, S, S, 3) -> (N, F) and a standard-layer head (B, W, F) -> (B, W)."""
    import keras

    from models.cnn_lstm import build_temporal_head, head_members

    head = build_temporal_head(bundle.config, int(bundle.extractor.output_shape[-1]), inference=True,
                               fixed_window=True, lstm=keras.layers.LSTM, name="head",
                               members=head_members(bundle.head))
    head.set_weights(bundle.head.get_weights())
    return bundle.extractor, head


def end_to_end_model(bundle: Bundle) -> keras.Model:
    """Preprocessed frames float32 (B, W, S, S, 3) -> scores float32 (B, W), from the streaming models' layers."""
    from models.cnn_lstm import build_cnn_lstm

    extractor, head = streaming_models(bundle)
    return build_cnn_lstm(bundle.config, extractor, head)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Only warnings and errors from ``logger``, and no FutureWarning, while exporting.

    TensorFlow logs each asset written and tf2onnx each optimiser pass at
    INFO; Keras's numpy-2 patch of tf2onnx warns of ``np.object``.
    """
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        log.setLevel(level)


def _export_onnx(bundle: Bundle, model: keras.Model, path: Path, input_name: str, output_name: str) -> None:
    """``model`` as ONNX at ``path`` (Keras's export through tf2onnx), the bundle's settings in its metadata.

    tf2onnx names the input and output after TensorFlow's graph (``Identity:0``);
    they are renamed ``input_name`` and ``output_name``.
    """
    import keras
    import onnx

    from models.preprocess import PREPROCESS_VERSION

    spec = keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")
    with _quiet("tf2onnx"), tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / path.name
        model.export(str(raw), format="onnx", verbose=False, input_signature=[spec])
        proto = onnx.load(str(raw))
    graph = proto.graph
    renames = {graph.input[0].name: input_name, graph.output[0].name: output_name}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    graph.input[0].name, graph.output[0].name = input_name, output_name
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    config = bundle.config
    meta = {"fetalhead.model_id": bundle.model_id, "fetalhead.backbone": config.backbone,
            "fetalhead.image_size": str(config.image_size), "fetalhead.window": str(config.window),
            "fetalhead.threshold": repr(bundle.threshold), "fetalhead.preprocess_version": str(PREPROCESS_VERSION)}
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
