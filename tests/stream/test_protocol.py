"""The wire format without sockets: round trips, every rejection class, fuzzing, the size cap."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.errors import ConfigError, FetalheadError
from stream.protocol import (
    DEFAULT_MAX_SIZE,
    KINDS,
    MAX_DEPTH,
    MAX_TIME,
    EndOfStream,
    Frame,
    Heartbeat,
    ProtocolError,
    Score,
    Status,
    check_stream_id,
    decode,
    encode,
    frame_message,
    process_id,
    topic,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _gradient(h: int, w: int, c: int | None) -> np.ndarray:
    """A smooth uint8 image (H, W) or (H, W, C): JPEG keeps it within a few levels."""
    y, x = np.mgrid[0:h, 0:w]
    gray = ((x * 3 + y * 2) % 256).astype(np.uint8)
    if c is None:
        return gray
    return np.stack([np.roll(gray, k * 7, axis=1) for k in range(c)], axis=-1)


def _score(**overrides) -> Score:
    fields = dict(stream="probe1", seq=41, score=0.875, decision=True, threshold=0.5, model="cnnlstm-v3",
                  t_capture=1700000000.0, t_received=1700000000.01, t_scored=1700000000.03, latency=0.03,
                  flags=("warmup", "gap"), window=8, dropped=2)
    return Score(**{**fields, **overrides})


def _body(data: bytes) -> tuple[bytes, dict]:
    """Split wire bytes into topic stream id and the map, to tamper with the map."""
    stream, _, rest = data.partition(b"\x00")
    return stream, msgpack.unpackb(rest)


def _wire(stream: bytes, body) -> bytes:
    return stream + b"\x00" + msgpack.packb(body, use_bin_type=True)


SAMPLE_FRAME = frame_message("probe1", 7, _gradient(6, 8, 3), t_capture=1700000000.5, t_source=12.25,
                             spacing=(0.2, 0.25))
MESSAGES = [
    pytest.param(frame_message("probe1", 0, _gradient(4, 5, None), t_capture=1.5), id="frame-raw-gray"),
    pytest.param(SAMPLE_FRAME, id="frame-raw-colour"),
    pytest.param(frame_message("us:2.b-x", 3, _gradient(4, 5, 1), t_capture=1.5), id="frame-raw-1ch"),
    pytest.param(frame_message("probe1", 1, _gradient(4, 5, 4), encoding="png", t_capture=1.5), id="frame-png-bgra"),
    pytest.param(_score(), id="score"),
    pytest.param(_score(flags=(), decision=False, score=0.0, window=1, dropped=0), id="score-plain"),
    pytest.param(EndOfStream("probe1", 99, "eof", 1700000001.0), id="eos"),
    pytest.param(EndOfStream("probe1", None, "stopped", 1700000001.0), id="eos-empty"),
    pytest.param(Heartbeat(process_id("capture", "probe1"), "capture", 4242, 1700000002.0,
                           {"frames_out": 120, "dropped": 0, "fps_out": 29.97, "rejected.oversized": 1}),
                 id="heartbeat"),
    pytest.param(Status("_worker", "warning", "device 0 lost, retrying in 2.0 s", 1700000003.0), id="status-process"),
    pytest.param(Status("probe1", "info", "", 1700000003.0), id="status-stream"),
]


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("msg", MESSAGES)
def test_round_trip_gives_an_equal_message(msg):
    data = encode(msg)
    assert data.startswith(topic(msg.stream))
    assert decode(data) == msg


@pytest.mark.parametrize("shape", [(6, 8), (6, 8, 1), (6, 8, 3), (6, 8, 4)])
def test_raw_frame_image_is_an_exact_zero_copy_view(shape):
    image = _gradient(*shape[:2], shape[2] if len(shape) == 3 else None)
    frame = decode(encode(frame_message("probe1", 0, image)))
    out = frame.image()
    assert out.shape == shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)
    assert np.shares_memory(out, np.frombuffer(frame.pixels, np.uint8))
    assert not out.flags.writeable


@pytest.mark.parametrize("shape", [(32, 48), (32, 48, 1), (32, 48, 3), (32, 48, 4)])
def test_png_frame_is_lossless(shape):
    image = _gradient(*shape[:2], shape[2] if len(shape) == 3 else None)
    frame = decode(encode(frame_message("probe1", 0, image, encoding="png")))
    assert frame.encoding == "png" and frame.shape == shape
    np.testing.assert_array_equal(frame.image(), image)


@pytest.mark.parametrize("shape", [(64, 96), (64, 96, 1), (64, 96, 3)])
def test_jpeg_frame_is_close(shape):
    image = _gradient(*shape[:2], shape[2] if len(shape) == 3 else None)
    msg = frame_message("probe1", 0, image, encoding="jpeg", jpeg_quality=95)
    assert len(msg.pixels) < image.nbytes
    out = decode(encode(msg)).image()
    assert out.shape == shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image).mean() < 4


def test_frame_message_copies_the_raw_image_so_the_buffer_may_be_reused():
    image = _gradient(4, 4, None)
    msg = frame_message("probe1", 0, image)
    image[:] = 0
    assert msg.image().any()


def test_frame_repr_leaves_out_the_pixels():
    assert "pixels" not in repr(SAMPLE_FRAME)


def test_pixels_are_the_last_map_entry_and_the_topic_filters_exactly():
    data = encode(SAMPLE_FRAME)
    _, body = _body(data)
    assert list(body)[:3] == ["v", "type", "stream"]
    assert list(body)[-1] == "pixels" and data.endswith(SAMPLE_FRAME.pixels)
    assert not encode(frame_message("probe10", 0, _gradient(2, 2, None))).startswith(topic("probe1"))


def test_decode_accepts_any_bytes_like_buffer():
    data = encode(SAMPLE_FRAME)
    assert decode(memoryview(data)) == decode(bytearray(data)) == SAMPLE_FRAME


def test_unknown_extra_fields_are_ignored():
    stream, body = _body(encode(_score()))
    body["confidence_interval"] = [0.8, 0.9]
    assert decode(_wire(stream, body)) == _score()


def test_constructors_coerce_numpy_scalars_and_lists():
    msg = _score(seq=np.int64(41), score=np.float32(0.875), decision=np.bool_(True), flags=["warmup", "gap"])
    assert msg == _score() and type(msg.seq) is int and type(msg.decision) is bool
    assert decode(encode(msg)) == msg


def test_heartbeat_keeps_its_own_copy_of_stats():
    stats = {"frames_in": 1}
    beat = Heartbeat("_worker", "worker", 1, 2.0, stats)
    stats["frames_in"] = 2
    assert beat.stats == {"frames_in": 1}


def test_documented_example_is_what_encode_produces():
    text = DOC.read_text()
    block = re.search(r"<!-- example-hex -->\s*```\w*\n(.*?)```", text, re.S)
    assert block, "docs/protocol.md lost its example-hex block"
    hex_bytes = "".join(line.split("|")[0] for line in block.group(1).splitlines())
    example = Frame("probe1", 0, 1700000000.25, None, (2, 2), "uint8", "raw", (0.25, 0.5), bytes([0, 64, 128, 255]))
    assert bytes.fromhex(hex_bytes) == encode(example)


# --- rejections ------------------------------------------------------------------------


def _replace(msg, **fields) -> bytes:
    stream, body = _body(encode(msg))
    body.update(fields)
    return _wire(stream, body)


def _without(msg, name) -> bytes:
    stream, body = _body(encode(msg))
    del body[name]
    return _wire(stream, body)


GOOD = encode(SAMPLE_FRAME)
BAD = [
    pytest.param(b"probe1\x00\xc1", "not msgpack", id="not-msgpack"),
    pytest.param(GOOD[:-1], "not msgpack", id="truncated"),
    pytest.param(GOOD + b"\x00", "not msgpack", id="trailing-bytes"),
    pytest.param(b"probe1", "missing topic separator", id="no-separator"),
    pytest.param(b"p" * 200 + b"\x00" + GOOD, "missing topic separator", id="topic-too-long"),
    pytest.param(b"pro be\x00" + GOOD[7:], "topic must be", id="bad-topic-characters"),
    pytest.param(b"\xff\xfe\x00" + GOOD[7:], "topic must be a UTF-8", id="topic-not-utf8"),
    pytest.param(b"probe2" + GOOD[6:], "topic 'probe2' does not match the map's stream 'probe1'", id="topic-mismatch"),
    pytest.param(_wire(b"probe1", [1, 2]), "not a map", id="not-a-map"),
    pytest.param(_wire(b"probe1", {"v": 1, "type": "frame", 3: 4}), "not msgpack", id="int-map-key"),
    pytest.param(_without(SAMPLE_FRAME, "v"), "missing field 'v'", id="no-version"),
    pytest.param(_replace(SAMPLE_FRAME, v=2), r"unsupported protocol version 2 \(supported: 1\)", id="version-2"),
    pytest.param(_replace(SAMPLE_FRAME, v="1"), "unsupported protocol version '1'", id="version-str"),
    pytest.param(_replace(SAMPLE_FRAME, type="picture"), "unknown message type 'picture'", id="unknown-type"),
    pytest.param(_without(SAMPLE_FRAME, "seq"), "missing field 'seq'", id="missing-seq"),
    pytest.param(_without(SAMPLE_FRAME, "stream"), "missing field 'stream'", id="missing-stream"),
    pytest.param(_replace(SAMPLE_FRAME, seq="7"), "frame.seq must be an integer", id="seq-str"),
    pytest.param(_replace(SAMPLE_FRAME, seq=True), "frame.seq must be an integer", id="seq-bool"),
    pytest.param(_replace(SAMPLE_FRAME, seq=-1), "frame.seq must be an integer in", id="seq-negative"),
    pytest.param(_replace(SAMPLE_FRAME, t_capture=float("nan")), "frame.t_capture must be a finite", id="t-nan"),
    pytest.param(_replace(SAMPLE_FRAME, shape=[6]), r"frame.shape must be \(H, W\)", id="shape-1d"),
    pytest.param(_replace(SAMPLE_FRAME, shape=[6, 8, 2]), "channels must be one of", id="shape-2ch"),
    pytest.param(_replace(SAMPLE_FRAME, dtype="float32"), "frame.dtype must be one of uint8", id="dtype"),
    pytest.param(_replace(SAMPLE_FRAME, encoding="bmp"), "frame.encoding must be one of raw, jpeg, png",
                 id="encoding"),
    pytest.param(_replace(SAMPLE_FRAME, spacing=[0.2]), r"frame.spacing must be \(row_mm, col_mm\)", id="spacing"),
    pytest.param(_replace(SAMPLE_FRAME, pixels="abc"), "frame.pixels must be bytes", id="pixels-str"),
    pytest.param(_replace(SAMPLE_FRAME, pixels=b"\x00" * 10),
                 r"frame.pixels has 10 bytes, but raw uint8 \(6, 8, 3\) needs 144", id="pixels-length"),
    pytest.param(_replace(SAMPLE_FRAME, shape=[0, 8, 3], pixels=b""), "empty frame: shape", id="zero-dim"),
    pytest.param(_replace(SAMPLE_FRAME, encoding="png", pixels=b""), "empty frame: no pixels", id="no-pixels"),
    pytest.param(_replace(SAMPLE_FRAME, encoding="png", shape=[100000, 100000, 3]), "oversized frame",
                 id="compressed-oversized"),
    pytest.param(_replace(_score(), score=1.5), r"score.score must be a finite number in \[0.0, 1.0\]",
                 id="score-range"),
    pytest.param(_replace(_score(), decision=1), "score.decision must be true or false", id="decision-int"),
    pytest.param(_replace(_score(), flags=["warmup", 3]), "score.flags item must be a non-empty string",
                 id="flags-item"),
    pytest.param(_replace(_score(), window=0), "score.window must be an integer in", id="window-zero"),
    pytest.param(_replace(EndOfStream("probe1", 3, "eof", 1.0), reason=""), "end_of_stream.reason", id="eos-reason"),
    pytest.param(_wire(b"probe1", {"v": 1, "type": "heartbeat", "stream": "probe1", "role": "worker", "pid": 1,
                                   "t": 1.0, "stats": {}}),
                 "heartbeat.stream must be a process-level id", id="heartbeat-data-id"),
    pytest.param(_wire(b"_worker", {"v": 1, "type": "score", "stream": "_worker"}),
                 "missing field", id="score-missing-fields"),
    pytest.param(_replace(Heartbeat("_worker", "worker", 1, 1.0, {}), stats={"fps": "fast"}),
                 r"heartbeat.stats\['fps'\] must be a number", id="stats-value"),
    pytest.param(_replace(Heartbeat("_worker", "worker", 1, 1.0, {}), stats={b"fps": 1}),
                 "heartbeat.stats key must be a non-empty string", id="stats-bytes-key"),
    pytest.param(_replace(Status("_worker", "info", "x", 1.0), level="debug"), "status.level must be one of",
                 id="status-level"),
    pytest.param(_replace(_score(), seq=2**63), "score.seq must be an integer in", id="int-overflow"),
    pytest.param(b"probe1\x00" + b"\xd4\x05\x00", "not msgpack", id="ext-type"),
]


@pytest.mark.parametrize(("data", "match"), BAD)
def test_bad_messages_raise_one_line_protocol_errors(data, match):
    with pytest.raises(ProtocolError, match=match) as info:
        decode(data)
    assert isinstance(info.value, FetalheadError)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


KIND_OF = {"not-msgpack": "not_msgpack", "truncated": "not_msgpack", "ext-type": "not_msgpack",
           "no-separator": "no_topic", "bad-topic-characters": "no_topic", "topic-not-utf8": "no_topic",
           "not-a-map": "not_a_map", "no-version": "version", "version-2": "version", "version-str": "version",
           "unknown-type": "unknown_type", "missing-seq": "bad_field", "topic-mismatch": "bad_field",
           "dtype": "bad_field", "pixels-length": "bad_pixels", "zero-dim": "empty_frame", "no-pixels": "empty_frame",
           "compressed-oversized": "oversized"}


@pytest.mark.parametrize(("data", "kind"), [pytest.param(p.values[0], KIND_OF[p.id], id=p.id)
                                           for p in BAD if p.id in KIND_OF])
def test_each_rejection_has_a_kind_that_does_not_depend_on_its_wording(data, kind):
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.kind == kind and kind in KINDS


def test_an_oversized_message_is_of_kind_oversized():
    data = encode(SAMPLE_FRAME)
    with pytest.raises(ProtocolError) as info:
        decode(data, max_size=len(data) - 1)
    assert info.value.kind == "oversized"


def _compressed(encoding: str, shape: tuple[int, ...], pixels: bytes) -> Frame:
    return Frame("probe1", 0, 1.0, None, shape, "uint8", encoding, None, pixels)


def test_image_rejects_compressed_pixels_that_disagree_with_the_header():
    png = frame_message("probe1", 0, _gradient(8, 8, 3), encoding="png").pixels
    jpeg = frame_message("probe1", 0, _gradient(8, 8, 3), encoding="jpeg").pixels
    cases = [
        (_compressed("png", (8, 8, 3), b"not a png at all"), "pixels are not a png file"),
        (_compressed("jpeg", (8, 8, 3), png), "pixels are not a jpeg file"),
        (_compressed("png", (8, 9, 3), png), "png is 8x8, shape says 8x9"),
        (_compressed("jpeg", (16, 8, 3), jpeg), "jpeg is 8x8, shape says 16x8"),
        (_compressed("png", (8, 8), png), r"png decodes to uint8 \(8, 8, 3\), header says uint8 \(8, 8\)"),
        (_compressed("png", (8, 8, 3), png[:40]), "png does not decode"),
    ]
    for frame, match in cases:
        with pytest.raises(ProtocolError, match=match):
            frame.image()


def test_frame_message_validates_its_image():
    with pytest.raises(ProtocolError, match="image dtype must be one of uint8, got float32"):
        frame_message("probe1", 0, np.zeros((4, 4), np.float32))
    with pytest.raises(ProtocolError, match="jpeg needs 1 or 3 channels"):
        frame_message("probe1", 0, np.zeros((4, 4, 4), np.uint8), encoding="jpeg")
    with pytest.raises(ProtocolError, match="empty frame"):
        frame_message("probe1", 0, np.zeros((0, 4), np.uint8))
    with pytest.raises(ProtocolError, match="frame.stream must be a data stream id"):
        frame_message("_capture", 0, np.zeros((4, 4), np.uint8))
    with pytest.raises(ProtocolError, match=r"jpeg_quality must be in \[0, 100\]"):
        frame_message("probe1", 0, np.zeros((4, 4), np.uint8), encoding="jpeg", jpeg_quality=101)


def test_topic_and_process_ids():
    assert topic("probe1") == b"probe1\x00"
    assert process_id("worker") == "_worker" and process_id("capture", "probe1") == "_capture.probe1"
    with pytest.raises(ProtocolError, match="stream must be 1..64 characters"):
        topic("a" * 65)


# --- size cap --------------------------------------------------------------------------


def test_size_cap_is_checked_before_unpacking():
    data = encode(SAMPLE_FRAME)
    assert decode(data, max_size=len(data)) == SAMPLE_FRAME
    with pytest.raises(ProtocolError, match=f"oversized message: {len(data)} bytes, cap is {len(data) - 1}"):
        decode(data, max_size=len(data) - 1)
    assert DEFAULT_MAX_SIZE == 64 * 1024 * 1024


@pytest.mark.parametrize("body", [
    b"\xdd\xff\xff\xff\xff",  # array of 2**32 - 1 items
    b"\xdf\xff\xff\xff\xff",  # map of 2**32 - 1 pairs
    b"\xdb\xff\xff\xff\xff",  # str of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin of 4 GiB
    b"\x81\xa1v" + b"\x91" * 100_000,  # 100 000 nested arrays
])
def test_hostile_length_prefixes_allocate_nothing(body):
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decode(b"probe1\x00" + body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024


def _nested(depth: int, leaf=1):
    """``leaf`` inside ``depth`` arrays."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def test_nesting_deeper_than_the_bound_is_its_own_rejection_not_a_recursion_error():
    stream, body = _body(encode(SAMPLE_FRAME))
    # The body map is level 1: an unknown field may hold arrays down to level MAX_DEPTH.
    assert decode(_wire(stream, {**body, "future": _nested(MAX_DEPTH - 1)})) == SAMPLE_FRAME
    cases = [{**body, "future": _nested(MAX_DEPTH)},
             # Deep enough for Python's repr of the shape to overflow the stack, as msgpack allows.
             {**body, "shape": _nested(1000)}, {**body, "shape": _nested(1020)},
             {"v": 1, "type": "heartbeat", "stream": "_w", "role": "w", "pid": 1, "t": 1.0,
              "stats": {"x": _nested(900, {})}}]
    for case in cases:
        with pytest.raises(ProtocolError, match=f"nests arrays or maps deeper than {MAX_DEPTH} levels") as info:
            decode(_wire(stream if case is not cases[-1] else b"_w", case))
        assert info.value.kind == "too_deep"


