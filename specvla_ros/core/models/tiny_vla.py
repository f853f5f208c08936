"""The project's own small VLA: patch vision encoder + projector + LLaMA decoder.

Architecture (one class, ``TinyVLA``, also used for the independent draft model):

    image (128x128 RGB uint8) -> PatchVisionEncoder -> (n_patches=16, d_vision)   [shared by draft and target]
    prefix = [ projector(patches) (16) | proprio token (1) | [named keypoint (1)] | BOS + prompt tokens ]
    LLaMA decoder (transformers' LlamaModel modules, our own cached attention loop) -> lm_head -> logits

The decoder's weights are exactly a ``transformers.LlamaModel`` (same module
names), so the backbone can be handed to ``LlamaForCausalLM`` unchanged (the
tests check our loop against ``generate``). Incremental decoding uses a
preallocated ``StaticKVCache`` that truncates without recomputation.

Checkpoint directory (``save_pretrained`` / ``from_pretrained``):

    config.json               TinyVLAConfig, "model_type": "specvla_tiny" (draft: "specvla_draft")
    model.safetensors         weights (stored fp32/fp16/bf16, loaded to the requested dtype)
    tokenizer.json            ``tokenizers`` WordPiece; last 256 ids are action tokens
    tokenizer_words.json      task vocabulary (for ``unknown_words``)
    dataset_statistics.json   OpenVLA-layout q01/q99 action statistics (targets only)

Training API (teacher forcing, batched; what the training loops use):

    TinyVLA.encode_vision_batch(images (B,H,W,3) uint8|float) -> (B, n_patches, d_vision)
    TinyVLA.forward_train(images (B,H,W,3), instructions list[str], proprio (B,8),
                          target_ids (B,T) int64 right-padded, vision_patches=None (B,n,d_vision),
                          return_full=False, vision_keypoints=None (B,K,3))
        -> (logits (B,T,V), hidden (B,T,d))      logits[b,t] predicts target_ids[b,t]
        with return_full=True -> TrainOutputs (adds the whole sequence's input embeddings,
        hidden states and validity mask, which the EAGLE head trains on).
    A draft TinyVLA (no vision encoder) takes ``vision_patches`` (and, with
    ``named_keypoint``, ``vision_keypoints``) from the target's ``encode_vision_full``. ``EagleHead.forward_train`` lives in ``drafters.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaModel

from specvla_ros.core.models.action_tokenizer import (ActionNormStats, ActionTokenizer, load_norm_stats,
                                                     save_norm_stats, validate_bin_stride)
from specvla_ros.core.models.frame_resize import ResizeMethod
from specvla_ros.core.models.checkpoint_io import (
    CONFIG_FILE, DRAFT_MODEL_TYPE, STATS_FILE, TARGET_MODEL_TYPE, WEIGHTS_FILE, load_weights, read_config, save_checkpoint,
)
from specvla_ros.core.models.kv_cache import CACHE_MARGIN, StaticKVCache
from specvla_ros.core.models.interface import ModelLoadError, StepOutput, VisionFeatures
from specvla_ros.core.models.proprio_features import FEATURE_DIMS, FEATURE_KINDS, proprio_features
from specvla_ros.core.models.llama_layers import rope_tables, run_llama_layers
from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
from specvla_ros.core.types import MAX_CHUNK_HORIZON

DEFAULT_UNNORM_KEY = "sim_panda"
PROPRIO_DIM = 8  # 7 joint positions [rad] + gripper opening [m]
#: Keypoint stem resolution: a 128 px image gives 32x32 heat maps (4 px cells, sub-cell by soft-argmax).
KEYPOINT_STRIDE = 4
#: Scale of the named-keypoint selection logits: unscaled, the softmax stays spread over several
#: keypoints long after its argmax is right, so the token mixes them.
SELECTION_GAIN = 16.0
#: Initial scale of each keypoint token's identity embedding.
IDENTITY_STD = 0.5


@dataclass
class TinyVLAConfig:
    """Geometry of a TinyVLA (target or draft). Saved as config.json."""

    model_type: str = TARGET_MODEL_TYPE
    draft_kind: str = ""  # "" for a target, "model" for an independent draft model
    vocab_size: int = 472
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    intermediate_size: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_positions: int = 512
    # vision
    has_vision_encoder: bool = True
    image_size: int = 128
    patch_size: int = 16
    patch_pool: int = 2
    d_vision: int = 32
    vision_layers: int = 1
    vision_heads: int = 2
    proprio_dim: int = PROPRIO_DIM
    #: > 0: a conv stem + spatial softmax adds this many keypoint tokens (x, y, peak) to the patch
    #: tokens; keypoints localise small objects far better than 32-px patches (0 = patches only)
    vision_keypoints: int = 0
    #: indices of the proprio vector the model reads (empty = all). Behaviour cloning on joint
    #: positions learns a copycat shortcut: in expert data the arm's displacement from home
    #: already points at the goal, so the policy ignores the image and, from the home pose,
    #: repeats an average first move. Reading only the gripper opening ([7]) forces the
    #: object and the TCP to come from the camera.
    proprio_keep: tuple[int, ...] = ()
    #: what the proprio token is made of: "raw" (the 8 values as given) or "panda_tcp" (the TCP
    #: pose by forward kinematics inside the model, core.proprio_features): the policy then relates
    #: the hand to what it sees without first learning the arm's kinematics from demonstrations
    proprio_features: str = "raw"
    #: with keypoints: one more prefix token, after the proprio token, holding the raw (x, y, peak)
    #: of the keypoint the instruction selects (a softmax over the keypoints from the summed prompt
    #: embeddings). Attention alone did not learn to pick the instruction's object: the decoder's
    #: named-object estimate stayed at 4.3-5.7 cm while the keypoints held it to 2.5-2.9 cm
    named_keypoint: bool = False
    #: keypoints whose image offset from the selected one joins the named token (training binds
    #: keypoint 4 to the push target and 5 to the gripper): the action needs "object minus hand",
    #: which the decoder otherwise has to build from an image position and a table position
    named_relative: tuple[int, ...] = ()
    n_action_bins: int = 256
    #: actions per decision: the output is narration, [EON], then chunk_horizon x 7 action tokens
    #: (the next chunk_horizon control steps; 1 = one action, as OpenVLA)
    chunk_horizon: int = 1
    #: per action dimension, the model was trained on every s-th bin only (ActionTokenizer
    #: bin_stride; empty = every bin). Its draft is distilled on the same labels
    action_bin_stride: tuple[int, ...] = ()
    prompt_template: str = "what action should the robot take to {instruction} ?"
    unnorm_key: str = DEFAULT_UNNORM_KEY

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
                     "max_positions", "image_size", "patch_size", "patch_pool", "d_vision", "proprio_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TinyVLAConfig.{name} must be >= 1, got {getattr(self, name)}")
        self.proprio_keep = tuple(int(i) for i in self.proprio_keep)
        if any(not 0 <= i < self.proprio_dim for i in self.proprio_keep) or len(set(self.proprio_keep)) != len(self.proprio_keep):
            raise ValueError(f"TinyVLAConfig.proprio_keep must be distinct indices in [0, {self.proprio_dim}), "
                             f"got {self.proprio_keep}")
        if self.proprio_features not in FEATURE_KINDS:
            raise ValueError(f"TinyVLAConfig.proprio_features must be one of {FEATURE_KINDS}, "
                             f"got {self.proprio_features!r}")
        if self.proprio_features == "panda_tcp" and (self.proprio_dim != 8 or self.proprio_keep):
            raise ValueError("TinyVLAConfig.proprio_features 'panda_tcp' reads 7 joints + gripper "
                             "(proprio_dim 8) and takes no proprio_keep")
        if not 1 <= int(self.chunk_horizon) <= MAX_CHUNK_HORIZON:
            raise ValueError(f"TinyVLAConfig.chunk_horizon must be in [1, {MAX_CHUNK_HORIZON}], got {self.chunk_horizon}")
        try:
            self.action_bin_stride = validate_bin_stride(self.action_bin_stride, self.n_action_bins)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"TinyVLAConfig.action_bin_stride: {exc}") from exc
        if self.vision_keypoints < 0:
            raise ValueError(f"TinyVLAConfig.vision_keypoints must be >= 0, got {self.vision_keypoints}")
        if self.vision_keypoints and self.image_size % KEYPOINT_STRIDE:
            raise ValueError(f"TinyVLAConfig.image_size ({self.image_size}) must be a multiple of {KEYPOINT_STRIDE} "
                             "when vision_keypoints > 0")
        if self.named_keypoint and not self.vision_keypoints:
            raise ValueError("TinyVLAConfig.named_keypoint needs vision_keypoints > 0")
        self.named_relative = tuple(int(i) for i in self.named_relative)
        if self.named_relative and (not self.named_keypoint
                                    or any(not 0 <= i < self.vision_keypoints for i in self.named_relative)):
            raise ValueError(f"TinyVLAConfig.named_relative needs named_keypoint and keypoint indices in "
                             f"[0, {self.vision_keypoints}), got {self.named_relative}")
        if self.vision_layers < 0:
            raise ValueError(f"TinyVLAConfig.vision_layers must be >= 0, got {self.vision_layers}")
        if self.d_model % self.n_heads:
            raise ValueError(f"TinyVLAConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"TinyVLAConfig head dim {self.d_model // self.n_heads} must be even (rotary embedding)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"TinyVLAConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.image_size % (self.patch_size * self.patch_pool):
            raise ValueError(
                f"TinyVLAConfig.image_size ({self.image_size}) must be a multiple of patch_size*patch_pool "
                f"({self.patch_size * self.patch_pool})"
            )
        if self.vision_layers and self.d_vision % self.vision_heads:
            raise ValueError(f"TinyVLAConfig.d_vision ({self.d_vision}) must be divisible by vision_heads ({self.vision_heads})")
        if self.vocab_size <= self.n_action_bins:
            raise ValueError(f"TinyVLAConfig.vocab_size ({self.vocab_size}) must exceed n_action_bins ({self.n_action_bins})")
        if self.model_type not in (TARGET_MODEL_TYPE, DRAFT_MODEL_TYPE):
            raise ValueError(f"TinyVLAConfig.model_type must be {TARGET_MODEL_TYPE!r} or {DRAFT_MODEL_TYPE!r}, got {self.model_type!r}")
        if "{instruction}" not in self.prompt_template:
            raise ValueError(f"TinyVLAConfig.prompt_template must contain '{{instruction}}', got {self.prompt_template!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_patches(self) -> int:
        """Vision tokens per image: the pooled patch grid plus the keypoint tokens."""
        return (self.image_size // (self.patch_size * self.patch_pool)) ** 2 + self.vision_keypoints

    def llama_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.d_model, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads,
            max_position_embeddings=self.max_positions, rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_theta": self.rope_theta, "rope_type": "default"}, tie_word_embeddings=False,
        )

    @classmethod
    def from_dict(cls, data: dict) -> "TinyVLAConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**data)


#: Named sizes. "default" target: 8 x 384 (~15 M params), a step dominated by compute.
PRESETS: dict[str, dict] = {
    "test": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, intermediate_size=128, d_vision=32,
                 vision_layers=1, vision_heads=2),
    "test_kp": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, intermediate_size=128, d_vision=32,
                    vision_layers=1, vision_heads=2, vision_keypoints=4),
    "test_kp_named": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, intermediate_size=128, d_vision=32,
                          vision_layers=1, vision_heads=2, vision_keypoints=6, proprio_features="panda_tcp",
                          named_keypoint=True),
    "default": dict(d_model=384, n_layers=8, n_heads=6, n_kv_heads=6, intermediate_size=1024, d_vision=128,
                    vision_layers=2, vision_heads=4),
    # the shipped target: 8 x 256 (~7.7 M params), trains in well under an hour on a 2-core CPU
    "small": dict(d_model=256, n_layers=8, n_heads=4, n_kv_heads=4, intermediate_size=768, d_vision=128,
                  vision_layers=2, vision_heads=4),
    # "small" plus 16 spatial-softmax keypoint tokens (localises objects on unseen layouts)
    "small_kp": dict(d_model=256, n_layers=8, n_heads=4, n_kv_heads=4, intermediate_size=768, d_vision=128,
                     vision_layers=2, vision_heads=4, vision_keypoints=16),
    # "small_kp" whose proprio token is the TCP pose (forward kinematics in the model)
    "small_kp_tcp": dict(d_model=256, n_layers=8, n_heads=4, n_kv_heads=4, intermediate_size=768, d_vision=128,
                         vision_layers=2, vision_heads=4, vision_keypoints=16, proprio_features="panda_tcp"),
    # "small_kp_tcp" plus the instruction-selected keypoint token
    "small_kp_named": dict(d_model=256, n_layers=8, n_heads=4, n_kv_heads=4, intermediate_size=768, d_vision=128,
                           vision_layers=2, vision_heads=4, vision_keypoints=16, proprio_features="panda_tcp",
                           named_keypoint=True),
    # ... whose named token also holds the push target's and the gripper's offsets from the object
    "small_kp_named_rel": dict(d_model=256, n_layers=8, n_heads=4, n_kv_heads=4, intermediate_size=768,
                               d_vision=128, vision_layers=2, vision_heads=4, vision_keypoints=16,
                               proprio_features="panda_tcp", named_keypoint=True, named_relative=(4, 5)),
    # "small_kp" that reads only the gripper opening from proprio (no copycat shortcut; not shipped yet)
    "small_kp_grip": dict(d_model=256, n_layers=8, n_heads=4, n_kv_heads=4, intermediate_size=768, d_vision=128,
                          vision_layers=2, vision_heads=4, vision_keypoints=16, proprio_keep=(7,)),
}
#: Independent draft model geometry per preset (1 decoder layer).
DRAFT_PRESETS: dict[str, dict] = {
    "test": dict(d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, intermediate_size=128),
    "default": dict(d_model=384, n_layers=1, n_heads=6, n_kv_heads=6, intermediate_size=1024),
    "small": dict(d_model=256, n_layers=1, n_heads=4, n_kv_heads=4, intermediate_size=768),
}


# --- vision ------------------------------------------------------------------------------

class SpatialSoftmaxKeypoints(nn.Module):
    """Conv stem -> K heat maps -> soft-argmax keypoint tokens (Levine et al.'s spatial softmax).

    A keypoint is an expected image position, so it is exact to a fraction of a cell and
    generalises to layouts never seen in training, where a patch token has to memorise
    where in its 32 px square an object sits.
    forward: images (B, 3, S, S) normalised -> (B, K, d_vision) tokens from (x, y, peak).
    """

    def __init__(self, n_keypoints: int, d_vision: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=KEYPOINT_STRIDE, stride=KEYPOINT_STRIDE), nn.GELU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1), nn.GELU(),
            nn.Conv2d(width, n_keypoints, kernel_size=1),
        )
        # start sharp (x30): a soft softmax averages the background in and the keypoints settle
        # at ~5 cm; measured on held-out layouts, x30 reached ~2 cm in 1000 steps (x5 and x90: 5 cm)
        self.log_temperature = nn.Parameter(torch.tensor(3.4))
        self.embed = nn.Sequential(nn.Linear(3, d_vision), nn.GELU(), nn.Linear(d_vision, d_vision))
        # which keypoint a token is must be visible next to its coordinates' embedding (~0.5 per
        # channel): at 0.02 the decoder could not tell the red keypoint from the blue one
        self.identity = nn.Parameter(torch.randn(1, n_keypoints, d_vision) * IDENTITY_STD)
        self.last_coordinates: torch.Tensor | None = None  # of the last forward: training's auxiliary loss reads it

    def coordinates(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, 3): soft-argmax x, y in [-1, 1] (image right / down) and the map's peak in (-1, 1)."""
        maps = self.stem(images)  # (B, K, h, w)
        b, k, h, w = maps.shape
        logits = maps.flatten(2) * self.log_temperature.exp()
        prob = logits.softmax(dim=-1).view(b, k, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=maps.dtype)
        ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=maps.dtype)
        x = (prob.sum(dim=2) * xs).sum(dim=-1)
        y = (prob.sum(dim=3) * ys).sum(dim=-1)
        peak = torch.tanh(logits.amax(dim=-1) - logits.mean(dim=-1))  # how sharply the map found its feature
        return torch.stack([x, y, peak], dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        coords = self.coordinates(images)
        self.last_coordinates = coords
        return self.embed(coords) + self.identity


class PatchVisionEncoder(nn.Module):
    """RGB image -> patch tokens: conv patchify, conv pool, small transformer.

    forward: images float (B, 3, H, W) normalised -> (B, n_patches, d_vision).
    """

    def __init__(self, cfg: TinyVLAConfig) -> None:
        super().__init__()
        dv = cfg.d_vision
        self.patch = nn.Conv2d(3, dv, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pool = nn.Conv2d(dv, dv, kernel_size=cfg.patch_pool, stride=cfg.patch_pool)
        self.pos = nn.Parameter(torch.randn(1, cfg.n_patches - cfg.vision_keypoints, dv) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dv, cfg.vision_heads, 2 * dv, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.vision_layers)
        )
        self.norm = nn.LayerNorm(dv)
        self.keypoints = SpatialSoftmaxKeypoints(cfg.vision_keypoints, dv) if cfg.vision_keypoints else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.gelu(self.patch(images)))  # (B, dv, g, g)
        x = x.flatten(2).transpose(1, 2) + self.pos
        if self.keypoints is not None:
            x = torch.cat([x, self.keypoints(images)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


@dataclass
class TrainOutputs:
    """Teacher-forcing outputs over the whole padded sequence (prefix + targets).

    logits (B,T,V), hidden (B,T,d): at the positions predicting target_ids.
    input_embeds (B,S,d), all_hidden (B,S,d): every position (left-padded prefix first).
    valid (B,S) bool: False on padding. target_offset: index in S of the first target token.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    input_embeds: torch.Tensor
    all_hidden: torch.Tensor
    valid: torch.Tensor
    target_offset: int


class TinyVLA(nn.Module):
    """Small VLA behind the ``VLAModel`` interface (also the independent draft model)."""

    #: Trained on frames rendered at the input size; any antialiased shrink serves.
    image_resize: ResizeMethod = "area"
    can_prefill_with_guess = True

    def __init__(self, cfg: TinyVLAConfig, text_tokenizer: VLATextTokenizer, norm_stats: ActionNormStats | None = None) -> None:
        super().__init__()
        if text_tokenizer.vocab_size != cfg.vocab_size:
            raise ValueError(f"tokenizer has {text_tokenizer.vocab_size} ids but config.vocab_size = {cfg.vocab_size}")
        self.config = cfg
        self.text_tokenizer = text_tokenizer
        self.action_tokenizer = ActionTokenizer(cfg.vocab_size, norm_stats, cfg.n_action_bins,
                                                cfg.action_bin_stride)
        self.vision_encoder = PatchVisionEncoder(cfg) if cfg.has_vision_encoder else None
        self.projector = nn.Sequential(nn.Linear(cfg.d_vision, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, cfg.d_model))
        n_features = cfg.proprio_dim if cfg.proprio_features == "raw" else FEATURE_DIMS[cfg.proprio_features]
        self.proprio_proj = nn.Sequential(nn.Linear(n_features, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, cfg.d_model))
        keep = torch.ones(cfg.proprio_dim)
        if cfg.proprio_keep:
            keep.zero_()
            keep[list(cfg.proprio_keep)] = 1.0
        self.register_buffer("proprio_keep_mask", keep, persistent=False)
        if cfg.named_keypoint:
            # zero selection logits: the token starts as the mean keypoint and training sharpens it
            self.keypoint_select = nn.Linear(cfg.d_model, cfg.vision_keypoints)
            nn.init.zeros_(self.keypoint_select.weight)
            nn.init.zeros_(self.keypoint_select.bias)
            n_in = 3 + 2 * len(cfg.named_relative)
            self.named_proj = nn.Sequential(nn.Linear(n_in, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, cfg.d_model))
        self.backbone = LlamaModel(cfg.llama_config())
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_positions, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._prompt_ids: dict[str, torch.Tensor] = {}
        self.last_selection_logits: torch.Tensor | None = None  # of the last forward_train (named keypoint)
        self.eval()

    # --- VLAModel protocol -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def chunk_horizon(self) -> int:
        return int(self.config.chunk_horizon)

    def _rope(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + n
        if end > self.config.max_positions:
            raise ValueError(f"sequence of {end} positions exceeds max_positions={self.config.max_positions}")
        return self.rope_cos[start:end].to(self.dtype), self.rope_sin[start:end].to(self.dtype)

    def _images_to_tensor(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B,H,W,3) uint8 [0,255] or float [0,1] -> normalised (B,3,S,S) at the model's input size."""
        x = torch.as_tensor(images, device=self.device)
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images of shape (B, H, W, 3), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return ((x - 0.5) / 0.25).to(self.dtype)

    @torch.inference_mode()
    def encode_vision(self, image: np.ndarray) -> VisionFeatures:
        """HxWx3 RGB image -> VisionFeatures with patches (1, n_patches, d_vision) and, for a
        keypoint model, the raw keypoints (1, K, 3)."""
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}")
        patches, keypoints = self.encode_vision_full(img[None])
        return VisionFeatures(patches=patches, keypoints=keypoints)

    def encode_vision_batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B,H,W,3) images -> (B, n_patches, d_vision). Gradients flow (training)."""
        return self.encode_vision_full(images)[0]

    def encode_vision_full(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B,H,W,3) images -> patches (B, n_patches, d_vision), raw keypoints (B, K, 3) or None."""
        if self.vision_encoder is None:
            raise ValueError("this model has no vision encoder (a draft model reads the target's vision features)")
        patches = self.vision_encoder(self._images_to_tensor(images))
        kp = self.vision_encoder.keypoints
        return patches, (kp.last_coordinates if kp is not None else None)

    def select_keypoint(self, keypoints: torch.Tensor, prompt_embeds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instruction-selected keypoint: keypoints (B, K, 3), each sample's prompt embeddings (n_b, d)
        -> (named token (B, d), selection logits (B, K))."""
        if not self.config.named_keypoint:
            raise ValueError("this model has no named-keypoint token (config.named_keypoint is false)")
        if keypoints is None or keypoints.shape[1:] != (self.config.vision_keypoints, 3):
            got = None if keypoints is None else tuple(keypoints.shape)
            raise ValueError(f"the named-keypoint token needs raw keypoints (B, {self.config.vision_keypoints}, 3), got {got}")
        # a sum, not a mean: the colour word is one of ~12 prompt tokens, and a mean would shrink
        # the difference between "red" and "blue" twelvefold (the shared template is a constant)
        pooled = torch.stack([e.sum(dim=0) for e in prompt_embeds])
        logits = self.keypoint_select(pooled) * SELECTION_GAIN
        keypoints = keypoints.to(logits.dtype)
        coords = (logits.softmax(dim=-1).unsqueeze(-1) * keypoints).sum(dim=1)
        offsets = [keypoints[:, i, :2] - coords[:, :2] for i in self.config.named_relative]
        return self.named_proj(torch.cat([coords, *offsets], dim=-1)), logits

    def prompt_ids(self, instruction: str) -> torch.Tensor:
        """BOS + tokenised prompt, (n,) int64 on the model's device (cached per instruction)."""
        key = f"{self.device}|{instruction}"  # a model moved to another device gets fresh ids
        ids = self._prompt_ids.get(key)
        if ids is None:
            text = self.config.prompt_template.format(instruction=instruction.strip())
            with torch.inference_mode(False):  # a normal tensor, usable by training code too
                ids = torch.tensor([self.text_tokenizer.bos_token_id, *self.text_tokenizer.encode(text)],
                                   dtype=torch.long, device=self.device)
            if len(self._prompt_ids) > 64:
                self._prompt_ids.clear()
            self._prompt_ids[key] = ids
        return ids

    def _proprio_tensor(self, proprio: np.ndarray | torch.Tensor, batch: int) -> torch.Tensor:
        if proprio is None:
            raise ValueError(f"proprio is required: {self.config.proprio_dim} values (joint positions [rad], gripper [m])")
        p = torch.as_tensor(np.asarray(proprio, dtype=np.float32) if not torch.is_tensor(proprio) else proprio,
                            device=self.device).to(self.dtype).reshape(batch, -1)
        if p.shape[1] != self.config.proprio_dim:
            raise ValueError(f"proprio must have {self.config.proprio_dim} values per sample, got {p.shape[1]}")
        if not bool(torch.isfinite(p).all()):  # NaN would reach the logits and defeat the token masks
            raise ValueError("proprio contains NaN or Inf")
        return proprio_features(self.config.proprio_features, p * self.proprio_keep_mask.to(p.dtype))

    def prefix_embeds(self, vision: VisionFeatures, instruction: str, proprio: np.ndarray) -> torch.Tensor:
        """Prefix input embeddings (1, P, d): projected patches, proprio token, BOS + prompt."""
        patches = vision.patches.to(device=self.device, dtype=self.dtype)
        if patches.shape[-1] != self.config.d_vision:
            raise ValueError(f"vision features have width {patches.shape[-1]}, model expects d_vision={self.config.d_vision}")
        prompt = self.backbone.embed_tokens(self.prompt_ids(instruction))
        parts = [self.projector(patches), self.proprio_proj(self._proprio_tensor(proprio, 1))[:, None, :]]
        if self.config.named_keypoint:
            kps = None if vision.keypoints is None else vision.keypoints.to(device=self.device, dtype=self.dtype)
            parts.append(self.select_keypoint(kps, [prompt])[0][:, None, :])
        parts.append(prompt[None])
        return torch.cat(parts, dim=1)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (...) -> input embeddings (..., d)."""
        return self.backbone.embed_tokens(tokens)

    def new_cache(self, capacity: int) -> StaticKVCache:
        cfg = self.config
        return StaticKVCache(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, capacity, self.device, self.dtype)

    def forward_embeds(self, embeds: torch.Tensor, cache: StaticKVCache, logits_last_only: bool = False) -> StepOutput:
        """Feed input embeddings (1, n, d) after ``cache``; returns outputs of the n positions."""
        n = embeds.shape[1]
        cos, sin = self._rope(len(cache), n)
        x = run_llama_layers(self.backbone.layers, embeds, cos, sin, self.config.n_heads, self.config.n_kv_heads, cache=cache)
        hidden = self.backbone.norm(x)[0]
        logits = self.lm_head(hidden[-1:] if logits_last_only else hidden).float()
        return StepOutput(logits=logits, hidden=hidden)

    @torch.inference_mode()
    def prefill(
        self, vision: VisionFeatures, instruction: str, proprio: np.ndarray, return_all_hidden: bool = False
    ) -> tuple[StaticKVCache, StepOutput]:
        """Run the prefix; logits (1, V) of its last position; hidden (1, d), or (P, d) with return_all_hidden."""
        embeds = self.prefix_embeds(vision, instruction, proprio)
        cache = self.new_cache(embeds.shape[1] + CACHE_MARGIN)
        out = self.forward_embeds(embeds, cache, logits_last_only=True)
        if not return_all_hidden:
            out = StepOutput(logits=out.logits, hidden=out.hidden[-1:])
        return cache, out

    @torch.inference_mode()
    def prefill_with_guess(
        self, vision: VisionFeatures, instruction: str, proprio: np.ndarray, guess: list[int],
        return_all_hidden: bool = False,
    ) -> tuple[StaticKVCache, StepOutput, StepOutput]:
        """ONE pass over the prefix and guessed output tokens -> (cache holding both, the prefix's output
        as ``prefill`` returns it, the guess positions' output as a verify pass over ``guess`` returns it)."""
        prefix = self.prefix_embeds(vision, instruction, proprio)
        n = prefix.shape[1]
        ids = torch.tensor(guess, dtype=torch.long, device=self.device)
        embeds = torch.cat([prefix, self.backbone.embed_tokens(ids)[None].to(prefix.dtype)], dim=1)
        cache = self.new_cache(embeds.shape[1] + CACHE_MARGIN)
        full = self.forward_embeds(embeds, cache)
        hidden = full.hidden[:n] if return_all_hidden else full.hidden[n - 1 : n]
        return (cache, StepOutput(logits=full.logits[n - 1 : n], hidden=hidden),
                StepOutput(logits=full.logits[n:], hidden=full.hidden[n:]))

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: StaticKVCache) -> StepOutput:  # type: ignore[override]
        """tokens (n,) int64 -> logits (n, V) float32, hidden (n, d); the cache grows by n."""
        return self.forward_embeds(self.backbone.embed_tokens(tokens)[None], cache)

    # --- training ------------------------------------------------------------------
    def forward_train(
        self,
        images: np.ndarray | torch.Tensor | None,
        instructions: list[str],
        proprio: np.ndarray | torch.Tensor,
        target_ids: torch.Tensor,
        vision_patches: torch.Tensor | None = None,
        return_full: bool = False,
        vision_keypoints: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | TrainOutputs:
        """Teacher forcing over a batch; see the module docstring for shapes.

        Prefixes (their prompts differ in length) are left-padded so every sample's
        targets start at the same index; positions count from each sample's first real token.
        """
        bsz = len(instructions)
        if vision_patches is None:
            vision_patches, vision_keypoints = self.encode_vision_full(images)
        patches = vision_patches.to(device=self.device, dtype=self.dtype)
        target_ids = torch.as_tensor(target_ids, device=self.device, dtype=torch.long)
        if target_ids.shape[0] != bsz or patches.shape[0] != bsz:
            raise ValueError(f"batch sizes differ: {bsz} instructions, {patches.shape[0]} images, {target_ids.shape[0]} targets")
        vis = self.projector(patches)
        prop = self.proprio_proj(self._proprio_tensor(proprio, bsz))[:, None, :]
        prompts = [self.prompt_ids(s) for s in instructions]
        prompt_embeds = [self.backbone.embed_tokens(p) for p in prompts]
        extra = [prop]
        self.last_selection_logits = None  # training's selection loss reads it (set below when there is one)
        if self.config.named_keypoint:
            kps = None if vision_keypoints is None else vision_keypoints.to(device=self.device, dtype=self.dtype)
            named, self.last_selection_logits = self.select_keypoint(kps, prompt_embeds)
            extra.append(named[:, None, :])
        extra_t = torch.cat(extra, dim=1)
        n_prefix = [vis.shape[1] + extra_t.shape[1] + len(p) for p in prompts]
        p_max = max(n_prefix)
        tgt = self.backbone.embed_tokens(target_ids)
        t_len = target_ids.shape[1]
        seq_len = p_max + t_len
        embeds = vis.new_zeros(bsz, seq_len, self.config.d_model)
        valid = torch.zeros(bsz, seq_len, dtype=torch.bool, device=self.device)
        for b, prompt in enumerate(prompts):
            start = p_max - n_prefix[b]
            embeds[b, start:p_max] = torch.cat([vis[b], extra_t[b], prompt_embeds[b]], dim=0)
            valid[b, start:] = True
        embeds[:, p_max:] = tgt
        offsets = torch.tensor([p_max - n for n in n_prefix], device=self.device)
        positions = (torch.arange(seq_len, device=self.device)[None, :] - offsets[:, None]).clamp(min=0)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(seq_len, dtype=torch.bool, device=self.device)
        mask = (causal[None] & valid[:, None, :]) | eye[None]  # padded queries see themselves: no NaN rows
        cos = self.rope_cos.to(self.dtype)[positions]
        sin = self.rope_sin.to(self.dtype)[positions]
        x = run_llama_layers(self.backbone.layers, embeds, cos, sin, self.config.n_heads, self.config.n_kv_heads,
                             attn_mask=mask[:, None])
        all_hidden = self.backbone.norm(x)
        hidden = all_hidden[:, p_max - 1 : p_max - 1 + t_len]
        logits = self.lm_head(hidden).float()
        if not return_full:
            return logits, hidden
        return TrainOutputs(logits, hidden, embeds, all_hidden, valid, p_max)

    # --- persistence ---------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path, storage_dtype: str = "float32") -> None:
        """Write config.json, model.safetensors (in ``storage_dtype``), tokenizer, statistics."""
        out = save_checkpoint(self, out_dir, asdict(self.config), self.config.model_type, storage_dtype)
        self.text_tokenizer.save(out)
        if self.config.model_type == TARGET_MODEL_TYPE:
            save_norm_stats(out / STATS_FILE, {self.config.unnorm_key: self.action_tokenizer.stats})

    @classmethod
    def from_pretrained(
        cls, ckpt_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> "TinyVLA":
        """Load a checkpoint dir; any missing/broken file raises ModelLoadError naming it."""
        d = Path(ckpt_dir)
        cfg = TinyVLAConfig.from_dict(read_config(d))
        try:
            tok = VLATextTokenizer.load(d)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        stats = None
        if cfg.model_type == TARGET_MODEL_TYPE:
            try:
                stats = load_norm_stats(d / STATS_FILE, cfg.unnorm_key)
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from exc
        try:
            model = cls(cfg, tok, stats)
        except ValueError as exc:
            raise ModelLoadError(f"{d / CONFIG_FILE}: {exc}") from exc
        load_weights(model, d / WEIGHTS_FILE)
        return model.to(device=torch.device(device), dtype=dtype).eval()
