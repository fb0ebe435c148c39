"""Backbones from timm (``--arch-arg backbone=timm:<name>``) for hps, mtan, padnet and mtinet.

``TimmFeatures`` wraps ``timm.create_model(name, features_only=True, out_indices=levels)``: any
timm model with feature extraction (ResNets, ConvNeXt, EfficientNet, MobileNet, RegNet, Swin,
ViT through ``forward_intermediates``, ...). It takes images in [0, 1], normalises them with the
model's own mean and std (``pretrained_cfg``), and returns its ``levels`` deepest feature maps as
NCHW tensors (Swin's NHWC maps are permuted), with their widths in ``channels`` and their strides
in ``reductions`` (read from timm's ``feature_info``).

- Output stride: ``output_stride`` (8 or 16) is asked of timm, which dilates the models that
  support it (ResNet, ConvNeXt, EfficientNet, MobileNet, RegNet, ...). The others keep their
  native stride: 16 for ViTs (every level), 32 for Swin. ``reductions[-1]`` is what was built.
- Input sizes: patch-embedding models (ViT, Swin) get ``dynamic_img_size=True``; an input whose
  sides are not multiples of the patch size (or smaller than the deepest stride) is resized up
  to the next multiple before the backbone, so the features cover the whole image and the
  heads' bilinear upsampling to the input size stays aligned. A model fixed to one input size
  (a patch embedding without dynamic sizes) gets its images resized to that size.
- Pretrained weights come from the local Hugging Face cache (``$HF_HUB_CACHE``, by default
  ``~/.cache/huggingface/hub``) or timm's old torch-hub cache, without touching the network when
  they are there. Otherwise timm downloads them when it can; offline (``HF_HUB_OFFLINE=1``), with
  the hub unreachable (one 5 s probe) or on failure a one-line ``ConfigError`` names the
  repository, the file and the folder expected.
"""

from __future__ import annotations

import difflib
import math
import os
import socket
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.errors import ConfigError

TIMM_PREFIX = "timm:"
#: The architectures that take ``backbone=timm:<name>``.
TIMM_ARCHS = ("hps", "mtan", "padnet", "mtinet")
#: Families tested with every architecture (tests/test_timm.py): (family, the name ``densemtl list
#: -v`` counts, more names, output stride of hps/padnet/mtan at output_stride=8).
FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("resnet", "resnet50", "resnet18, resnet10t, resnext50_32x4d, ...", "8 (dilated; 16 on request)"),
    ("convnext", "convnext_tiny", "convnext_atto ... convnext_large", "8 (dilated; 16 on request)"),
    ("efficientnet", "efficientnet_b0", "efficientnet_b1 ... b7, ...", "8 (dilated; 16 on request)"),
    ("mobilenetv3", "mobilenetv3_large_100", "mobilenetv3_small_050, ...", "8 (dilated; 16 on request)"),
    ("swin", "swin_tiny_patch4_window7_224", "swin_small_..., swin_base_...", "32 (native; 4-32 for mtinet)"),
    ("vit / deit", "vit_small_patch16_224", "vit_tiny_patch16_224, deit_small_patch16_224, ...", "16 at every level"),
)
#: timm keywords that open, load or write files (``timm.create_model``'s own and the pretrained
#: loader's): refused in ``backbone_args``, from flags and from stored metadata alike. A deny-list
#: (with :data:`FILE_KEY_ENDS`, :data:`FILE_KEY_PARTS` and path-like values) rather than an allow-list: each timm model
#: takes keywords of its own (``embed_dim``, ``depths``, ``drop_path_rate``, ...).
FILE_KWARGS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "file", "url")
#: Endings and parts of a keyword's name that mark it as naming a file, a folder or a download
#: (``drop_path_rate`` is not one).
FILE_KEY_ENDS = ("_path", "_file", "_dir", "_url")
FILE_KEY_PARTS = ("checkpoint", "hf_hub", "cache")
#: Keywords densemtl sets itself (refused in ``backbone_args``), with why.
OWNED_KWARGS = {
    "features_only": "densemtl always builds timm's feature-map model",
    "out_indices": "densemtl chooses the feature levels its architecture needs",
    "num_classes": "timm's classifier is not used; densemtl builds a head per task",
    "global_pool": "timm's classifier is not used; densemtl builds a head per task",
    "pretrained": "use the architecture's own knob (--arch-arg pretrained=true)",
}
#: Keyword arguments asked of every model and dropped for those that do not take them.
OPTIONAL_KWARGS = ("output_stride", "dynamic_img_size")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_timm_backbone(backbone: object) -> bool:
    """``backbone`` is a ``"timm:<name>"`` string."""
    return isinstance(backbone, str) and backbone.startswith(TIMM_PREFIX)


