"""AffectFPN: shapes, gradients, freezing, odd sizes, features, and backbone initialisation."""

import dataclasses
import itertools
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from affectfpn import AffectFPN, AffectFPNConfig, AffectFPNOutput, ConfigError
from affectfpn.errors import InputError, OfflineError, WeightsError
from affectfpn.labels import TASKS
from affectfpn.models._fpn import FeaturePyramid

LIGHT_BACKBONES = ("resnet18", "resnet18_half", "mobilenet_v2", "mobilenet_v3_large")
#: The heavier backbones run for one task subset each (resnet34 has resnet18's blocks and widths,
#: only more of them, and its construction alone costs as much as a whole resnet18 case).
HEAVY_BACKBONES = {
    "resnet34": ("va", "au"),
    "resnet50": ("va", "expression", "au"),
    "resnet101": ("expression",),
}
NECKS = ("fpn", "none")
TASK_SUBSETS = [
    subset for k in range(1, len(TASKS) + 1) for subset in itertools.combinations(TASKS, k)
]
OUTPUT_SIZES = {"va": 2, "expression": 7, "au": 12}

MATRIX = [
    pytest.param(b, n, t, id=f"{b}-{n}-{'+'.join(t)}")
    for b in LIGHT_BACKBONES
    for n in NECKS
    for t in TASK_SUBSETS
] + [
    pytest.param(b, n, t, id=f"{b}-{n}-{'+'.join(t)}")
    for b, t in HEAVY_BACKBONES.items()
    for n in NECKS
]


def _tiny(backbone: str = "resnet18", **changes: object) -> AffectFPNConfig:
    values: dict[str, object] = {
        "backbone": backbone,
        "fpn_width": 16,
        "input_size": (64, 64),
    }
    values.update(changes)
    return AffectFPNConfig(**values)  # type: ignore[arg-type]


def _loss(out: AffectFPNOutput, n: int) -> torch.Tensor:
    """A loss that touches every present output non-linearly (as training does)."""
    terms = []
    if out.va is not None:
        terms.append(F.mse_loss(out.va, torch.rand(n, 2) * 2 - 1))
    if out.expression is not None:
        terms.append(F.cross_entropy(out.expression, torch.arange(n) % 7))
    if out.au is not None:
        terms.append(F.binary_cross_entropy_with_logits(out.au, torch.rand(n, 12).round()))
    return torch.stack(terms).sum()


def _assert_every_trainable_param_has_a_gradient(model: nn.Module) -> None:
    bad = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            bad.append(f"{name}: no gradient")
        elif not torch.isfinite(p.grad).all():
            bad.append(f"{name}: non-finite gradient")
        elif not p.grad.abs().sum() > 0:
            bad.append(f"{name}: all-zero gradient")
    assert not bad, "parameters without a useful gradient:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize(("backbone", "neck", "tasks"), MATRIX)
def test_outputs_and_gradients(backbone: str, neck: str, tasks: tuple[str, ...]) -> None:
    config = _tiny(backbone, neck=neck, tasks=tasks)
    model = AffectFPN(config).train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)

    assert isinstance(out, AffectFPNOutput)
    assert model.tasks == tasks
    assert set(model.heads) == set(tasks)
    for task in TASKS:
        value = getattr(out, task)
        if task not in tasks:
            assert value is None, f"{task} should be None for a model without it"
            continue
        assert isinstance(value, torch.Tensor)
        assert value.shape == (2, OUTPUT_SIZES[task])
        assert value.dtype == torch.float32
        assert torch.isfinite(value).all()
    if out.va is not None:
        assert out.va.abs().max() <= 1.0

    _loss(out, 2).backward()
    _assert_every_trainable_param_has_a_gradient(model)


def test_va_stays_in_range_for_extreme_inputs() -> None:
    model = AffectFPN(_tiny(tasks=("va",))).eval()
    with torch.no_grad():
        nn.init.normal_(model.heads["va"].weight, std=10.0)
        va = model(torch.randn(4, 3, 64, 64) * 1e3).va
    assert va is not None
    assert va.abs().max() <= 1.0
    assert va.abs().max() > 0.5  # the heads really produce large values, squashed by tanh


def test_custom_label_counts_size_the_heads() -> None:
    model = AffectFPN(_tiny(action_units=("AU1", "AU12", "AU25"))).eval()
    out = model(torch.randn(1, 3, 64, 64))
    assert out.au is not None
    assert out.au.shape == (1, 3)


