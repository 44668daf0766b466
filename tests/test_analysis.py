"""Tests of affectfpn.analysis: per-level shares of the head weights, and their bar chart."""

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.analysis import layer_contributions, plot_layer_contributions
from affectfpn.errors import InputError, MissingExtraError

WIDTH = 8  # FPN width: every pyramid level is 8 features wide


def model_with(**overrides: object) -> AffectFPN:
    values: dict[str, object] = {"backbone": "resnet18", "fpn_width": WIDTH, "input_size": (32, 32)}
    values.update(overrides)
    return AffectFPN(AffectFPNConfig(**values))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> AffectFPN:
    return model_with()


def set_head(model: AffectFPN, task: str, per_level: dict[str, float]) -> None:
    """Fill the head's columns of each named level with the given value (other columns 0)."""
    head = model.heads[task]
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.zero_()
        for i, name in enumerate(("P2", "P3", "P4", "P5", "P6")):
            if name in per_level:
                head.weight[:, i * WIDTH : (i + 1) * WIDTH] = per_level[name]


def test_weight_on_one_level_gives_share_one(model: AffectFPN) -> None:
    set_head(model, "expression", {"P3": 0.7})
    shares = layer_contributions(model)
    assert shares["expression"] == {"P2": 0.0, "P3": 1.0, "P4": 0.0, "P5": 0.0}


def test_shares_follow_absolute_weights(model: AffectFPN) -> None:
    # |-3| on P5 is three times |1| on P2: negative weights count by their size
    set_head(model, "au", {"P2": 1.0, "P5": -3.0})
    assert layer_contributions(model)["au"] == pytest.approx(
        {"P2": 0.25, "P3": 0.0, "P4": 0.0, "P5": 0.75}
    )


def test_equal_weights_give_slice_fractions(model: AffectFPN) -> None:
    set_head(model, "va", dict.fromkeys(("P2", "P3", "P4", "P5"), 0.5))
    # every level is 8 of the 32 features: a fraction of 1/4 each
    assert layer_contributions(model)["va"] == pytest.approx(
        dict.fromkeys(("P2", "P3", "P4", "P5"), 0.25)
    )


def test_random_heads_sum_to_one_for_every_task(model: AffectFPN) -> None:
    torch.manual_seed(1)
    for head in model.heads.values():
        assert isinstance(head, torch.nn.Linear)
        torch.nn.init.normal_(head.weight)
    shares = layer_contributions(model)
    assert list(shares) == ["va", "expression", "au"]
    for task, values in shares.items():
        assert list(values) == ["P2", "P3", "P4", "P5"]
        assert sum(values.values()) == pytest.approx(1.0)
        head = model.heads[task]
        assert isinstance(head, torch.nn.Linear)
        weight = head.weight.detach().abs()
        by_hand = weight[:, 8:16].sum() / weight.sum()
        assert values["P3"] == pytest.approx(float(by_hand))


def test_five_levels() -> None:
    m = model_with(extra_level=True, tasks=("expression",))
    set_head(m, "expression", dict.fromkeys(("P2", "P3", "P4", "P5", "P6"), 1.0))
    assert layer_contributions(m) == {
        "expression": pytest.approx(dict.fromkeys(("P2", "P3", "P4", "P5", "P6"), 0.2))
    }
    set_head(m, "expression", {"P6": 2.0})
    assert layer_contributions(m)["expression"]["P6"] == 1.0


def test_no_neck_is_all_c5() -> None:
    m = model_with(neck="none", tasks=("va", "au"))
    assert layer_contributions(m) == {"va": {"C5": 1.0}, "au": {"C5": 1.0}}


def test_zero_head_and_wrong_input(model: AffectFPN, caplog: pytest.LogCaptureFixture) -> None:
    set_head(model, "expression", {})
    with caplog.at_level(logging.WARNING, logger="affectfpn.analysis"):
        shares = layer_contributions(model)
    assert shares["expression"] == dict.fromkeys(("P2", "P3", "P4", "P5"), 0.0)
    assert "zero weights" in caplog.text
    with pytest.raises(InputError, match="AffectFPN"):
        layer_contributions(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


SHARES = {
    "va": {"P2": 0.1, "P3": 0.2, "P4": 0.3, "P5": 0.4},
    "expression": {"P2": 0.4, "P3": 0.3, "P4": 0.2, "P5": 0.1},
    "au": {"P2": 0.25, "P3": 0.25, "P4": 0.25, "P5": 0.25},
}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    out = tmp_path / "fig4.png"
    fig = plot_layer_contributions(SHARES, out)
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size[0] > 300
        assert im.size[1] > 200
    ax = fig.axes[0]
    # one bar series per level, one bar per task, heights the shares
    assert [c.get_label() for c in ax.containers] == ["P2", "P3", "P4", "P5"]
    for container, level in zip(ax.containers, ("P2", "P3", "P4", "P5"), strict=True):
        heights = [bar.get_height() for bar in container]
        assert heights == pytest.approx([SHARES[t][level] for t in ("va", "expression", "au")])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["Valence/arousal", "Expression", "Action units"]


def test_plot_into_given_axes() -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    assert plot_layer_contributions({"expression": {"C5": 1.0}}, ax=ax) is fig
    assert len(ax.containers) == 1


def test_plot_input_and_missing_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="layer_contributions"):
        plot_layer_contributions({})
    with pytest.raises(InputError, match="numbers"):
        plot_layer_contributions({"va": {"P2": "high"}})  # type: ignore[dict-item]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    with pytest.raises(MissingExtraError, match=r"affectfpn\[plot\]"):
        plot_layer_contributions(SHARES)
