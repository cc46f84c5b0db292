"""ResUNet-18: a ResNet-18 encoder, a U-Net decoder and a jigsaw classification head.

The encoder returns its skip features; the decoder turns them into a one-channel
foreground logit at full resolution; the jigsaw head classifies which permutation of
the puzzle pool was applied (the self-supervised task of the self-loop method).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .config_checks import config_type_problems, is_real
from .instances import INSTANCE_OUTPUTS, aux_channels
from .jigsaw import ROTATIONS
from .seeds import check_seed

#: Sides of the network input must be multiples of this (the encoder's total stride).
STRIDE = 32
#: Jigsaw heads: see :class:`ModelConfig`.
JIGSAW_HEADS = ("slots", "gap")
#: Decoders: see :class:`ModelConfig` and :class:`UNetDecoder`.
DECODERS = ("tapered", "matched")
#: Sane bounds of :class:`ModelConfig` fields (the pool limits are those of
#: :func:`.jigsaw.permutation_pool`; 256 channels is a network 16 times the real ResUNet-18).
WIDTH_RANGE = (4, 256)
POOL_RANGE = (2, 1000)
IN_CHANNELS_RANGE = (1, 16)
#: Bounds of :attr:`ModelConfig.work_size` (the smallest is one pseudo-label patch).
WORK_SIZE_RANGE = (96, 8192)
#: The largest :attr:`ModelConfig.selfloop_lr` (steps of 0.1 wreck a trained encoder).
MAX_SELFLOOP_LR = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`ResUNet`.

    Parameters
    ----------
    in_channels
        Input channels (3: grayscale and RGBA images are converted to RGB first).
    width
        Channels of the first encoder stage; 64 is the real ResUNet-18, smaller values
        give a thinner network for fast tests.
    num_permutations
        Classes of the jigsaw head (K, the size of the permutation pool).
    dropout
        Dropout probability in the decoder (used by MC dropout); 0 disables it.
    norm_mean, norm_std
        Per-channel normalisation applied to inputs in [0, 1].
    jigsaw_head
        ``slots`` (pool the deepest feature to the 3x3 tile layout, flatten, linear: it
        keeps where each tile's evidence is, and learned faster in our measurements) or
        ``gap`` (global average pool, then linear: the paper's head, and that of
        checkpoints written before the choice existed).
    jigsaw_rotation
        How puzzle tiles are rotated, one of :data:`.jigsaw.ROTATIONS`; the jigsaw task
        the model was (or will be) trained on, and what pseudo-labelling uses.
    decoder
        ``tapered`` (outputs ``4w, 2w, w, w/2`` channels at strides 16, 8, 4, 2 and
        ``w/4`` at full resolution: 256/128/64/32/16 for the real network, the common
        U-Net decoder of a ResNet-18 encoder) or ``matched`` (each block as wide as its
        skip feature, ``4w, 2w, w, w`` and ``w/2`` at full resolution: the decoder of
        checkpoints written before the choice existed). ``tapered`` does about a fifth
        of the decoder arithmetic at the two finest scales, where most of it is (see
        ``benchmarks/bench_pseudolabel.py``).
    work_size
        None (default): the model sees images at their own pixel size. An integer: the
        model works on images resized so that their longer side has this many pixels
        (for photographs with no fixed scale, such as dermoscopy); pseudo-labelling,
        training and the jigsaw resize each image to it and put the outputs back at the
        image's own size (:mod:`.work_size`).
    selfloop_lr
        The step size of the self-loop encoder updates that suits this model, chosen on
        validation images (:mod:`.step_size`); pseudo-labelling uses it unless a step is
        given. None (default): no step was chosen, and the engine's default applies. Not
        part of the network: :meth:`same_network` ignores it.
    instance_output
        What the decoder predicts besides the foreground, so that touching nuclei come out
        as separate objects (:data:`.instances.INSTANCE_OUTPUTS`): ``none`` (a binary
        model, and every checkpoint written before the choice existed), ``contour`` (each
        nucleus' boundary) or ``distance`` (each nucleus' normalised distance to its
        boundary). A second output channel of the decoder's head.
    instance_marker
        The marker threshold of the watershed that makes instances from the maps
        (:class:`.instances.Instancer`), chosen on validation images; None: its default.
    instance_min_fraction
        Objects of the watershed smaller than this fraction of the median object area
        are dropped (:attr:`.instances.Instancer.min_fraction`), chosen on validation
        images; None: its default.
    """

    in_channels: int = 3
    width: int = 64
    num_permutations: int = 100
    dropout: float = 0.2
    norm_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    norm_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    jigsaw_head: str = "slots"
    jigsaw_rotation: str = "none"
    decoder: str = "tapered"
    work_size: int | None = None
    selfloop_lr: float | None = None
    instance_output: str = "none"
    instance_marker: float | None = None
    instance_min_fraction: float | None = None

    def __post_init__(self) -> None:
        # Types first (a checkpoint's config is untrusted input): 8.0, "8" or True are not
        # widths, and the ranges below keep the network a sane size before anything is built.
        problems = config_type_problems(self)
        if problems:
            raise InputError("invalid model config: " + "; ".join(problems))
        for name, (lo, hi) in (
            ("in_channels", IN_CHANNELS_RANGE),
            ("width", WIDTH_RANGE),
            ("num_permutations", POOL_RANGE),
        ):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise InputError(f"{name.replace('_', ' ')} must be between {lo} and {hi}, got {v}")
        if self.jigsaw_head not in JIGSAW_HEADS:
            raise InputError(
                f"jigsaw head must be one of {', '.join(JIGSAW_HEADS)}, got {self.jigsaw_head!r}"
            )
        if self.jigsaw_rotation not in ROTATIONS:
            raise InputError(
                f"jigsaw rotation must be one of {', '.join(ROTATIONS)}, got {self.jigsaw_rotation!r}"
            )
        if self.decoder not in DECODERS:
            raise InputError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.instance_output not in INSTANCE_OUTPUTS:
            raise InputError(
                f"instance output must be one of {', '.join(INSTANCE_OUTPUTS)}, "
                f"got {self.instance_output!r}"
            )
        if self.instance_marker is not None and not 0.0 < self.instance_marker < 1.0:
            raise InputError(
                f"instance marker must be None or in (0, 1), got {self.instance_marker:g}"
            )
        if self.instance_min_fraction is not None and not 0.0 <= self.instance_min_fraction < 1.0:
            raise InputError(
                "instance min fraction must be None or in [0, 1), "
                f"got {self.instance_min_fraction:g}"
            )
        lo, hi = WORK_SIZE_RANGE
        if self.work_size is not None and not lo <= self.work_size <= hi:
            raise InputError(
                f"work size must be None or between {lo} and {hi}, got {self.work_size}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.selfloop_lr is not None and not 0.0 < self.selfloop_lr <= MAX_SELFLOOP_LR:
            raise InputError(
                f"self-loop step must be None or in (0, {MAX_SELFLOOP_LR:g}], got {self.selfloop_lr:g}"
            )
        for name in ("norm_mean", "norm_std"):
            v = getattr(self, name)
            if (
                not isinstance(v, tuple | list)
                or len(v) != self.in_channels
                or not all(is_real(x) and math.isfinite(float(x)) for x in v)
            ):
                raise InputError(
                    f"{name} needs {self.in_channels} finite numbers (one per input channel), got {v!r}"
                )
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if min(self.norm_std) <= 0:
            raise InputError(f"norm_std values must be positive, got {self.norm_std}")

    def same_network(self, other: ModelConfig) -> bool:
        """Whether ``other`` builds the same network (settings such as the self-loop step
        aside): models that can share weights, be ensembled or resume each other."""

        def network(c: ModelConfig) -> ModelConfig:
            return replace(c, selfloop_lr=None, instance_marker=None, instance_min_fraction=None)

        return network(self) == network(other)

    @property
    def out_channels(self) -> int:
        """Channels of the decoder's output: the foreground, then the instance map, if any."""
        return 1 + aux_channels(self.instance_output)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so a checkpoint loads with ``weights_only=True``."""
        d = asdict(self)
        d["norm_mean"] = list(self.norm_mean)
        d["norm_std"] = list(self.norm_std)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ModelConfig:
        if not isinstance(d, dict):
            raise InputError(
                f"the model config must be a mapping of fields, got a {type(d).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown model config keys: {sorted(map(str, unknown))}")
        kw = dict(d)
        # Checkpoints from before the head and rotation choices used the paper's reading.
        kw.setdefault("jigsaw_head", "gap")
        kw.setdefault("jigsaw_rotation", "random")
        # ... and before the decoder choice, the decoder as wide as the encoder's skips.
        kw.setdefault("decoder", "matched")
        for key in ("norm_mean", "norm_std"):
            if isinstance(kw.get(key), list):
                kw[key] = tuple(kw[key])
        return cls(**kw)


class BasicBlock(nn.Module):
    """The two-convolution residual block of ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x), inplace=True)