def test_model_rejects_a_non_config() -> None:
    with pytest.raises(ConfigError, match="AffectFPNConfig"):
        AffectFPN({"backbone": "resnet18"})  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 1, 64, 64), (2, 4, 64, 64)])
def test_forward_rejects_a_wrong_shape(shape: tuple[int, ...]) -> None:
    model = AffectFPN(_tiny(backbone="mobilenet_v2")).eval()
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model(torch.zeros(shape))


def test_forward_wrong_shape_is_an_input_error() -> None:
    model = AffectFPN(_tiny(backbone="mobilenet_v2")).eval()
    with pytest.raises(InputError):
        model(torch.zeros(2, 1, 64, 64))


# ----------------------------------------------------------------------------- freezing
@pytest.mark.parametrize(
    ("backbone", "k"),
    [("resnet18", k) for k in (0, 2, 5)] + [("mobilenet_v3_large", k) for k in (1, 3, 4)],
)
def test_trainable_layers(backbone: str, k: int) -> None:
    model = AffectFPN(_tiny(backbone, trainable_layers=k)).train()
    stages = model.backbone.stages
    assert len(stages) == 5
    for i, stage in enumerate(stages):
        flags = {p.requires_grad for p in stage.parameters()}
        assert flags == {i >= 5 - k}, f"stage {i} with trainable_layers={k}"
    if k == 0:
        assert not any(p.requires_grad for p in model.backbone.parameters())
    if k == 5:
        assert all(p.requires_grad for p in model.backbone.parameters())
    # The neck and the heads always learn.
    assert model.neck is not None
    assert all(p.requires_grad for p in model.neck.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model.num_params(trainable_only=True) == trainable
    assert model.num_params() == sum(p.numel() for p in model.parameters())

    _loss(model(torch.randn(2, 3, 64, 64)), 2).backward()
    _assert_every_trainable_param_has_a_gradient(model)
    frozen_with_grad = [
        n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None
    ]
    assert not frozen_with_grad


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "mobilenet_v3_large"])
def test_frozen_bn(backbone: str) -> None:
    model = AffectFPN(_tiny(backbone, frozen_bn=True)).train()
    modules = list(model.backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in modules)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(torch.randn(2, 3, 64, 64) * 3 + 1)  # a train-mode step must not move the statistics
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    plain = AffectFPN(_tiny(backbone, frozen_bn=False))
    plain_modules = list(plain.backbone.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain_modules)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in plain_modules)


# ---------------------------------------------------------------------- any input size
@pytest.mark.parametrize(
    ("backbone", "neck", "extra_level", "size"),
    [
        ("resnet18", "fpn", False, (37, 53)),
        ("resnet18", "fpn", False, (97, 131)),
        ("resnet18", "fpn", True, (37, 53)),
        ("resnet18", "fpn", True, (16, 16)),
        ("mobilenet_v3_large", "fpn", False, (37, 53)),
        ("mobilenet_v3_large", "fpn", True, (97, 131)),
        ("mobilenet_v2", "fpn", False, (16, 16)),
        ("mobilenet_v2", "none", False, (97, 131)),
    ],
)
def test_odd_input_sizes(
    backbone: str, neck: str, extra_level: bool, size: tuple[int, int]
) -> None:
    config = _tiny(backbone, neck=neck, extra_level=extra_level, input_size=size)
    model = AffectFPN(config).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
        features = model.features(torch.randn(2, 3, *size))
    assert out.va is not None
    assert out.expression is not None
    assert out.au is not None
    assert out.va.shape == (2, 2)
    assert out.expression.shape == (2, 7)
    assert out.au.shape == (2, 12)
    assert features.shape == (2, config.feature_dim)
    assert torch.isfinite(features).all()


# ------------------------------------------------------------------------ introspection
def test_paper_parameter_count(capsys: pytest.CaptureFixture[str]) -> None:
    config = AffectFPNConfig.paper()
    model = AffectFPN(config)
    direct = sum(p.numel() for p in model.parameters())
    direct_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model.num_params() == direct
    assert model.num_params(trainable_only=True) == direct_trainable

    # The same count derived independently from torchvision and the paper's layer sizes.
    tv = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))
    width = config.fpn_width
    lateral = sum(c * width + width for c in (256, 512, 1024, 2048))
    smooth = 4 * (width * width * 9 + width)
    heads = sum(config.feature_dim * k + k for k in (2, 7, 12))
    assert direct == backbone + lateral + smooth + heads
    top3 = sum(
        p.numel() for n, p in tv.named_parameters() if n.startswith(("layer2", "layer3", "layer4"))
    )
    assert direct_trainable == top3 + lateral + smooth + heads
    with capsys.disabled():
        print(f"\nparameters of the paper's ResNet-50 F3R (4 levels): {direct:,}")


