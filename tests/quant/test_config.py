"""QuantConfig: presets, round trips, hashes, validation."""

from __future__ import annotations

import pytest

from trdq.config import QuantConfig, preset_names


def test_required_presets_exist():
    names = set(preset_names())
    for base in ("w8a8", "w4a8", "w6a6", "w4a4"):
        for suffix in ("-minmax", "-rot", "-rot-groups", "-rot-search", "-rot-groups-search", ""):
            assert base + suffix in names
    assert {"fp", "fp8", "faithful", "faithful-w4a8", "faithful-w6a6", "faithful-w4a4"} <= names
    for name in ("w6a6", "w6a6-minmax", "faithful-w6a6"):
        cfg = QuantConfig.preset(name)
        assert (cfg.weight_bits, cfg.act_bits) == (6, 6)
    assert QuantConfig.preset("w4a4-rot").act_bits == 4
    # the released algorithm with one time range differs from it in that alone
    for name in ("faithful", "faithful-w4a8"):
        one = QuantConfig.preset(name + "-1range")
        assert one == QuantConfig.preset(name).replace(name=name + "-1range", num_groups=1)


@pytest.mark.parametrize("name", preset_names())
def test_round_trip_and_hash(name, tmp_path):
    cfg = QuantConfig.preset(name)
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    assert QuantConfig.from_yaml(cfg.to_yaml()) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert QuantConfig.from_file(path).config_hash() == cfg.config_hash()


def test_ablation_chain_switches_one_component_at_a_time():
    from trdq.tools.eval_cli import ablation_chain

    chain = [QuantConfig.preset(name) for name in ablation_chain("w8a8")[:-2]]
    assert [c.name for c in chain] == [
        "w8a8-minmax", "w8a8-rot", "w8a8-rot-search", "w8a8-rot-groups-search", "w8a8"]
    assert [c.rotation for c in chain] == ["none"] + ["hadamard"] * 4
    assert [c.search for c in chain] == [False, False, True, True, True]
    # the timestep groups come after the search, which gives them something to carry
    assert [c.num_groups > 1 for c in chain] == [False, False, False, True, True]
    assert [c.cfg_wise for c in chain] == [False] * 4 + [True]
    assert len({c.config_hash() for c in chain}) == 5


@pytest.mark.parametrize("mode", ["", "-static"])
def test_the_one_group_search_differs_from_the_groups_search_only_in_groups(mode):
    one = QuantConfig.preset(f"w4a8-rot-search{mode}").to_dict()
    groups = QuantConfig.preset(f"w4a8-rot-groups-search{mode}").to_dict()
    differ = {key for key in one if one[key] != groups[key]}
    assert differ == {"name", "num_groups"} and one["num_groups"] == 1


def test_boundaries_and_validation():
    assert QuantConfig(num_groups=4).boundaries() == [250.0, 500.0, 750.0]
    assert QuantConfig(num_groups=3, group_boundaries=[100, 600]).boundaries() == [100.0, 600.0]
    with pytest.raises(ValueError):
        QuantConfig(num_groups=3, group_boundaries=[600, 100])
    with pytest.raises(ValueError):
        QuantConfig(weight_bits=3)
    with pytest.raises(ValueError, match="act_bits"):
        QuantConfig(act_bits=5)
    with pytest.raises(ValueError, match="fp8 needs"):
        QuantConfig(fp8=True, act_bits=6)
    with pytest.raises(ValueError):
        QuantConfig.from_dict({"nonsense": 1})
    with pytest.raises(ValueError, match="unknown quant preset"):
        QuantConfig.preset("w2a2")
