"""Native ViT featurizers that read timm ``VisionTransformer`` weights, and
Prismatic's vision projector -- no timm dependency.

OpenVLA's fused backbone runs two timm ViTs (DINOv2 ViT-L/14 with 4 register
tokens, SigLIP So400m/14) and keeps the patch tokens of the SECOND-TO-LAST
block (timm ``get_intermediate_layers(n={depth - 2})``, no final norm, prefix
tokens dropped). This module rebuilds exactly that forward from the timm key
names::

    patch_embed.proj.{weight,bias}        Conv2d(3, D, P, stride=P)
    cls_token (1,1,D), reg_token (1,R,D)   optional prefix tokens
    pos_embed (1, L, D)                    L = n_patches (no_embed_class) or n_patches + 1
    norm_pre.{weight,bias}                 optional (CLIP)
    blocks.{i}.norm1/attn.qkv/attn.proj/ls1.{gamma|scale_factor}/norm2/mlp.fc1/mlp.fc2/ls2.*
    norm.*, fc_norm.*, attn_pool.*, head.*  unused by Prismatic (ignored)

Geometry (width, depth, patch size, MLP width, prefix tokens, grid) is read
from the weight shapes; only the head count and activation come from the timm
model id, because shapes cannot tell them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specvla_ros.core.models.frame_resize import resize_frame

#: timm model-id prefix -> (attention heads, activation, normalisation mean, std).
#: Activations follow timm 0.9.x (the versions OpenVLA pins): SigLIP uses exact GELU there.
#: CLIP towers (bias-free patch embedding, LayerNorm eps 1e-5) are not supported.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
TIMM_FAMILIES: dict[str, tuple[int, str, tuple]] = {
    "vit_large_patch14_reg4_dinov2": (16, "gelu", _IMAGENET),
    "vit_large_patch14_dinov2": (16, "gelu", _IMAGENET),
    "vit_so400m_patch14_siglip": (16, "gelu", _HALF),
    "vit_large_patch16_224": (16, "gelu", _HALF),
}

#: Keys a featurizer may hold that Prismatic's forward never uses.
_UNUSED_KEY = re.compile(r"^(norm|fc_norm|attn_pool|head)\.")


def timm_family(model_id: str) -> tuple[int, str, tuple]:
    """(num_heads, activation, (mean, std)) of a timm model id such as ``vit_so400m_patch14_siglip_224``."""
    for prefix, spec in TIMM_FAMILIES.items():
        if model_id.startswith(prefix):
            return spec
    raise ValueError(f"unsupported timm vision backbone {model_id!r}; known: {sorted(TIMM_FAMILIES)}")


@dataclass(frozen=True)
class ViTConfig:
    """Geometry of one timm-style ViT featurizer.

    ``take_block`` is the block whose output is returned (Prismatic: depth - 2);
    blocks after it are not built.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    image_size: int
    mlp_hidden: int
    act: str = "gelu"
    class_token: bool = False
    reg_tokens: int = 0
    no_embed_class: bool = False
    pre_norm: bool = False
    layer_scale: bool = False
    eps: float = 1e-6
    take_block: int = -1

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "image_size", "mlp_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"ViTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViTConfig.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.act not in _ACTS:
            raise ValueError(f"ViTConfig.act must be one of {sorted(_ACTS)}, got {self.act!r}")
        if not 0 <= self.resolved_take_block < self.depth:
            raise ValueError(f"ViTConfig.take_block {self.take_block} outside 0..{self.depth - 1}")

    @property
    def resolved_take_block(self) -> int:
        return self.take_block if self.take_block >= 0 else self.depth + self.take_block

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_prefix(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]], model_id: str, image_size: int,
                    act_override: str | None = None, take_block: int = -2) -> "ViTConfig":
        """Infer the geometry from ``{key: shape}`` of one featurizer (keys without its prefix)."""
        heads, act, _ = timm_family(model_id)
        try:
            embed_dim, _, patch, _ = shapes["patch_embed.proj.weight"]
            mlp_hidden = shapes["blocks.0.mlp.fc1.weight"][0]
            pos_len = shapes["pos_embed"][1]
        except KeyError as exc:
            raise ValueError(f"featurizer weights lack {exc.args[0]!r}") from exc
        depth = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
        class_token = "cls_token" in shapes
        reg = shapes["reg_token"][1] if "reg_token" in shapes else 0
        n_patches = (image_size // patch) ** 2
        if pos_len == n_patches:
            no_embed_class = True
        elif pos_len == n_patches + int(class_token) + reg:
            no_embed_class = False
        else:
            raise ValueError(
                f"pos_embed holds {pos_len} positions but image size {image_size} with patch {patch} "
                f"gives {n_patches} patches (+{int(class_token) + reg} prefix tokens)"
            )
        return cls(
            embed_dim=embed_dim, depth=depth, num_heads=heads, patch_size=patch, image_size=image_size,
            mlp_hidden=mlp_hidden, act=act_override or act, class_token=class_token, reg_tokens=reg,
            no_embed_class=no_embed_class, pre_norm="norm_pre.weight" in shapes,
            layer_scale=any(k.startswith("blocks.0.ls1.") for k in shapes), take_block=take_block,
        )


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTS = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": _QuickGELU}


class LayerScale(nn.Module):
    """Per-channel scale; the parameter is named ``scale_factor`` as in OpenVLA's HF export (timm: ``gamma``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _ACTS[act]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps)
        self.attn = _Attention(d, cfg.num_heads)
        self.ls1 = LayerScale(d) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps)
        self.mlp = _Mlp(d, cfg.mlp_hidden, cfg.act)
        self.ls2 = LayerScale(d) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTFeaturizer(nn.Module):
    """timm-compatible ViT returning the patch tokens of block ``take_block``.

    forward: pixels (B, 3, S, S) normalised -> (B, n_patches, embed_dim).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = _PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, d)) if cfg.reg_tokens else None
        pos_len = cfg.n_patches + (0 if cfg.no_embed_class else cfg.n_prefix)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_len, d))
        self.norm_pre = nn.LayerNorm(d, eps=cfg.eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.resolved_take_block + 1))

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        b = x.shape[0]
        cls = [self.cls_token.expand(b, -1, -1)] if self.cls_token is not None else []
        reg = [self.reg_token.expand(b, -1, -1)] if self.reg_token is not None else []
        if self.cfg.no_embed_class:  # timm: position embedding on patches only, prefix tokens added after
            x = torch.cat(cls + reg + [x + self.pos_embed], dim=1)
        else:  # timm's original ViT: position embedding covers the prefix tokens too
            x = torch.cat(cls + reg + [x], dim=1) + self.pos_embed
        x = self.norm_pre(x)
        for blk in self.blocks:
            x = blk(x)
        return x[:, self.cfg.n_prefix:]

    @staticmethod
    def is_unused_key(key: str, cfg: ViTConfig) -> bool:
        """True for checkpoint keys this truncated featurizer never reads (final norm, pool, later blocks)."""
        if _UNUSED_KEY.match(key):
            return True
        m = re.match(r"blocks\.(\d+)\.", key)
        return bool(m) and int(m.group(1)) > cfg.resolved_take_block