@pytest.mark.parametrize(
    ("neck", "extra_level", "names"),
    [
        ("fpn", False, ("P2", "P3", "P4", "P5")),
        ("fpn", True, ("P2", "P3", "P4", "P5", "P6")),
        ("none", False, ("C5",)),
    ],
)
def test_level_slices_partition_the_features(
    neck: str, extra_level: bool, names: tuple[str, ...]
) -> None:
    config = _tiny("resnet18", neck=neck, extra_level=extra_level, fpn_width=24)
    model = AffectFPN(config).eval()
    slices = model.level_slices
    assert tuple(slices) == names == config.level_names
    covered = []
    for s in slices.values():
        assert s.step is None
        covered.extend(range(config.feature_dim)[s])
    assert covered == list(range(config.feature_dim))  # contiguous, in order, no overlap

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.features(x)
        levels = model.levels(x)
    assert features.shape == (2, config.feature_dim)
    assert len(levels) == len(names)
    for level, s in zip(levels, slices.values(), strict=True):
        torch.testing.assert_close(features[:, s], level.mean(dim=(2, 3)), atol=1e-5, rtol=1e-4)


def test_fpn_levels_have_the_pyramid_strides() -> None:
    model = AffectFPN(_tiny("resnet18", extra_level=True, fpn_width=8)).eval()
    with torch.no_grad():
        levels = model.levels(torch.randn(1, 3, 64, 64))
    assert [tuple(level.shape[-2:]) for level in levels] == [
        (16, 16),
        (8, 8),
        (4, 4),
        (2, 2),
        (1, 1),
    ]
    assert all(level.shape[1] == 8 for level in levels)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "mobilenet_v3_large"])
@pytest.mark.parametrize("neck", NECKS)
def test_features_dim_equals_config_feature_dim(backbone: str, neck: str) -> None:
    config = _tiny(backbone, neck=neck, fpn_width=8, input_size=(32, 32))
    model = AffectFPN(config).eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, config.feature_dim)
    for head in model.heads.values():
        assert isinstance(head, nn.Linear)
        assert head.in_features == config.feature_dim


def test_head_parameters_are_exactly_the_heads() -> None:
    model = AffectFPN(_tiny(tasks=("va", "au")))
    ids = {id(p) for p in model.head_parameters()}
    assert ids == {id(p) for p in model.heads.parameters()}
    assert len(ids) == 4  # weight and bias of two heads


