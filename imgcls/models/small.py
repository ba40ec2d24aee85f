"""Networks for small images (MNIST-sized to CIFAR-sized), trained from scratch."""

from __future__ import annotations

from torch import nn

from imgcls.models.base import MODELS, Classifier


def _defaults(size: int, scratch_lr: float | None = None):
    """Marks a builder with the input size it is made for and, where the recipe's default does not suit
    it, the SGD learning rate it trains well with from scratch."""

    def mark(fn):
        fn.default_size = size
        if scratch_lr is not None:
            fn.scratch_lr = scratch_lr
        return fn

    return mark


@MODELS.register("tutorial-cnn")
# Without BatchNorm this net diverges at the recipe's 0.1 on small batches (loss 1e5, then NaN). The posts'
# 0.01 is safe but slow at batch 128 (digits, 2 epochs: 30%); 0.05 learns both colour folders of the tests
# for 5 seeds at batch 8 and digits to 80% in 2 epochs, 97% in the auto 10.
@_defaults(32, scratch_lr=0.05)
def tutorial_cnn(
    *,
    num_classes: int,
    in_chans: int = 3,
    input_size: int = 32,
    pretrained: bool = False,
    drop_rate: float = 0.0,
) -> Classifier:
    """The seed posts' two-conv CNN (conv16-pool-conv32-pool-linear), for any channels and size."""
    _no_pretrained("tutorial-cnn", pretrained)
    backbone = nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    side = input_size // 4
    model = Classifier(
        backbone,
        32 * side * side,
        num_classes=num_classes,
        in_chans=in_chans,
        input_size=input_size,
        drop_rate=drop_rate,
    )
    model.cam_target = "backbone.4"  # the second conv's ReLU, at half the input size
    return model


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _group(c_in: int, c_out: int) -> nn.Sequential:
    # airbench's ConvGroup: conv, pool (cheap downsampling before the second conv), conv.
    conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    return nn.Sequential(
        conv1,
        nn.MaxPool2d(2, ceil_mode=True),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        *_conv_bn(c_out, c_out),
    )


@MODELS.register("smallnet")
@_defaults(32)
def smallnet(
    *,
    num_classes: int,
    in_chans: int = 3,
    input_size: int = 32,
    pretrained: bool = False,
    drop_rate: float = 0.0,
    width: int = 16,
) -> Classifier:
    """The default: an airbench-style conv-BN-ReLU net that keeps full resolution in its stem.

    A 3x3 stem at full size, then three groups that each halve the size (28 -> 14 -> 7 -> 4), global
    max pooling and a linear head. Channels are width x (1, 2, 4, 8): width 8 has 0.07 M parameters,
    16 has 0.29 M, 32 has 1.2 M. No downsampling stem, so 28x28 and 32x32 inputs keep their detail.
    """
    _no_pretrained("smallnet", pretrained)
    if width < 1:
        from imgcls.models.base import ModelError

        raise ModelError("smallnet width must be >= 1")
    widths = (width, 2 * width, 4 * width, 8 * width)
    backbone = nn.Sequential(
        *_conv_bn(in_chans, widths[0]),
        _group(widths[0], widths[1]),
        _group(widths[1], widths[2]),
        _group(widths[2], widths[3]),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
    )
    model = Classifier(
        backbone,
        widths[-1],
        num_classes=num_classes,
        in_chans=in_chans,
        input_size=input_size,
        drop_rate=drop_rate,
    )
    # Class-activation maps on the second group's output (stride 4: 7x7 for 28 px), fine enough to point at a
    # small part of the image (bench/cam_faithfulness.py); the first group's where that would be under 4x4.
    model.cam_target = "backbone.4" if input_size >= 16 else "backbone.3"
    return model


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        from imgcls.models.base import ModelError

        raise ModelError(
            f"{name} has no pretrained weights; drop --pretrained or pick a zoo model (imgcls models)"
        )