@pytest.mark.parametrize("field, value", [("t_capture", 1e308), ("t_capture", -1e308), ("t_capture", -0.5),
                                          ("t_capture", MAX_TIME * 1.01), ("t_source", 1e300)])
def test_times_are_bounded_so_every_latency_stays_finite(field, value):
    expected = rf"frame.{field} must be a finite number in \[0.0, 10000000000.0\]"
    with pytest.raises(ProtocolError, match=expected) as info:
        decode(_replace(SAMPLE_FRAME, **{field: value}))
    assert info.value.kind == "bad_field"


def test_the_widest_times_still_give_finite_latencies():
    frame = decode(_replace(SAMPLE_FRAME, t_capture=0.0, t_source=MAX_TIME))
    latest = _score(t_capture=frame.t_capture, t_received=MAX_TIME, t_scored=MAX_TIME, latency=MAX_TIME)
    assert decode(encode(latest)) == latest
    assert decode(encode(_score(latency=-MAX_TIME))).latency == -MAX_TIME
    for name in ("t_received", "t_scored"):
        with pytest.raises(ProtocolError, match=f"score.{name} must be a finite number"):
            _score(**{name: -1.0})
    for msg, t in ((EndOfStream("probe1", 1, "eof", 1.0), -1.0), (Heartbeat("_worker", "worker", 1, 1.0, {}), 1e11),
                   (Status("probe1", "info", "", 1.0), 1e308)):
        with pytest.raises(ProtocolError, match=rf"{msg.TYPE}\.t must be a finite number in"):
            decode(_replace(msg, t=t))


