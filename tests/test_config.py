import json

import pytest

from lvmd.config import ConfigError, config_from_dict, config_to_dict, load_config


def test_file_then_overrides_then_preset_layering(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('name = "x"\n[loss]\npreset = "v2.2"\ntau = 0.2\n[train]\nepochs = 4\n[data]\ntrain = "d/t.npz"\n')
    cfg = load_config(f, ["train.epochs=2", "model.kind=lstm", 'loss.ramp=[{until=2,m_gap=0.01,frac=0.1}]'])
    assert cfg.name == "x" and cfg.train.epochs == 2 and cfg.model.kind == "lstm"
    assert cfg.loss.tau == 0.2               # file beats preset
    assert cfg.loss.kappa == 5e-4            # preset beats defaults
    assert len(cfg.loss.ramp) == 1 and cfg.loss.ramp[0].m_gap == 0.01
    assert cfg.data.train == str((tmp_path / "d/t.npz").resolve())  # relative to the config file


@pytest.mark.parametrize("override, names", [
    ("train.epochs=0", ["train.epochs", "0"]),
    ("model.kind=cnn", ["model.kind", "cnn", "transformer"]),
    ("train.epoch=3", ["train.epoch", "unknown", "epochs"]),
    ("loss.tau=abc", ["loss.tau", "abc", "number"]),
    ("loss.preset=v3", ["loss.preset", "v3", "v2.1"]),
    ("train.precision=fp16", ["train.precision", "bf16"]),
    ("loss.lam_min=1", ["loss.lam_min", "lam_max"]),
    ("model.nhead=3", ["model.nhead", "d_model"]),
    ("loss.ramp=[{until=5,m_gap=0.01,frac=0.1},{until=3,m_gap=0.01,frac=0.1}]", ["loss.ramp", "increasing"]),
    ("epochs", ["key=value"]),
])
def test_errors_name_the_key_value_and_what_is_allowed(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_compat_lnsp_turns_on_the_originals_last_slot_noise():
    assert load_config(None, ["compat=lnsp"]).train.last_slot_noise == 0.15
    assert load_config(None, []).train.last_slot_noise == 0.0
    assert load_config(None, ["compat=lnsp", "train.last_slot_noise=0"]).train.last_slot_noise == 0.0


def test_resolved_config_round_trips_through_json():
    cfg = load_config(None, ["loss.preset=v1", "train.epochs=3"])
    again = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg


def test_a_string_key_keeps_the_text_of_its_override():
    # TOML reads `true` and `1` as a bool and a number; loss.prev and name are strings
    cfg = load_config(None, ["loss.prev=true", "name=1", "train.threads=1"])
    assert (cfg.loss.prev, cfg.name, cfg.train.threads) == ("true", "1", 1)


def test_every_numeric_key_has_a_range():
    """Issue 20.7: no numeric key is left unbounded (an absurd value is its key's one-line error, never
    an OverflowError in SQLite or a host out of threads); a new key without a range fails here."""
    import dataclasses
    import typing

    from lvmd.config import RAMP_RANGES, RANGES, RampStage, RunConfig

    def numeric(cls, prefix=""):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                yield from numeric(hint, f"{prefix}{f.name}.")
            elif hint in (int, float):
                yield prefix + f.name

    assert sorted(numeric(RunConfig)) == sorted(RANGES)
    assert sorted(numeric(RampStage)) == sorted(RAMP_RANGES)
    for key, (low, high, _) in RANGES.items():
        assert high < 2**63 and low > -2**63, key                   # every bound fits SQLite's INTEGER