def test_eval_is_deterministic_and_dropout_acts_only_in_training() -> None:
    model = AffectFPN(_tiny(head_dropout=0.5)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first, second = model(x), model(x)
        for a, b in zip(first[:3], second[:3], strict=True):
            assert torch.equal(a, b)
        model.train()
        torch.manual_seed(1)
        third = model(x)
        torch.manual_seed(2)
        fourth = model(x)
    assert not torch.equal(third.expression, fourth.expression)


def test_channels_last_input_gives_the_same_output() -> None:
    model = AffectFPN(_tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model(x.contiguous(memory_format=torch.channels_last))
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    for a, b, c in zip(ref, out, out_cl, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------- backbone initialisation
def test_imagenet_weights_offline_fail_fast_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[object] = []

    def no_network(*args: object, **kwargs: object) -> socket.socket:
        calls.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored afterwards
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    with pytest.raises(OfflineError) as info:
        AffectFPN(_tiny("resnet18"), backbone_weights="imagenet")
    # Fail fast: the network was tried exactly once, no retry loop.
    assert len(calls) == 1, f"{len(calls)} connection attempts"
    message = str(info.value)
    assert "resnet18" in message
    assert "backbone_weights" in message  # the fix: a local file, or no ImageNet start
    assert str(tmp_path / "torch_hub") in message  # where to put the file by hand
    assert isinstance(info.value, WeightsError)


def _torchvision_state(name: str, seed: int = 123) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    # Make the BatchNorm statistics non-trivial, so that a wrong BN would show.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return {k: v.contiguous() for k, v in net.state_dict().items()}


def test_backbone_weights_from_a_safetensors_file(tmp_path: Path) -> None:
    state = _torchvision_state("resnet18")
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    model = AffectFPN(_tiny("resnet18"), backbone_weights=path)
    conv1 = model.backbone.stages[0][0]
    assert isinstance(conv1, nn.Conv2d)
    assert torch.equal(conv1.weight, state["conv1.weight"])
    ours = model.backbone.state_dict()
    for key, src in model.backbone.torchvision_key_map().items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(ours[key], state[src]), key
    # Also as a str path and as a plain PyTorch state dict, nested under "state_dict".
    pth = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state}, pth)
    other = AffectFPN(_tiny("resnet18"), backbone_weights=str(pth))
    assert torch.equal(other.backbone.stages[4][1].conv2.weight, state["layer4.1.conv2.weight"])


def _torchvision_maps(name: str, net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    if name.startswith("resnet"):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        maps = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = layer(x)
            maps.append(x)
        return maps
    ends = {"mobilenet_v2": (3, 6, 13, 18), "mobilenet_v3_large": (3, 6, 12, 16)}[name]
    maps = []
    for i, block in enumerate(net.features):
        x = block(x)
        if i in ends:
            maps.append(x)
    return maps


@pytest.mark.parametrize(
    ("backbone", "frozen_bn"),
    [
        ("resnet18", False),
        ("resnet18", True),
        ("mobilenet_v2", False),
        pytest.param("mobilenet_v3_large", False),
        pytest.param("mobilenet_v3_large", True),
    ],
)
def test_initialised_backbone_reproduces_torchvision(
    backbone: str, frozen_bn: bool, tmp_path: Path
) -> None:
    state = _torchvision_state(backbone)
    path = tmp_path / f"{backbone}.safetensors"
    save_file(state, str(path))
    model = AffectFPN(_tiny(backbone, frozen_bn=frozen_bn), backbone_weights=path).eval()
    net = getattr(torchvision.models, backbone)(weights=None).eval()
    net.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = _torchvision_maps(backbone, net, x)
    assert len(ours) == len(theirs) == 4
    for a, b, c in zip(ours, theirs, model.backbone.out_channels, strict=True):
        assert a.shape[1] == c
        scale = b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def test_backbone_weights_of_another_architecture_are_rejected(tmp_path: Path) -> None:
    state = _torchvision_state("mobilenet_v2")
    path = tmp_path / "mobilenet_v2.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"resnet18.*conv1\.weight"):
        AffectFPN(_tiny("resnet18"), backbone_weights=path)


def test_backbone_weights_of_the_wrong_shape_are_rejected(tmp_path: Path) -> None:
    state = _torchvision_state("resnet18")
    state["layer3.0.conv1.weight"] = torch.zeros(256, 128, 1, 1)  # 3x3 in resnet18
    path = tmp_path / "resnet18_altered.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"layer3\.0\.conv1\.weight.*\(256, 128, 1, 1\)"):
        AffectFPN(_tiny("resnet18"), backbone_weights=path)


def test_resnet34_weights_are_not_taken_for_resnet18(tmp_path: Path) -> None:
    state = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(
        WeightsError, match=r"80 tensors that torchvision's resnet18 lacks.*layer1\.2\."
    ):
        AffectFPN(_tiny("resnet18"), backbone_weights=path)


def test_backbone_weights_missing_file_or_unreadable_pth(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not 'imagenet'"):
        AffectFPN(_tiny("mobilenet_v2"), backbone_weights=tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match=r"bad\.pth"):
        AffectFPN(_tiny("mobilenet_v2"), backbone_weights=bad)


def test_damaged_backbone_safetensors_is_a_weights_error(tmp_path: Path) -> None:
    state = _torchvision_state("mobilenet_v2")
    path = tmp_path / "mobilenet_v2.safetensors"
    save_file(state, str(path))
    path.write_bytes(path.read_bytes()[: math.floor(path.stat().st_size / 2)])
    with pytest.raises(
        WeightsError, match=r"mobilenet_v2\.safetensors: not a readable safetensors"
    ):
        AffectFPN(_tiny("mobilenet_v2"), backbone_weights=path)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (12, 12)])
def test_pooled_3x3_equals_the_mean_of_the_convolution(size: tuple[int, int]) -> None:
    """One level: the window sums meet the smoothing kernel as its mean over the map would."""
    torch.manual_seed(0)
    neck = FeaturePyramid((6,), 5, extra_level=False)
    conv = neck.smooth[0]
    x = torch.randn(3, 6, *size, requires_grad=True)
    (fast,) = neck.pooled([x])
    (fast_grad,) = torch.autograd.grad(fast.square().sum(), x)
    slow = conv(neck.lateral[0](x)).mean(dim=(2, 3))
    (slow_grad,) = torch.autograd.grad(slow.square().sum(), x)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast_grad, slow_grad, atol=1e-6, rtol=1e-5)