@pytest.mark.parametrize("value", ["x" * 60_000, b"y" * 10_000_000, tuple(range(1000)), {"a": ("b" * 60_000,) * 1000}])
def test_a_huge_bad_value_costs_a_short_line(value):
    stream, body = _body(encode(SAMPLE_FRAME))
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            Frame(**{**{k: body[k] for k in ("stream", "seq", "t_capture", "t_source", "shape", "encoding",
                                              "spacing", "pixels")}, "dtype": value})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert re.match("frame.dtype must be (a non-empty string|one of uint8), got ", str(info.value))
    assert len(str(info.value)) < 120
    assert peak < 64 * 1024


# --- fuzzing ---------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = [encode(p.values[0]) for p in MESSAGES] + [
    encode(frame_message("probe1", 2, _gradient(8, 8, 3), encoding="jpeg")),
    encode(frame_message("probe1", 2, _gradient(8, 8, None), encoding="png")),
]


def _decode_fully(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> None:
    """decode, and decode the image of a frame: only ProtocolError, of a known kind, may escape."""
    try:
        msg = decode(data, max_size=max_size)
        if isinstance(msg, Frame):
            msg.image()
    except ProtocolError as exc:
        assert exc.kind in KINDS, exc.kind


def _mutate(valid: bytes, data) -> bytes:
    """``valid`` with 1 to 4 random byte flips, truncations, insertions or deletions."""
    buf = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[at] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif buf:
            del buf[at:at + data.draw(st.integers(1, 8))]
    return bytes(buf)


@FUZZ
@given(st.binary(max_size=512))
def test_decode_of_arbitrary_bytes_raises_only_protocol_errors(data):
    _decode_fully(data)
    _decode_fully(b"probe1\x00" + data)


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_decode_of_mutated_messages_raises_only_protocol_errors(valid, data):
    _decode_fully(_mutate(valid, data), max_size=data.draw(st.sampled_from([64, 1024, DEFAULT_MAX_SIZE])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_decode_of_mutated_messages_allocates_nothing_beyond_the_cap(valid, data):
    """A flipped length prefix may claim gigabytes; decoding still allocates about the message's own size."""
    buf = _mutate(valid, data)
    tracemalloc.start()
    try:
        _decode_fully(buf, max_size=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


_MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_decode_of_maps_with_wrong_field_values_raises_only_protocol_errors(valid, data):
    stream, body = _body(valid)
    name = data.draw(st.sampled_from(sorted(body)))
    body[name] = data.draw(_MSGPACK_VALUES)
    _decode_fully(_wire(stream, body))


@FUZZ
@given(score=st.floats(0, 1), seq=st.integers(0, 2**63 - 1), t=st.floats(0, MAX_TIME),
       flags=st.lists(st.sampled_from(["warmup", "gap", "future_flag"]), max_size=3))
def test_score_round_trips_for_any_valid_values(score, seq, t, flags):
    msg = _score(score=score, seq=seq, t_capture=t, flags=tuple(flags))
    assert decode(encode(msg)) == msg


def test_a_stream_setting_must_be_a_data_stream_id():
    check_stream_id(None)
    check_stream_id("probe1")
    with pytest.raises(ConfigError, match=r"^stream: '_capture' is a process id; data streams never start with '_'$"):
        check_stream_id("_capture")
    with pytest.raises(ConfigError, match=r"^stream: stream must be 1\.\.64 characters"):
        check_stream_id("a/b")
