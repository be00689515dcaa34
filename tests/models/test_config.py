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
