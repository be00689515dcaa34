"""train.config: settings checked when made, naming the setting."""

import pytest

from models.errors import ConfigError
from train.config import CheckConfig, TrainConfig


def test_check_config_validation():
    with pytest.raises(ConfigError, match="window: must be >= 1, got 0"):
        CheckConfig(window=0)


@pytest.mark.parametrize(("values", "message"), [
    ({"folds": 1}, "folds: must be >= 2, got 1"), ({"fold": 5}, "fold: must be 0..4 for 5 folds, got 5"),
    ({"focal_alpha": 1.0}, "focal_alpha: must be in (0, 1), got 1.0"),
])
def test_train_config_validation(values, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**values)
    assert str(info.value) == message


def test_the_learning_rate_default_depends_on_what_is_trained():
    from train.config import SCRATCH_LEARNING_RATE, SEED_LEARNING_RATE

    assert TrainConfig().learning_rate == SEED_LEARNING_RATE == 1e-5
    assert TrainConfig(train_backbone=True).learning_rate == SCRATCH_LEARNING_RATE
    assert TrainConfig(train_backbone=True, learning_rate=3e-4).learning_rate == 3e-4
    assert TrainConfig(learning_rate=1e-2).learning_rate == 1e-2
