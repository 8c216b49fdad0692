"""Deformable convolutions: the replaced conv at initialisation, then free to move their taps."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import Bottleneck, ResNet

from fieldseg.models.deformable import DeformableConv2d, make_deformable


def _conv(stride: int = 1, bias: bool = True, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(
        4, 6, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=bias
    )


def _deformable_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, DeformableConv2d)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("modulated", [True, False])
def test_from_conv_computes_the_conv_at_init(stride: int, bias: bool, modulated: bool) -> None:
    conv = _conv(stride, bias)
    deformable = DeformableConv2d.from_conv(conv, modulated=modulated)
    x = torch.randn(2, 4, 9, 11)
    torch.testing.assert_close(deformable(x), conv(x), atol=1e-5, rtol=0)
    assert deformable.weight is conv.weight and deformable.bias is conv.bias
    assert deformable.offset_conv.out_channels == (27 if modulated else 18)
    assert deformable.offset_conv.stride == (stride, stride)


def test_from_conv_keeps_dilation_and_groups() -> None:
    conv = _conv(dilation=2, groups=2)
    deformable = DeformableConv2d.from_conv(conv)
    x = torch.randn(1, 4, 10, 10)
    torch.testing.assert_close(deformable(x), conv(x), atol=1e-5, rtol=0)


def test_weight_gradient_matches_the_conv_and_reaches_the_offsets() -> None:
    conv = _conv()
    deformable = DeformableConv2d.from_conv(conv)
    x = torch.randn(1, 4, 8, 8)
    (conv_grad,) = torch.autograd.grad(conv(x).square().sum(), conv.weight)
    deformable(x).square().sum().backward()
    torch.testing.assert_close(deformable.weight.grad, conv_grad, atol=1e-4, rtol=1e-5)
    # zero offsets still get gradients (the input's slope, and the modulation's)
    assert deformable.offset_conv.weight.grad.abs().sum() > 0
    assert deformable.offset_conv.bias.grad[:18].abs().sum() > 0
    assert deformable.offset_conv.bias.grad[18:].abs().sum() > 0


def test_a_whole_pixel_offset_shifts_the_input() -> None:
    conv = _conv()
    deformable = DeformableConv2d.from_conv(conv, modulated=False)
    with torch.no_grad():  # channels are (dy, dx) per tap: dx = 1 everywhere samples x + 1
        deformable.offset_conv.bias[1::2] = 1.0
    x = torch.randn(1, 4, 8, 8)
    # tap (i, j) of output (y, x) reads x[y + i - 1, x + j]: one less pad left, one more right
    expected = F.conv2d(F.pad(x, (0, 2, 1, 1)), conv.weight, conv.bias)
    torch.testing.assert_close(deformable(x), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(deformable(x), conv(x), atol=1e-2)


def test_modulation_scales_every_tap() -> None:
    conv = _conv()
    deformable = DeformableConv2d.from_conv(conv)
    with torch.no_grad():  # 2 * sigmoid(log 3) = 1.5
        deformable.offset_conv.bias[18:] = torch.log(torch.tensor(3.0))
    x = torch.randn(1, 4, 8, 8)
    bias = conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(deformable(x) - bias, 1.5 * (conv(x) - bias), atol=1e-5, rtol=0)


def test_from_conv_rejects_padding_it_cannot_reproduce() -> None:
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        DeformableConv2d.from_conv(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding='same'"):
        DeformableConv2d.from_conv(nn.Conv2d(2, 2, 3, padding="same"))


def test_constructor_builds_a_conv_shaped_module() -> None:
    module = DeformableConv2d(4, 8, 3, stride=2, padding=1, bias=False, modulated=False)
    assert module.weight.shape == (8, 4, 3, 3) and module.bias is None
    assert module(torch.randn(1, 4, 8, 8)).shape == (1, 8, 4, 4)
    assert set(module.state_dict()) == {"weight", "offset_conv.weight", "offset_conv.bias"}


@pytest.mark.parametrize(
    ("build", "args", "names"),
    [
        (resnet18, (), ["layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]),
        (resnet50, ((3, 4, 5), 3), ["layer2.0.conv2", "layer2.3.conv2", "layer3.0.conv2",
                                    "layer3.3.conv2", "layer4.0.conv2"]),
    ],
)  # fmt: skip
def test_yolact_plus_plus_layout_is_unchanged_at_init(
    build: Callable[..., nn.Module], args: tuple[object, ...], names: list[str]
) -> None:
    torch.manual_seed(0)
    model = build(weights=None).eval().double()  # float64: no summation-order noise
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        assert make_deformable(model, *args) == len(names)
        after = model(x)
    assert _deformable_names(model) == names
    torch.testing.assert_close(after, before, atol=1e-9, rtol=0)


def test_interval_one_replaces_every_block_once() -> None:
    model = resnet18(weights=None)
    assert make_deformable(model, (2, 3, 4, 5), 1, modulated=False) == 8
    assert make_deformable(model, (2, 3, 4, 5), 1) == 0  # already deformable: left as they are
    assert all(not model.get_submodule(name).modulated for name in _deformable_names(model))
    small_resnet50 = ResNet(Bottleneck, [1, 1, 1, 3])
    assert make_deformable(small_resnet50, [5], 2) == 2
    assert _deformable_names(small_resnet50) == ["layer4.0.conv2", "layer4.2.conv2"]


def test_bad_arguments_raise() -> None:
    model = resnet18(weights=None)
    with pytest.raises(ValueError, match=r"stages are 2 to 5.*\[1\]"):
        make_deformable(model, (1, 3))
    with pytest.raises(ValueError, match=r"stages are 2 to 5.*\[6\]"):
        make_deformable(model, (6,))
    with pytest.raises(ValueError, match="interval must be at least 1"):
        make_deformable(model, (3,), 0)
    with pytest.raises(ValueError, match="no layer2"):
        make_deformable(nn.Sequential(nn.Conv2d(3, 3, 3)), (3,))
    assert _deformable_names(model) == []


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    make_deformable(model, (4, 5), 1)
    with torch.no_grad():  # move the offsets so that the loaded values matter
        for name in _deformable_names(model):
            model.get_submodule(name).offset_conv.weight.normal_(0, 0.05)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    copy = resnet18(weights=None).eval()
    make_deformable(copy, (4, 5), 1)
    copy.load_state_dict(torch.load(buffer))
    assert "layer3.0.conv2.offset_conv.weight" in copy.state_dict()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_from_conv_on_cuda_computes_the_conv() -> None:
    conv = _conv(stride=2).cuda()
    deformable = DeformableConv2d.from_conv(conv)
    assert deformable.offset_conv.weight.device.type == "cuda"
    x = torch.randn(2, 4, 9, 11, device="cuda")
    torch.testing.assert_close(deformable(x), conv(x), atol=1e-4, rtol=1e-4)
