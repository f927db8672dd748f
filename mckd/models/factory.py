"""One model factory: any segmentation_models_pytorch architecture, or a torchvision segmentation model."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mckd.errors import MckdError, one_line

log = logging.getLogger(__name__)

TORCHVISION_ARCHS = (
    "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101",
    "fcn_resnet50", "fcn_resnet101",
)
KEY_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "features.")


class ModelConfigError(MckdError, ValueError):
    """A bad `model` config: the message names the key (under `node`: model, teacher or student) and what was
    expected."""

    def __init__(self, key: str, value, expected: str, node: str = "model"):
        self.key, self.value, self.expected, self.node = key, value, expected, node
        super().__init__(f"{node}.{key}={value!r}: {expected}")

    def __reduce__(self):
        return type(self), (self.key, self.value, self.expected, self.node)

    def under(self, node: str) -> ModelConfigError:
        """The same error, named by the config node the model came from (`teacher.encoder=...`)."""
        return ModelConfigError(self.key, self.value, self.expected, node)


class SegmentationNet(nn.Module):
    """Any segmentation network as `images -> logits` at input size, padding inputs to `pad_multiple`.

    The network runs channels-last (NHWC), which oneDNN's and cuDNN's convolutions prefer: a training step of the
    synthetic default's Unet took about 0.7x the time on the 2-core CPU (docs/benchmarks.md); the logits come
    back in the usual contiguous NCHW layout."""

    def __init__(self, net: nn.Module, pad_multiple: int = 32, returns_dict: bool = False):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)
        self.pad_multiple, self.returns_dict = pad_multiple, returns_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.pad_multiple
        pad_h, pad_w = (m - h % m) % m, (m - w % m) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        out = self.net(x)
        if self.returns_dict:
            out = out["out"]
        return out[..., :h, :w].contiguous()

    @property
    def encoder(self) -> nn.Module:
        return self.net.backbone if self.returns_dict else self.net.encoder


def fit_atrous_rates(crop_size: Sequence[int], output_stride: int = 16) -> list[int]:
    """ASPP rates for `crop_size`: DeepLabv3's (6, 12, 18) at 513-pixel crops and output stride 16, scaled to
    the crop's feature map. smp's default (12, 24, 36) on a 4x4 or 8x10 map makes every dilated branch read
    only its centre tap (padding elsewhere), i.e. a 1x1 convolution."""
    side = min(int(v) for v in crop_size) / output_stride
    base = max(1, int(6 * side / (513 / 16) + 0.5))
    return [base, 2 * base, 3 * base]


def resolve_input_fitted(cfg: Mapping, crop_size: Sequence[int]) -> dict:
    """`cfg` with `decoder_atrous_rates: auto` replaced by the rates that fit `crop_size`."""
    out = dict(cfg)
    if out.get("decoder_atrous_rates") == "auto":
        out["decoder_atrous_rates"] = fit_atrous_rates(crop_size, int(out.get("encoder_output_stride", 16)))
    return out


def model_config(node: Mapping, crop_size: Sequence[int]) -> dict:
    """A `model` config node (mckd/schema.py ModelConfig) as `build_model` takes it: its `kwargs` merged in, keys
    left null (the architecture's defaults) and the pipeline's own keys left out, and its input-dependent settings
    fitted to `crop_size`."""
    cfg = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    cfg.pop("checkpoint", None)  # teacher.checkpoint (deprecated teacher_checkpoint): not a network setting
    cfg = {**{k: v for k, v in cfg.items() if k != "kwargs" and v is not None}, **(cfg.get("kwargs") or {})}
    return resolve_input_fitted(cfg, crop_size)


def build_model(cfg: Mapping, num_classes: int) -> SegmentationNet:
    """The network for a `model` config: {arch, encoder, encoder_weights, ...extra smp.create_model arguments}."""
    if cfg.get("decoder_atrous_rates") == "auto":
        raise ModelConfigError("decoder_atrous_rates", "auto", "resolve it with resolve_input_fitted(cfg, crop_size)")
    arch = cfg.get("arch")
    weights = cfg.get("encoder_weights")
    local_file = weights is not None and _looks_like_path(weights)
    if arch in TORCHVISION_ARCHS:
        model = _torchvision_model(arch, num_classes, None if local_file else weights)
    else:
        model = _smp_model(cfg, num_classes, None if local_file else weights)
    if local_file:
        load_encoder_weights(model.encoder, weights)
    return model


def _looks_like_path(weights: str) -> bool:
    return any(ch in str(weights) for ch in "/\\") or str(weights).endswith((".pth", ".pt", ".bin", ".safetensors"))


def _smp_model(cfg: Mapping, num_classes: int, weights: str | None) -> SegmentationNet:
    import segmentation_models_pytorch as smp

    arch, encoder = cfg.get("arch"), cfg.get("encoder", "resnet34")
    check_smp_names(arch, encoder)
    extra = {k: v for k, v in cfg.items() if k not in ("arch", "encoder", "encoder_weights", "name")}
    try:
        net = smp.create_model(arch, encoder_name=encoder, encoder_weights=weights, classes=num_classes, **extra)
    except (KeyError, RuntimeError) as err:  # timm's "Unknown model" for a `tu-` encoder it does not have
        raise ModelConfigError("encoder", encoder, f"cannot build it for {arch} ({one_line(str(err))[:200]})") from None
    except OSError as err:  # hub weights without internet
        raise ModelConfigError("encoder_weights", weights, f"cannot load them ({one_line(str(err))[:200]}); hub "
                               "weights need internet: use a local .pth file, or null") from None
    freeze_unused_stages(net.encoder, extra.get("encoder_depth", 5))
    return SegmentationNet(net, pad_multiple=32)


def freeze_unused_stages(encoder: nn.Module, depth: int) -> None:
    """Stop training the encoder stages deeper than `depth` (stride above 2**depth): smp builds every stage and
    drops their output, so they never get a gradient, which DDP refuses (`trainer=ddp` with an `encoder_depth: 4`
    model such as unet_mobilenet_v2_small). The weights stay in the state dict, so checkpoints load either way."""
    stages = encoder.get_stages() if hasattr(encoder, "get_stages") else {}
    for stride, modules in stages.items():
        if stride > 2 ** depth:
            for module in modules:
                module.requires_grad_(False)


def check_smp_names(arch, encoder) -> None:
    """ModelConfigError naming `arch` or `encoder` when smp has no such architecture or encoder."""
    import segmentation_models_pytorch as smp

    archs = {a.__name__.lower(): a.__name__ for a in smp.MODEL_ARCHITECTURES_MAPPING.values()}
    if str(arch).lower() not in archs:
        raise ModelConfigError("arch", arch, f"unknown architecture; expected one of {', '.join(sorted(archs.values()))} "
                               f"(segmentation-models-pytorch) or {', '.join(TORCHVISION_ARCHS)} (torchvision)")
    if not str(encoder).startswith("tu-") and encoder not in smp.encoders.get_encoder_names():
        raise ModelConfigError("encoder", encoder, "unknown encoder; expected a segmentation-models-pytorch encoder "
                               "(e.g. resnet50, mobilenet_v2, efficientnet-b0; all: "
                               "smp.encoders.get_encoder_names()) or tu-<timm model>")


def _torchvision_model(arch: str, num_classes: int, weights: str | None) -> SegmentationNet:
    from torchvision.models import segmentation

    # backbone weights by hub name need internet; None builds from scratch
    kwargs = {"weights": None, "weights_backbone": weights, "num_classes": num_classes}
    if arch != "lraspp_mobilenet_v3_large":
        kwargs["aux_loss"] = False
    return SegmentationNet(getattr(segmentation, arch)(**kwargs), pad_multiple=32, returns_dict=True)


def load_encoder_weights(encoder: nn.Module, path: str):
    """Load a local state dict into `encoder`; returns (and logs) the missing and unexpected keys."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelConfigError("encoder_weights", path, "file not found (expected a local weights file or a hub name)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    own = encoder.state_dict().keys()
    if not own & state.keys():  # try common wrapper prefixes
        for prefix in KEY_PREFIXES:
            stripped = {k.removeprefix(prefix): v for k, v in state.items()}
            if own & stripped.keys():
                state = stripped
                break
    if not own & state.keys():
        raise ModelConfigError("encoder_weights", path, "none of its keys match the encoder")
    result = nn.Module.load_state_dict(encoder, state, strict=False)
    log.info("loaded encoder weights from %s: %d missing keys, %d unexpected keys %s", file,
             len(result.missing_keys), len(result.unexpected_keys), result.unexpected_keys[:5])
    return result