def test_fpn_features_skip_the_neck_and_its_flops() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = AffectFPN(_tiny("resnet18", fpn_width=64, input_size=(64, 64))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), FlopCounterMode(display=False) as fused:
        features = model.features(x)
    with torch.no_grad(), FlopCounterMode(display=False) as maps:
        pooled = torch.cat([level.mean(dim=(2, 3)) for level in model.levels(x)], dim=1)
    with torch.no_grad(), FlopCounterMode(display=False) as trunk:
        model.backbone(x)
    torch.testing.assert_close(features, pooled, atol=1e-5, rtol=1e-4)
    # The maps cost the four 1x1 laterals and four 3x3 smoothings over P2..P5 (16, 8, 4, 2 px a
    # side) for 2 images; the pooled path replaces them by weighted row/column sums and products
    # with a few 3 x 3 windows: under 1 % of the trunk's FLOPs (the maps cost a third of it).
    pixels = 16**2 + 8**2 + 4**2 + 2**2
    laterals = 2 * 2 * 64 * (64 * 16**2 + 128 * 8**2 + 256 * 4**2 + 512 * 2**2)
    smoothing = 2 * 2 * 9 * 64 * 64 * pixels
    assert maps.get_total_flops() - trunk.get_total_flops() == laterals + smoothing
    neck = fused.get_total_flops() - trunk.get_total_flops()
    assert 0 < neck < 0.01 * trunk.get_total_flops()


