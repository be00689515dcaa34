"""models.bundle against damaged and hostile files: each is refused in one line naming the bundle and the problem."""

import json
import zipfile

import pytest

from models.bundle import load, save
from models.config import MAX_SEED, MAX_UNITS, MAX_WINDOW
from models.errors import BundleError

MEMBERS = ("bundle.json", "extractor.weights.h5", "head.weights.h5")


@pytest.fixture
def bundle_path(tmp_path, tiny_config, tiny_models):
    extractor, head = tiny_models
    return save(tmp_path / "model.fhb", tiny_config, extractor, head, threshold=0.5)


def _refused(path) -> str:
    """The one-line BundleError that loading ``path`` gives."""
    with pytest.raises(BundleError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"model bundle {path}: ") and "\n" not in message
    return message


def _data_offset(path, member) -> tuple[int, int]:
    """Where ``member``'s stored bytes start in the zip file, and how many there are."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(fh.read(2), "little"), int.from_bytes(fh.read(2), "little")
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _flip(src, dst, offset):
    data = bytearray(src.read_bytes())
    data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("member", MEMBERS)
def test_a_flipped_byte_in_a_member_names_the_member(bundle_path, tmp_path, member):
    start, size = _data_offset(bundle_path, member)
    flipped = _flip(bundle_path, tmp_path / "flipped.fhb", start + size // 2)
    assert f"{member} is damaged, it cannot be unpacked (Bad CRC-32" in _refused(flipped)


def test_a_flipped_byte_anywhere_loads_or_is_refused_in_one_line(bundle_path, tmp_path):
    size = bundle_path.stat().st_size
    refused = 0
    for offset in range(7, size, size // 23):
        flipped = _flip(bundle_path, tmp_path / f"flipped{offset}.fhb", offset)
        try:
            load(flipped)
        except BundleError as exc:
            assert str(exc).startswith(f"model bundle {flipped}: ") and "\n" not in str(exc)
            refused += 1
    # Only a few bytes (timestamps, attributes) can change unnoticed.
    assert refused >= 20


def test_a_corrupt_compressed_member_is_one_line(bundle_path, tmp_path):
    deflated = tmp_path / "deflated.fhb"
    with zipfile.ZipFile(bundle_path) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
    start, _ = _data_offset(deflated, "head.weights.h5")
    data = bytearray(deflated.read_bytes())
    data[start + 10:start + 60] = b"\xff" * 50
    deflated.write_bytes(bytes(data))
    message = _refused(deflated)
    assert "head.weights.h5 is damaged, it cannot be unpacked (Error -3 while decompressing data" in message


def _with_json(src, dst, text: str):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, text if item.filename == "bundle.json" else zin.read(item.filename))
    return dst


def _meta(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("bundle.json"))


@pytest.mark.parametrize("depth", [100_000, 40])
def test_deeply_nested_json_is_one_line(bundle_path, tmp_path, depth):
    body = json.dumps(_meta(bundle_path))
    deep = body[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    message = _refused(_with_json(bundle_path, tmp_path / "deep.fhb", deep))
    assert message.endswith("bundle.json is nested more than 32 levels deep")


def test_an_integer_of_5000_digits_is_not_valid_json(bundle_path, tmp_path):
    body = json.dumps(_meta(bundle_path))
    huge = body[:-1] + ', "x": ' + "9" * 5000 + "}"
    assert _refused(_with_json(bundle_path, tmp_path / "huge.fhb", huge)).endswith("bundle.json is not valid JSON")


@pytest.mark.parametrize(("change", "expected"), [
    ({"window": 1e6}, f"window: must be at most {MAX_WINDOW}, got 1000000"),
    ({"window": 10 ** 30}, "window: 1000000000000000000000000000000 is out of range (a 64-bit integer)"),
    ({"window": float("inf")}, "window: expected an integer, got inf"),
    ({"lstm_units": [10 ** 6, 8]}, f"lstm_units: must be at most {MAX_UNITS}, got (1000000, 8)"),
    ({"dense_units": 10 ** 6}, f"dense_units: must be 1..{MAX_UNITS}, got 1000000"),
    ({"image_size": 10 ** 6}, "image_size: must be 32..1024, got 1000000"),
    ({"roi": "0,0,1000000,5"}, "roi: '0,0,1000000,5' needs x, y, w and h at most 65535"),
    ({"seed": 2 ** 40}, f"seed: must be 0..{MAX_SEED}, got 1099511627776"),
    ({"seed": -1}, f"seed: must be 0..{MAX_SEED}, got -1"),
    ({"roi_threshold": 10 ** 9}, "roi_threshold: must be 0..255, got 1000000000"),
    ({"dropout": float("nan")}, "dropout: must be in [0, 1), got nan"),
    ({"backbone": "x" * 1_000_000}, "backbone: 'xxxxxxxx"),
    ({"x" * 100_000: 1}, "unknown setting"),
])
def test_every_model_setting_a_bundle_carries_is_bounded(bundle_path, tmp_path, change, expected):
    meta = _meta(bundle_path)
    meta["config"].update(change)
    message = _refused(_with_json(bundle_path, tmp_path / "odd.fhb", json.dumps(meta)))
    assert "bad config (model." not in message and "bad config (" in message and expected in message
    assert len(message) < 400


def test_a_class_name_longer_than_64_characters_is_refused(bundle_path, tmp_path):
    meta = _meta(bundle_path)
    meta["class_names"] = ["Head", "N" * 500_000]
    message = _refused(_with_json(bundle_path, tmp_path / "names.fhb", json.dumps(meta)))
    assert "class_names must be two class names of 1 to 64 characters, got ['Head', 'NNN" in message
    assert len(message) < 300


def test_the_command_line_reports_a_damaged_bundle_in_one_line(bundle_path, tmp_path, capsys):
    from tools.commands.model import main

    start, size = _data_offset(bundle_path, "extractor.weights.h5")
    flipped = _flip(bundle_path, tmp_path / "flipped.fhb", start + size // 3)
    assert main(["export", str(flipped), str(tmp_path / "out.keras")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"fetalhead: error: model bundle {flipped}: extractor.weights.h5 is damaged, it cannot be "
                   "unpacked (Bad CRC-32 for file 'extractor.weights.h5')")