def import_timm(arch: str) -> ModuleType:
    """timm, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"{arch} knob 'backbone': timm backbones need the timm package, which is not installed; "
            "pip install 'densemtl[timm]'"
        ) from None
    return timm


def check_timm_backbone(arch: str, backbone: str) -> str:
    """The timm model name in ``backbone`` (``timm:<name>``), checked against timm's registry
    (a one-line ``ConfigError`` with the closest names when timm has no such model)."""
    if arch not in TIMM_ARCHS:
        raise ConfigError(
            f"{arch} knob 'backbone': timm backbones ({backbone!r}) are supported by {', '.join(TIMM_ARCHS)}, "
            f"not {arch}"
        )
    return timm_model_name(
        arch, backbone, " (python -c 'import timm; print(timm.list_models(\"<pattern>*\"))' lists them)"
    )


def timm_model_name(arch: str, backbone: str, more: str = "") -> str:
    """The name after ``timm:`` in ``backbone``, one timm has; otherwise a one-line ``ConfigError``
    naming ``arch``, with the closest names (and ``more``)."""
    name = backbone[len(TIMM_PREFIX) :].strip()
    timm = import_timm(arch)
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ConfigError(f"{arch} knob 'backbone': timm {timm.__version__} has no model {name!r}{hint}{more}")
    return name


def check_backbone_args(arch: str, backbone: object, backbone_args: object) -> dict[str, Any]:
    """``backbone_args`` (extra ``timm.create_model`` keywords) as a dict; timm backbones only."""
    if backbone_args is None:
        return {}
    if not isinstance(backbone_args, dict) or not all(isinstance(k, str) for k in backbone_args):
        raise ConfigError(
            f"{arch} knob 'backbone_args' must be a mapping of timm keyword arguments, got {backbone_args!r}"
        )
    if backbone_args and not is_timm_backbone(backbone):
        raise ConfigError(f"{arch} knob 'backbone_args' applies to timm backbones (timm:<name>), not {backbone!r}")
    for key, value in backbone_args.items():
        check_file_free(arch, key, value)
        if key in OWNED_KWARGS:
            raise ConfigError(f"{arch} knob 'backbone_args': {key}={value!r} is refused; {OWNED_KWARGS[key]}")
        if key == "in_chans" and value != 3:
            raise ConfigError(
                f"{arch} knob 'backbone_args': in_chans={value!r} is refused; densemtl's images have 3 channels "
                "(RGB): leave in_chans out"
            )
    return dict(backbone_args)


def _names_a_file(key: str) -> bool:
    k = key.lower()
    return k in FILE_KWARGS or k.endswith(FILE_KEY_ENDS) or any(part in k for part in FILE_KEY_PARTS)


def _path_like(value: object) -> bool:
    """A string that reads as a path or a URL, anywhere inside ``value`` (lists, mappings)."""
    if isinstance(value, str):
        return any(c in value for c in ("/", "\\")) or value.startswith(("~", ".")) or "://" in value
    if isinstance(value, dict):
        return any(_path_like(k) or _path_like(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_path_like(v) for v in value)
    return False


def check_file_free(arch: str, key: str, value: object) -> None:
    """A one-line ``ConfigError`` when timm keyword ``key=value`` would make timm open, load or
    write a file (see :data:`FILE_KWARGS`): a checkpoint that names such a keyword must not make
    timm ``torch.load`` a file on the reader's machine."""
    if _names_a_file(key) or _path_like(value):
        raise ConfigError(
            f"{arch} knob 'backbone_args': {key}={value!r} is refused: it would make timm read a file or "
            "a URL (keywords naming files, weights or configs, and values that are paths, are never passed "
            "to timm); pretrained weights come from the 'pretrained' knob"
        )


