"""Deformable convolutions for YOLACT++'s backbone, on :func:`torchvision.ops.deform_conv2d`.

A deformable convolution (Dai et al. 2017) samples its ``kh x kw`` taps not on the fixed grid but
at positions shifted by offsets that a small convolution predicts from the input, so the receptive
field can follow the shape of an object; the modulated variant (DCNv2, Zhu et al. 2019) also
predicts a weight per tap. YOLACT++ (Bolya et al. 2020) replaces the 3x3 convolutions of some
ResNet blocks in stages C3 to C5 by such convolutions, every third block.

Here a deformable convolution is built *from* an existing convolution: it keeps that
convolution's weight and bias, and its offset convolution starts at zero with a modulation of
``2 * sigmoid(0) = 1``, so at initialisation it computes exactly what the convolution computed and
a pretrained ResNet stays the same network until training moves the offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = ["DeformableConv2d", "make_deformable"]

#: ResNet stages by their C2..C5 name (the stride-4 to stride-32 outputs) and torchvision attribute.
STAGE_LAYERS: dict[int, str] = {2: "layer1", 3: "layer2", 4: "layer3", 5: "layer4"}


class DeformableConv2d(nn.Module):
    """A (modulated) deformable 2-D convolution that starts out as a plain convolution.

    ``weight`` and ``bias`` have the shapes and names of :class:`torch.nn.Conv2d`'s, so a state
    dict of the plain convolution loads into it (the offset convolution aside). ``offset_conv``
    predicts, per output pixel, ``2 * kh * kw`` offsets (``dy, dx`` per tap, taps row by row, as
    :func:`~torchvision.ops.deform_conv2d` reads them) and, when ``modulated``, ``kh * kw``
    modulation logits ``m`` turned into weights ``2 * sigmoid(m)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        modulated: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        template = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                             groups, bias, device=device, dtype=dtype)  # fmt: skip
        self._adopt(template, modulated)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, modulated: bool = True) -> DeformableConv2d:
        """A deformable convolution that computes what ``conv`` computes, until trained.

        It takes over ``conv``'s weight and bias parameters themselves (not copies), stride,
        padding, dilation and groups; its offset convolution is on ``conv``'s device and dtype.

        Raises:
            ValueError: if ``conv`` pads by a mode other than zeros or by a string ("same"),
                which :func:`~torchvision.ops.deform_conv2d` cannot reproduce.
        """
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "DeformableConv2d.from_conv needs a convolution with explicit zero padding, got "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._adopt(conv, modulated)
        return module

    def _adopt(self, conv: nn.Conv2d, modulated: bool) -> None:
        """Take ``conv``'s parameters and geometry, and add the zero offset convolution."""
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size: tuple[int, int] = tuple(conv.kernel_size)  # type: ignore[assignment]
        self.stride: tuple[int, int] = tuple(conv.stride)  # type: ignore[assignment]
        self.padding: tuple[int, int] = tuple(conv.padding)  # type: ignore[assignment]
        self.dilation: tuple[int, int] = tuple(conv.dilation)  # type: ignore[assignment]
        self.groups = conv.groups
        self.modulated = modulated
        self.weight = conv.weight
        self.register_parameter("bias", conv.bias)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset_conv = nn.Conv2d(
            conv.in_channels,
            (3 if modulated else 2) * taps,
            self.kernel_size,  # type: ignore[arg-type]
            self.stride,  # type: ignore[arg-type]
            self.padding,  # type: ignore[arg-type]
            self.dilation,  # type: ignore[arg-type]
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with taps moved by the predicted offsets (and weighted, if modulated)."""
        predicted = self.offset_conv(x)
        taps = self.kernel_size[0] * self.kernel_size[1]
        offset, mask = predicted[:, : 2 * taps], None
        if self.modulated:
            mask = 2.0 * torch.sigmoid(predicted[:, 2 * taps :])
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, mask=mask)  # fmt: skip

    def extra_repr(self) -> str:
        """The geometry, as :class:`torch.nn.Conv2d` prints it, plus ``modulated``."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}, modulated={self.modulated}"
        )


def make_deformable(
    resnet: nn.Module,
    stages: Sequence[int] = (3, 4, 5),
    interval: int = 3,
    *,
    modulated: bool = True,
) -> int:
    """Make the 3x3 convolution of every ``interval``-th block of ``stages`` deformable, in place.

    ``resnet`` is a torchvision ResNet (or anything with its ``layer1`` to ``layer4``, such as
    the body of a detection backbone), stages named C2 to C5 (``layer1`` to ``layer4``). Blocks
    are counted forwards from each stage's first block: blocks ``0, interval, 2 * interval, ...``
    become deformable, so every listed stage gets at least one, the first, which is also the
    block that changes resolution and most needs to adapt its sampling. YOLACT++ uses stages
    3 to 5 and interval 3 (ResNet-50: blocks 0 and 3 of C3 and C4, block 0 of C5); interval 1
    makes every block deformable.

    The convolution replaced is ``conv2`` in both block types: a Bottleneck's only 3x3, and a
    BasicBlock's second 3x3, whose offsets are then predicted from the block's own features
    (after ``conv1``) rather than from the block input, as in the Bottleneck. Call it after
    loading pretrained weights: the new offset convolutions are not in a plain ResNet's state
    dict. Blocks already deformable are left as they are (and not counted).

    Returns:
        How many convolutions were replaced.

    Raises:
        ValueError: for a stage outside 2..5, an ``interval`` below 1, or a model without
            ResNet stages.
    """
    bad = [stage for stage in stages if stage not in STAGE_LAYERS]
    if bad:
        raise ValueError(f"ResNet stages are 2 to 5 (C2..C5, layer1..layer4), got {bad}")
    if interval < 1:
        raise ValueError(f"interval must be at least 1 (1: every block), got {interval}")
    layers: list[tuple[str, nn.Sequential]] = []
    for stage in sorted(set(stages)):
        layer = getattr(resnet, STAGE_LAYERS[stage], None)
        if not isinstance(layer, nn.Sequential):
            raise ValueError(
                f"make_deformable needs a torchvision-style ResNet: {type(resnet).__name__} has "
                f"no {STAGE_LAYERS[stage]} (stage {stage}) of residual blocks"
            )
        layers.append((STAGE_LAYERS[stage], layer))
    chosen = [(name, block) for name, layer in layers for block in list(layer)[::interval]]
    for name, block in chosen:  # all checked before any is replaced
        conv = getattr(block, "conv2", None)
        if not isinstance(conv, DeformableConv2d) and not (
            isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (3, 3)
        ):
            raise ValueError(
                f"make_deformable expects ResNet blocks with a 3x3 conv2, found "
                f"{type(block).__name__} in {name}"
            )
    replaced = 0
    for _, block in chosen:
        if not isinstance(block.conv2, DeformableConv2d):
            block.conv2 = DeformableConv2d.from_conv(block.conv2, modulated=modulated)
            replaced += 1
    return replaced
