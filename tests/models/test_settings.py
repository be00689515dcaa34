"""The generic settings loader: TOML tables, overrides, coercion and one-line errors, on small dataclasses."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from models.config import ModelConfig
from models.errors import ConfigError
from models.settings import check, from_mapping, load, read_toml, setting, to_dict, to_toml


@dataclasses.dataclass(frozen=True)
class Probe:
    name: str = setting("probe", "a name")
    mode: typing.Literal["live", "lossless"] = setting("live", "a choice")
    rate: float | None = setting(None, "an optional number", shown="the source's own")
    sizes: tuple[int, ...] = setting((1, 2), "a list")
    on: bool = setting(False, "a switch", flag="switch")
    folder: Path | None = setting(None, "a path")

    def __post_init__(self) -> None:
        check(self.rate is None or self.rate > 0, f"rate: must be > 0, got {self.rate}")


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nbackbone = "tiny"\nimage-size = 96\nlstm_units = [32, 16]\n')
    config = load(ModelConfig, "model", path, {"window": 4, "image_size": None})
    assert (config.backbone, config.image_size, config.window, config.lstm_units) == ("tiny", 96, 4, (32, 16))


def test_bad_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(ModelConfig, "model", path)
    with pytest.raises(ConfigError, match="not found"):
        load(ModelConfig, "model", tmp_path / "missing.toml")


def test_values_are_coerced_to_each_fields_type():
    probe = from_mapping(Probe, {"mode": "lossless", "rate": 25, "sizes": "3, 4,5", "on": "yes", "folder": "a/b"})
    assert probe == Probe(mode="lossless", rate=25.0, sizes=(3, 4, 5), on=True, folder=Path("a/b"))
    assert from_mapping(Probe, {"rate": None}).rate is None


@pytest.mark.parametrize("values, message", [
    ({"mode": "fast"}, "probe.mode: 'fast' is not one of 'live', 'lossless'"),
    ({"rate": "quick"}, "probe.rate: expected a number, got 'quick'"),
    ({"sizes": [1, "x"]}, "probe.sizes: expected an integer, got 'x'"),
    ({"on": "perhaps"}, "probe.on: expected true or false, got 'perhaps'"),
    ({"rate": -1}, "probe.rate: must be > 0, got -1.0"),
    ({"colour": 1}, "probe.colour: unknown setting (known: folder, mode, name, on, rate, sizes)"),
])
def test_a_bad_value_is_one_line_naming_its_table_and_field(values, message):
    with pytest.raises(ConfigError) as info:
        load(Probe, "probe", None, values)
    assert str(info.value) == message


def test_a_table_that_is_not_a_table_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('probe = 3\n')
    with pytest.raises(ConfigError, match=r"\[probe\] must be a table"):
        load(Probe, "probe", path)


def test_to_toml_writes_what_load_reads_back(tmp_path):
    probe = Probe(name='say "hi"', mode="lossless", rate=2.5, sizes=(7,), on=True, folder=Path("x"))
    path = tmp_path / "out.toml"
    path.write_text(to_toml({"probe": to_dict(probe)}))
    assert load(Probe, "probe", path) == probe
    assert read_toml(path)["probe"]["folder"] == "x"


def test_setting_keeps_its_help_and_command_line_name():
    fields = {f.name: f for f in dataclasses.fields(Probe)}
    assert fields["on"].metadata == {"help": "a switch", "flag": "switch", "shown": None}
    assert fields["rate"].metadata["shown"] == "the source's own"
