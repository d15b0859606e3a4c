"""The paper's switch table describes the released code from the settings' own defaults.

``paper.SWITCHES`` holds, per switch, how to describe a value, never the value itself: the
"released code" column is built from the GDM/CFG dataclass defaults (the released settings), so
changing a default changes the paper text.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import yaml

from diffguard import paper
from diffguard.settings import CfgSettings, GdmSettings


def _rows(table: str) -> dict[str, str]:
    """Switch name (as typeset) -> its "released code" cell."""
    rows = {}
    for line in table.splitlines():
        if line.startswith(r"\texttt{"):
            name, code = line.split(" & ")[:2]
            rows[name.replace(r"\allowbreak{}", "")] = code
    return rows


def _name(switch: paper.Switch) -> str:
    key = paper.latex_escape(f"{switch.section}.{switch.key}" if switch.section else switch.key)
    return rf"\texttt{{{key}}}"


def test_every_switch_is_a_setting() -> None:
    fields = {
        "gdm": {f.name for f in dataclasses.fields(GdmSettings)},
        "cfg": {f.name for f in dataclasses.fields(CfgSettings)},
    }
    schema = yaml.safe_load(paper.CONFIG_SCHEMA.read_text())["properties"]
    for switch in paper.SWITCHES:
        known = fields[switch.section] if switch.section else schema
        assert switch.key in known, f"{switch.section}.{switch.key} is no setting"


# no_x0_hat and the top-level switch are described in words only
VALUED = [s for s in paper.SWITCHES if s.section and s.key != "no_x0_hat"]


@pytest.mark.parametrize("switch", VALUED, ids=lambda s: s.key)
def test_released_cell_shows_the_default(switch: paper.Switch) -> None:
    default = getattr(paper.released_settings()[switch.section], switch.key)
    cell = _rows(paper.config_switch_table({}))[_name(switch)]
    values = default if isinstance(default, tuple) else (default,)
    for value in values:
        assert paper._value(value) in cell, (switch.key, value, cell)


def test_a_changed_default_changes_the_paper_text(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _rows(paper.config_switch_table({}))
    changed = {
        "cutouts_num": 4,
        "psnr_peak": 2.0,
        "early_stop_metrics": ("psnr", "lpips"),
        "early_stop_thresholds": (40.0, -0.2),
        "forback_skip_diff": 4,
        "uncond_aux": False,
        "clip_first_inversion_step": True,
    }
    monkeypatch.setattr(paper, "GdmSettings", functools.partial(GdmSettings, **changed))
    monkeypatch.setattr(
        paper,
        "CfgSettings",
        functools.partial(
            CfgSettings, cam_cut=0.2, decode_quantize=False, uncond_aux=True, inversion_steps=5
        ),
    )
    after = _rows(paper.config_switch_table({}))
    rows = {f"{s.section}.{s.key}".lstrip("."): _name(s) for s in paper.SWITCHES}
    assert after[rows["gdm.cutouts_num"]].startswith("4 random resized crops")
    assert after[rows["gdm.psnr_peak"]] == r"2 on $[-1,1]$ images (+0.00\,dB)"
    assert after[rows["gdm.early_stop_thresholds"]] == (
        "PSNR 40 (code units) or $-$LPIPS -0.2, per image"
    )
    assert after[rows["gdm.forback_skip_diff"]] == "4: sampling starts 2 levels above the latent"
    assert after[rows["cfg.cam_cut"]] == "0.2"
    assert after[rows["cfg.inversion_steps"]].startswith("5: invert and regenerate the first 5")
    changed_keys = ("gdm.uncond_aux", "gdm.clip_first_inversion_step", "cfg.decode_quantize")
    for key in (*changed_keys, "cfg.uncond_aux"):
        assert after[rows[key]] != before[rows[key]], key
    # the untouched switches read as before
    for key in ("gdm.no_x0_hat", "cfg.inversion_variant", "take_best_over_distances"):
        assert after[rows[key]] == before[rows[key]], key


def test_top_level_fallback_is_the_schema_default() -> None:
    schema = yaml.safe_load(paper.CONFIG_SCHEMA.read_text())["properties"]
    default = schema["take_best_over_distances"]["default"]
    assert paper.schema_default("take_best_over_distances") == default
    with pytest.raises(KeyError, match="config.schema.yaml"):
        paper.schema_default("headline_experiment")  # no schema default


def test_our_additions_say_so() -> None:
    rows = _rows(paper.config_switch_table({"c": ("cfg", {"inversion_steps": 5})}))
    cell = rows[_name(next(s for s in paper.SWITCHES if s.key == "inversion_steps"))]
    assert "our addition" in cell and cell.startswith("null: invert and regenerate the whole")
    table = paper.config_switch_table({"c": ("cfg", {"inversion_steps": 5})})
    assert "& 5 (all) \\\\" in table.split("inversion")[-1].splitlines()[0]