def weights_location(timm: ModuleType, name: str) -> tuple[str | None, str, str, str]:
    """Where ``name``'s pretrained weights are: (a cached weights file or None, the repository or
    URL, the file(s) expected, the folder expected)."""
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else WEIGHT_FILES
        for filename in files:
            path = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(path, str):
                return path, repo, filename, os.path.dirname(path)
        folder = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
        return None, repo, " or ".join(files), folder
    if url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        return (path if os.path.isfile(path) else None), url, os.path.basename(url), os.path.dirname(path)
    return None, "", "", ""


def _unreachable(host: str, timeout: float = 5.0) -> str:
    """Why ``host`` cannot be reached on port 443 ("" when it can): one quick probe before a
    download, instead of the hub's minute of retries on a machine without internet."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        return _first_line(exc)
    return ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _create(timm: ModuleType, arch: str, name: str, kwargs: dict[str, Any], optional: set[str]) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, dropping the ``optional`` keywords the model refuses."""
    kwargs = dict(kwargs)
    while True:
        try:
            return timm.create_model(name, **kwargs)
        except TypeError as exc:
            refused = next((k for k in optional if k in kwargs and f"'{k}'" in str(exc)), None)
            if refused is None:
                raise ConfigError(f"{arch} knob 'backbone': timm cannot build {name}: {_first_line(exc)}") from None
            kwargs.pop(refused)
        except AssertionError as exc:  # timm asserts on output strides a model cannot give
            if "output_stride" not in kwargs or "output_stride" not in optional:
                raise no_features(arch, name, exc) from None
            kwargs.pop("output_stride")
        except (IndexError, KeyError, ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
            if kwargs.get("pretrained"):
                raise  # a download or a weights file: create_features says which
            raise no_features(arch, name, exc) from None


def no_features(arch: str, name: str, exc: BaseException) -> ConfigError:
    """The one line for a timm model that cannot give the feature maps ``arch`` needs."""
    families = ", ".join(f[0] for f in FAMILIES)
    return ConfigError(
        f"{arch} knob 'backbone': timm cannot build {name} as a feature extractor ({_first_line(exc)}); "
        f"models that give feature maps include {families}"
    )


def create_features(
    arch: str, name: str, levels: int, output_stride: int | None, pretrained: bool, extra: dict[str, Any]
) -> nn.Module:
    """timm's ``features_only`` net for ``name`` with its ``levels`` deepest feature maps."""
    for key, value in extra.items():  # whoever built ``extra``: no file reaches timm through it
        check_file_free(arch, key, value)
    timm = import_timm(arch)
    kwargs: dict[str, Any] = {"features_only": True, "out_indices": levels, "dynamic_img_size": True}
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    kwargs.update(extra)
    optional = {k for k in OPTIONAL_KWARGS if k not in extra}
    if not pretrained:
        return _create(timm, arch, name, {**kwargs, "pretrained": False}, optional)
    from huggingface_hub import constants

    path, source, files, folder = weights_location(timm, name)
    if not source:
        raise ConfigError(f"{arch} knob 'pretrained': timm has no pretrained weights for {name}; use pretrained=false")
    if "://" in source:
        fetch = f"download {source} on a machine with internet and place it in {folder}"
    else:
        fetch = (
            f"run hf download {source} (huggingface-cli download before huggingface_hub 1.0) on a machine "
            f"with internet and copy its cache folder "
            f"{os.path.basename(folder)} into {os.path.dirname(folder)}"
        )
    where = f"{name}'s weights ({source}: {files} in {folder})"
    if path is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": path}
    elif constants.HF_HUB_OFFLINE:
        raise ConfigError(
            f"{arch} knob 'pretrained': {where} are not in the local cache and HF_HUB_OFFLINE is set; "
            f"{fetch}, or use pretrained=false"
        )
    else:
        host = urlsplit(source if "://" in source else constants.ENDPOINT).hostname or ""
        unreachable = _unreachable(host)
        if unreachable:
            raise ConfigError(
                f"{arch} knob 'pretrained': {where} are not in the local cache and {host} cannot be reached "
                f"({unreachable}); {fetch}, or use pretrained=false"
            )
    try:
        return _create(timm, arch, name, {**kwargs, "pretrained": True}, optional)
    except ConfigError:
        raise
    except Exception as exc:  # the hub's and torch's download and loading errors
        raise ConfigError(
            f"{arch} knob 'pretrained': {where} could not be loaded or downloaded ({_first_line(exc)}); "
            f"{fetch}, or use pretrained=false"
        ) from None


class TimmFeatures(nn.Module):
    """A timm model's ``levels`` deepest feature maps (NCHW) for images in [0, 1]; see the module docstring."""

    def __init__(
        self,
        backbone: str,
        arch: str,
        *,
        levels: int,
        output_stride: int | None = None,
        pretrained: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.name = self.check_name(arch, backbone)
        self.net = create_features(arch, self.name, levels, output_stride, pretrained, dict(extra or {}))
        info = self.net.feature_info
        self.channels: tuple[int, ...] = tuple(info.channels())
        self.reductions: tuple[int, ...] = tuple(info.reduction())
        if len(self.channels) != levels:
            raise ConfigError(
                f"{arch} knob 'backbone': timm's {self.name} gives {len(self.channels)} feature levels, "
                f"{arch} needs {levels}"
            )
        fmt = getattr(self.net, "output_fmt", "NCHW")
        self.nhwc = getattr(fmt, "value", fmt) == "NHWC"
        self.divisor, self.fixed_size = self._input_geometry()
        self.min_side = max(self.reductions)
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def check_name(self, arch: str, backbone: str) -> str:
        """The timm model name of ``backbone`` (``timm:<name>``), checked for ``arch``."""
        return check_timm_backbone(arch, backbone)

    def _input_geometry(self) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """(the multiple each input side must be, the one input size a fixed-size model takes)."""
        div_h = div_w = 1
        fixed = None
        for m in self.net.modules():
            patch = getattr(m, "patch_size", None)
            if not type(m).__name__.endswith("PatchEmbed") or patch is None:
                continue
            ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)[:2]
            div_h, div_w = math.lcm(div_h, int(ph)), math.lcm(div_w, int(pw))
            img = getattr(m, "img_size", None)
            if getattr(m, "strict_img_size", False) and not getattr(m, "dynamic_img_pad", False) and img is not None:
                fixed = (int(img[0]), int(img[1]))
        return (div_h, div_w), fixed

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """The size an (h, w) image is resized to before the backbone (itself when it fits)."""
        if self.fixed_size is not None:
            return self.fixed_size
        dh, dw = self.divisor
        h, w = max(h, self.min_side), max(w, self.min_side)
        return (math.ceil(h / dh) * dh, math.ceil(w / dw) * dw)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean) / self.std
        size = self.input_size(x.shape[-2], x.shape[-1])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        feats = self.net(x)
        feats = list(feats.values()) if isinstance(feats, dict) else list(feats)
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats


__all__ = [
    "FAMILIES",
    "TIMM_ARCHS",
    "TIMM_PREFIX",
    "TimmFeatures",
    "check_backbone_args",
    "check_timm_backbone",
    "create_features",
    "import_timm",
    "is_timm_backbone",
]