class ResNet18Encoder(nn.Module):
    """ResNet-18 feature extractor returning the five skip features.

    Strides 2, 4, 8, 16, 32 with ``w, w, 2w, 4w, 8w`` channels (``w = 64`` for the real
    network).
    """

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        widths = [w, w, 2 * w, 4 * w, 8 * w]
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w))
        self.channels: tuple[int, ...] = tuple(widths)
        for m in self.modules():
            # A network built on the meta device (the layout a checkpoint is checked against)
            # has no values to draw, and drawing them would import torch._dynamo (seconds).
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch (He et al. "bag of tricks").
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.stem(x)
        f1 = self.layer1(self.pool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )


def decoder_widths(encoder_channels: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """Output channels of the decoder blocks at strides 16, 8, 4, 2 and full resolution."""
    c0, c1, c2, c3, _ = encoder_channels
    if kind == "matched":
        return (c3, c2, c1, c0, max(c0 // 2, 8))
    if kind == "tapered":
        return (c3, c2, c1, max(c0 // 2, 4), max(c0 // 4, 4))
    raise InputError(f"decoder must be one of {', '.join(DECODERS)}, got {kind!r}")


class UNetDecoder(nn.Module):
    """U-Net decoder: upsample, concatenate the skip feature, two 3x3 convolutions;
    block widths from :func:`decoder_widths`."""

    def __init__(
        self,
        encoder_channels: tuple[int, ...],
        dropout: float = 0.0,
        kind: str = "tapered",
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = encoder_channels
        *outs, final = decoder_widths(encoder_channels, kind)
        skips = [c3, c2, c1, c0]
        blocks = []
        cin = c4
        for skip, cout in zip(skips, outs, strict=True):
            blocks.append(nn.Sequential(_ConvBNReLU(cin + skip, cout), _ConvBNReLU(cout, cout)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.final_block = nn.Sequential(_ConvBNReLU(cin, final), _ConvBNReLU(final, final))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(final, out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.dropout(feats[-1])
        for block, skip in zip(self.blocks, reversed(feats[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.dropout(block(torch.cat([x, skip], dim=1)))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(self.final_block(x))


class JigsawHead(nn.Module):
    """Pool the deepest feature (to 1x1 for ``gap``, to the 3x3 tile layout for ``slots``),
    flatten, then a linear layer to K classes."""

    def __init__(self, channels: int, num_permutations: int, kind: str = "slots") -> None:
        super().__init__()
        self.grid = 3 if kind == "slots" else 1
        self.fc = nn.Linear(channels * self.grid * self.grid, num_permutations)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(deepest, self.grid), 1))


class ResUNet(nn.Module):
    """ResUNet-18 with a jigsaw head.

    ``forward`` takes normalised images ``(B, C, H, W)`` of any size: sides that are not
    multiples of 32 are padded (reflect where possible) and the logits cropped back.
    """

    # Buffers (registered in __init__), typed for the type checker.
    norm_mean: torch.Tensor
    norm_std: torch.Tensor

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        self.encoder = ResNet18Encoder(cfg.in_channels, cfg.width)
        self.decoder = UNetDecoder(
            self.encoder.channels, cfg.dropout, cfg.decoder, cfg.out_channels
        )
        self.jigsaw_head = JigsawHead(
            self.encoder.channels[-1], cfg.num_permutations, cfg.jigsaw_head
        )
        self.register_buffer("norm_mean", torch.tensor(cfg.norm_mean).view(1, -1, 1, 1), False)
        self.register_buffer("norm_std", torch.tensor(cfg.norm_std).view(1, -1, 1, 1), False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] to the network's input scale."""
        return (x - self.norm_mean.to(x.dtype)) / self.norm_std.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of an image in [0, 1] whose sides are multiples of 32."""
        return self.encoder(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` for images ``x`` in [0, 1]: channel 0 the foreground,
        channel 1 (models with an instance output) the instance map."""
        seg, _ = self.forward_both(x)
        return seg

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits and jigsaw logits for images in [0, 1]."""
        h, w = x.shape[-2:]
        xp = pad_to_stride(x)
        feats = self.forward_features(xp)
        seg = self.decoder(feats)[..., :h, :w]
        return seg, self.jigsaw_head(feats[-1])


def pad_to_stride(x: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """Pad the bottom/right of ``x`` so both sides are multiples of ``stride``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def build_model(config: ModelConfig | None = None, seed: int | None = None) -> ResUNet:
    """A freshly initialised ResUNet-18 (deterministic when ``seed`` is given)."""
    if seed is not None:
        check_seed(seed)
    if seed is None:
        return ResUNet(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResUNet(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_mc_dropout(model: nn.Module, enabled: bool) -> None:
    """Switch only the dropout layers to training mode (MC dropout) or back."""
    for m in model.modules():
        if isinstance(m, nn.Dropout | nn.Dropout2d):
            m.train(enabled)
