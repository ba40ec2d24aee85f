from pathlib import Path

import pytest

from imgcls import config
from imgcls.config import Config, ConfigError


def test_defaults_round_trip_through_yaml(tmp_path: Path):
    cfg = config.load(None, {"optim.lr": 0.05, "data.name": "digits", "train.epochs": 3})
    config.save(cfg, tmp_path / "c.yaml")
    again = config.load(tmp_path / "c.yaml")
    assert again == cfg
    assert again.optim.lr == 0.05 and again.data.name == "digits" and again.train.epochs == 3


def test_yaml_then_overrides_take_precedence(tmp_path: Path):
    (tmp_path / "run.yaml").write_text("optim:\n  lr: 0.3\n  name: adamw\ntrain:\n  epochs: 7\n")
    cfg = config.load(tmp_path / "run.yaml", {"optim.lr": 0.01})
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.epochs) == ("adamw", 0.01, 7)


def test_override_strings_are_typed():
    parsed = config.parse_overrides(
        ["optim.lr=1e-3", "train.amp=off", "data.image_size=null", "log.tensorboard=true"]
    )
    cfg = config.load(None, parsed)
    assert (
        cfg.optim.lr == 0.001
        and cfg.train.amp == "off"
        and cfg.data.image_size is None
        and cfg.log.tensorboard is True
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lrr": 0.1}, "Did you mean lr"),
        ({"trian.epochs": 1}, "Did you mean train"),
        ({"optim.name": "sgdd"}, "Did you mean 'sgd'"),
        ({"train.epochs": "ten"}, "train.epochs must be int"),
        ({"train.epochs": 2.5}, "train.epochs must be int"),
        ({"train.epochs": 0}, "train.epochs must be >= 1"),
        ({"data.val_split": 1.5}, "data.val_split must be in"),
        ({"log.tensorboard": "maybe"}, "log.tensorboard must be bool"),
        ({"train.device": "tpu"}, "train.device must be"),
        ({"optim.muon_lr": 0}, "optim.muon_lr must be > 0"),
        ({"optim.muon_momentum": 1}, r"optim.muon_momentum must be in \[0, 1\)"),
    ],
)
def test_bad_values_fail_with_a_clear_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, overrides)


def test_bad_yaml_file(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(tmp_path / "list.yaml")


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        config.parse_overrides(["optim.lr"])


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().train.epochs = 3  # type: ignore[misc]


def test_shipped_configs_load():
    for path in Path(__file__).parents[1].glob("configs/*.yaml"):
        config.load(path)


def test_new_keys_are_checked():
    cfg = config.load(None, {"optim.lr": "auto", "model.freeze": "2", "train.patience": 3})
    assert (cfg.optim.lr, cfg.model.freeze, cfg.train.patience) == ("auto", "2", 3)
    with pytest.raises(ConfigError, match="optim.lr must be float or one of auto"):
        config.load(None, {"optim.lr": "fast"})
    with pytest.raises(ConfigError, match="model.freeze must be auto, none, backbone"):
        config.load(None, {"model.freeze": "most"})
    with pytest.raises(ConfigError, match="train.checkpoint_every must be >= 0"):
        config.load(None, {"train.checkpoint_every": -1})


def test_a_launch_record_in_config_yaml_is_informative_only(tmp_path: Path):
    config.save(Config(), tmp_path / "c.yaml", {"world_size": 2, "batch_size_per_rank": 64})
    assert "world_size: 2" in (tmp_path / "c.yaml").read_text()
    assert config.load(tmp_path / "c.yaml") == Config()