class PrismaticProjector(nn.Module):
    """Vision -> LLM projector of Prismatic.

    fused: fc1 (Dv -> 4 Dv), GELU, fc2 (4 Dv -> Dl), GELU, fc3 (Dl -> Dl);
    single: fc1 (Dv -> Dl), GELU, fc2 (Dl -> Dl).
    forward: (B, n, Dv) -> (B, n, Dl).
    """

    def __init__(self, fused: bool, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.gelu(self.fc1(x)))
        return self.fc3(F.gelu(x)) if self.fused else x


def preprocess_image(image: torch.Tensor | np.ndarray, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float (1, 3, size, size), as OpenVLA's image processor.

    A frame not already ``size`` x ``size`` is resized first with Pillow's bicubic on the
    uint8 image (``frame_resize``), then scaled to [0, 1] and normalised per channel;
    the tensor keeps the device of ``image``.
    """
    device = image.device if isinstance(image, torch.Tensor) else torch.device("cpu")
    if tuple(image.shape[:2]) != (size, size):
        pixels = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        image = torch.from_numpy(resize_frame(pixels, (size, size), "pil_bicubic")).to(device)
    x = torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


def vit_flops(cfg: ViTConfig) -> float:
    """Approximate multiply-adds x2 of one forward (for the start-up log)."""
    n = cfg.n_patches + cfg.n_prefix
    d = cfg.embed_dim
    per_block = 2 * n * (4 * d * d + 2 * d * cfg.mlp_hidden) + 4 * n * n * d
    return float(per_block * (cfg.resolved_take_block + 1)) + 2.0 * n * d * 3 * cfg.patch_size ** 2


__all__ = ["ViTConfig", "ViTFeaturizer", "PrismaticProjector", "LayerScale", "preprocess_image", "timm_family",
           "TIMM_FAMILIES", "vit_flops"]