@pytest.mark.parametrize(
    ("size", "extra_level", "layout"),
    [
        ((64, 64), False, torch.contiguous_format),
        ((64, 64), True, torch.channels_last),
        ((37, 53), False, torch.channels_last),
        ((45, 70), True, torch.contiguous_format),
    ],
)
def test_pooled_pyramid_gradients_equal_the_maps(
    size: tuple[int, int], extra_level: bool, layout: torch.memory_format
) -> None:
    """Every input and parameter gets the gradient of the full computation (maps, then means)."""
    torch.manual_seed(0)
    model = AffectFPN(_tiny("resnet18", fpn_width=8, input_size=size, extra_level=extra_level))
    model.eval()
    x = torch.randn(2, 3, *size)
    features = [
        f.detach().contiguous(memory_format=layout).requires_grad_() for f in model.backbone(x)
    ]
    assert model.neck is not None
    params = list(model.neck.parameters())
    weights = torch.randn(model.config.feature_dim)

    def grads(vectors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        loss = (torch.cat(vectors, dim=1) * weights).square().sum()
        return torch.autograd.grad(loss, [*features, *params])

    fast = model.neck.pooled(features)
    slow = [m.mean(dim=(2, 3)) for m in model.neck(features)]
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    for g_fast, g_slow in zip(grads(fast), grads(slow), strict=True):
        # float32 rounding of either order of summation, relative to the gradient's scale (the
        # lateral kernels' gradients reach a few hundred; both paths are within 2e-7 of float64)
        scale = max(1.0, float(g_slow.abs().max()))
        torch.testing.assert_close(g_fast, g_slow, atol=1e-6 * scale, rtol=1e-4)


def test_frozen_batchnorm_matches_torchvision_and_keeps_its_state_dict() -> None:
    from affectfpn.models._backbones import FrozenBatchNorm2d as Fused

    torch.manual_seed(0)
    reference, fused = FrozenBatchNorm2d(16, eps=1e-3), Fused(16, eps=1e-3)
    for name, value in reference.named_buffers():
        value.copy_(torch.rand_like(value) + (0.5 if name == "running_var" else -0.5))
    assert fused.load_state_dict(reference.state_dict()) is not None
    assert fused.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(3, 16, 5, 7, requires_grad=True)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        torch.testing.assert_close(fused(xl), reference(xl), atol=1e-6, rtol=1e-5)
        (g_fused,) = torch.autograd.grad(fused(xl).square().sum(), x)
        (g_ref,) = torch.autograd.grad(reference(xl).square().sum(), x)
        torch.testing.assert_close(g_fused, g_ref, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in fused.parameters())


def test_test_time_flip_averages_the_face_and_its_mirror_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    plain = AffectFPN(_tiny("resnet18", fpn_width=8, input_size=(32, 32))).eval()
    config = dataclasses.replace(plain.config, test_time_flip=True)
    flipped = AffectFPN(config).eval()
    flipped.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b, both = plain(x), plain(x.flip(3)), flipped(x)
        mirrored = flipped(x.flip(3))
    for task in ("va", "expression", "au"):
        expected = (getattr(a, task) + getattr(b, task)) / 2
        torch.testing.assert_close(getattr(both, task), expected, atol=1e-5, rtol=1e-4)
        # the average is the same for a face and its mirror image
        torch.testing.assert_close(
            getattr(mirrored, task), getattr(both, task), atol=1e-5, rtol=1e-4
        )
    flipped.train()
    plain.train()
    torch.manual_seed(1)
    out_flip = flipped(x)
    torch.manual_seed(1)
    out_plain = plain(x)
    assert out_flip.expression.shape == (3, 7)
    torch.testing.assert_close(out_flip.expression, out_plain.expression)  # training: no flip
    with pytest.raises(ConfigError, match="test_time_flip"):
        AffectFPNConfig(test_time_flip=1)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ resnet18_half
def test_resnet18_half_is_resnet18_at_half_width() -> None:
    """Same blocks and strides as resnet18, half the channels: a quarter of the multiply-adds."""
    from torch.utils.flop_counter import FlopCounterMode

    half = AffectFPN(_tiny("resnet18_half", neck="none", input_size=(48, 48))).eval()
    full = AffectFPN(_tiny("resnet18", neck="none", input_size=(48, 48))).eval()
    x = torch.randn(1, 3, 48, 48)
    maps = half.backbone(x)
    assert [m.shape[1] for m in maps] == [32, 64, 128, 256]
    assert [m.shape[-1] for m in maps] == [m.shape[-1] for m in full.backbone(x)]
    flops = []
    for model in (half, full):
        with FlopCounterMode(display=False) as counter:
            model.backbone(x)
        flops.append(counter.get_total_flops())
    assert 0.2 < flops[0] / flops[1] < 0.3
    # Its state dict has resnet18's layout, so torchvision's names map onto it.
    mapping = half.backbone.torchvision_key_map()
    assert mapping["stages.1.0.conv1.weight"] == "layer1.0.conv1.weight"
    assert mapping["stages.0.0.weight"] == "conv1.weight"


def test_resnet18_half_has_no_imagenet_weights() -> None:
    with pytest.raises(WeightsError, match="no ImageNet weights exist for resnet18_half"):
        AffectFPN(_tiny("resnet18_half"), backbone_weights="imagenet")


# ------------------------------------------------------------------------ BatchNorm folding
@pytest.mark.parametrize(
    ("backbone", "frozen"),
    [
        ("resnet18", False),
        ("resnet18_half", False),
        ("resnet50", True),
        ("mobilenet_v2", False),
        ("mobilenet_v3_large", False),
    ],
)
def test_fuse_batchnorm_keeps_the_outputs(backbone: str, frozen: bool) -> None:
    torch.manual_seed(0)
    model = AffectFPN(_tiny(backbone, frozen_bn=frozen, test_time_flip=True))
    # statistics that are not the identity, as after training
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
            m.running_var.uniform_(0.5, 2.0)  # type: ignore[operator]
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.train()
    fused = model.fuse_batchnorm()
    norms = (nn.BatchNorm2d, FrozenBatchNorm2d)
    assert not any(isinstance(m, norms) for m in fused.modules())
    assert any(isinstance(m, norms) for m in model.modules())  # the model itself is untouched
    assert model.training
    assert not fused.training
    x = torch.randn(3, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        want, got = model(x), fused(x)
    for task in ("va", "expression", "au"):
        torch.testing.assert_close(getattr(got, task), getattr(want, task), atol=1e-4, rtol=1e-4)
