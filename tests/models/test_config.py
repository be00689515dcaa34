import pytest

from models.errors import ConfigError
from models.config import ModelConfig, parse_roi
from models.settings import load


def test_defaults_are_the_seed_design():
    config = ModelConfig()
    assert config.backbone == "vgg19"
    assert config.weights == "imagenet"
    assert config.image_size == 224
    assert config.window == 8
    assert config.lstm_units == (256, 128)
    assert config.recurrent_dropout == 0.4
    assert config.dropout == 0.4
    assert config.dense_units == 64
    assert config.head_dropout == 0.3


@pytest.mark.parametrize("values, message", [
    ({"backbone": "resnet"}, "backbone: 'resnet' is not one of"),
    ({"window": 0}, "window: must be >= 1, got 0"),
    ({"dropout": 1.5}, "dropout: must be in [0, 1), got 1.5"),
    ({"image_size": "big"}, "image_size: expected an integer, got 'big'"),
    ({"lstm_units": [1]}, "lstm_units: expected 2 values, got 1"),
    ({"roi": "1,2,3"}, "roi: '1,2,3' is not 'auto', 'none' or 'x,y,w,h'"),
    ({"colour": 1}, "colour: unknown setting"),
    ({"backbone": "tiny", "image_size": 40}, "image_size: backbone tiny needs at least 43, got 40"),
    ({"window": 257}, "window: must be at most 256, got 257"),
    ({"lstm_units": [4097, 8]}, "lstm_units: must be at most 4096, got (4097, 8)"),
    ({"dense_units": 4097}, "dense_units: must be 1..4096, got 4097"),
    ({"seed": -1}, "seed: must be 0..2147483631, got -1"),
    ({"roi": "0,0,70000,10"}, "roi: '0,0,70000,10' needs x, y, w and h at most 65535"),
    ({"window": 2 ** 64}, "window: 18446744073709551616 is out of range (a 64-bit integer)"),
    ({"image_size": 1e400}, "image_size: expected an integer, got inf"),
])
def test_bad_values_are_one_line_naming_the_setting(values, message):
    with pytest.raises(ConfigError) as info:
        load(ModelConfig, "model", None, values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_roi_forms():
    assert parse_roi("auto") == "auto"
    assert parse_roi(" 10, 20,30,40") == (10, 20, 30, 40)
    assert ModelConfig(roi="1, 2, 3, 4").roi_box == (1, 2, 3, 4)
    with pytest.raises(ConfigError):
        parse_roi("0,0,0,5")


def test_the_bounds_themselves_are_allowed():
    config = ModelConfig(window=256, lstm_units=(4096, 1), dense_units=4096, seed=2**31 - 17,
                         roi="65535,0,65535,1", image_size=1024)
    assert (config.window, config.roi_box) == (256, (65535, 0, 65535, 1))


def test_a_value_of_a_megabyte_is_shown_cut_short():
    for values in ({"backbone": "v" * 1_000_000}, {"roi": "1," * 500_000}, {"k" * 1_000_000: 1},
                   {"lstm_units": ["x" * 1_000_000, 1]}):
        with pytest.raises(ConfigError) as info:
            load(ModelConfig, "model", None, values)
        assert len(str(info.value)) < 300 and "\n" not in str(info.value)


def test_weights_default_to_imagenet_but_none_for_tiny_which_has_none():
    assert ModelConfig().weights == "imagenet"
    assert ModelConfig(backbone="tiny", image_size=64).weights == "none"
    assert ModelConfig(backbone="tiny", image_size=64, weights="w.weights.h5").weights == "w.weights.h5"
