"""OpenVLA (Prismatic HF export) behind the project's ``VLAModel`` interface.

Native: the checkpoint's own Python (``trust_remote_code``) is never run. The
vision towers are rebuilt from timm key names (``vision_vit.py``), the LLM is
transformers' ``LlamaForCausalLM`` and its ``DynamicCache`` (truncated with
``crop(-k)``).

Checkpoint directory (the published ``openvla/openvla-7b`` layout)::

    config.json                      model_type "openvla", vision_backbone_id, timm_model_ids, image_sizes,
                                     use_fused_vision_backbone, text_config (llama), n_action_bins,
                                     pad_to_multiple_of, norm_stats {dataset: {"action": {q01, q99, mask}}}
    model.safetensors.index.json     {"weight_map": {key: shard}} + shards   (or one model.safetensors)
    tokenizer.json, tokenizer_config.json   LLaMA-2 tokenizer (+ "<PAD>")
    preprocessor_config.json         optional: means / stds / interpolations per tower
    dataset_statistics.json          optional: used when config.json lacks norm_stats

Weight keys: ``vision_backbone.featurizer.*``, ``vision_backbone.fused_featurizer.*``,
``projector.fc1/fc2/fc3.*``, ``language_model.model.*``, ``language_model.lm_head.weight``.

Sequence (as OpenVLA's ``predict_action``)::

    [BOS] [256 projected patches] "In: What action should the robot take to {instruction}?\\nOut:" | "▁" a1..a7

How OpenVLA fits the project's grammar (narration, EON, 7 actions): OpenVLA
emits no narration. The prefix stops after "Out:", the EON token is "▁" (the
empty SentencePiece piece, id 29871 in LLaMA-2, which ``predict_action``
appends) and ``text_token_ids()`` is empty, so the grammar forces EON as the
first token and the model then sees exactly OpenVLA's input.

Differences from OpenVLA's reference implementation (all deliberate):
- logits cover the first ``vocab_size = text_config.vocab_size - pad_to_multiple_of``
  ids (32000); the padding rows (``<PAD>`` and 63 unused rows) are dropped from the
  LM head, so greedy decoding cannot pick them (the reference could, never does in practice);
- the vision towers stop after the block whose output is used (second-to-last);
  the reference also runs the last block and discards it: same features, less work;
- proprioception is ignored (OpenVLA does not read it).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig

if TYPE_CHECKING:
    from tokenizers import Tokenizer

from specvla_ros.core.models.action_tokenizer import ActionNormStats, ActionTokenizer
from specvla_ros.core.models.interface import ModelLoadError, StepOutput, VisionFeatures, read_json_object
from specvla_ros.core.models.static_llama import StaticCacheHandle, StaticLlamaRunner
from specvla_ros.core.models.frame_resize import ResizeMethod, resize_frame
from specvla_ros.core.models.vision_vit import PrismaticProjector, ViTConfig, ViTFeaturizer, preprocess_image, timm_family

LOG = logging.getLogger(__name__)

MODEL_TYPE = "openvla"
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
#: SentencePiece's empty piece; OpenVLA's predict_action appends it after "Out:".
EMPTY_PIECE = "\u2581"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_TOWERS = (("featurizer", "vision_backbone.featurizer."), ("fused_featurizer", "vision_backbone.fused_featurizer."))
_LLM_PREFIX = "language_model."
_PROJ_PREFIX = "projector."
#: Prismatic's defaults when config.json omits timm_model_ids / image_sizes (facts of configuration_prismatic).
_BACKBONE_DEFAULTS: dict[str, tuple[list[str], list[int]]] = {
    "dinosiglip-vit-so-224px": (["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"], [224, 224]),
    "dinosiglip-vit-so-384px": (["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384"], [384, 384]),
    "siglip-vit-so400m": (["vit_so400m_patch14_siglip_224"], [224]),
    "dinov2-vit-l": (["vit_large_patch14_reg4_dinov2.lvd142m"], [224]),
}
_DROP_TEXT_KEYS = {"model_type", "torch_dtype", "dtype", "architectures", "_name_or_path", "transformers_version"}


# --- tokenizer ---------------------------------------------------------------------------

class OpenVLATextTokenizer:
    """LLaMA tokenizer (``tokenizer.json``) with the project's ``TextTokenizer`` protocol.

    vocab_size: OpenVLA's de-tokenisation vocabulary (text_config.vocab_size - pad_to_multiple_of).
    eon_token_id: id of "▁"; bos_token_id: id of the BOS token.
    """

    def __init__(self, tokenizer: "Tokenizer", vocab_size: int, bos_token: str = "<s>") -> None:
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        bos = tokenizer.token_to_id(bos_token)
        eon = tokenizer.token_to_id(EMPTY_PIECE)
        if bos is None:
            raise ValueError(f"tokenizer has no BOS token {bos_token!r}")
        if eon is None:
            raise ValueError(f"tokenizer has no empty piece {EMPTY_PIECE!r} (needed after 'Out:')")
        if not 0 <= eon < vocab_size or not 0 <= bos < vocab_size:
            raise ValueError(f"BOS ({bos}) / empty piece ({eon}) ids outside the vocabulary of {vocab_size}")
        self.bos_token_id = int(bos)
        self.eon_token_id = int(eon)

    @classmethod
    def load(cls, ckpt_dir: Path, vocab_size: int) -> "OpenVLATextTokenizer":
        from tokenizers import Tokenizer

        path = ckpt_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{path}: missing (OpenVLA checkpoints ship the LLaMA tokenizer.json)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception subclass on parse errors
            raise ModelLoadError(f"{path}: cannot load tokenizer ({exc})") from exc
        bos = "<s>"
        cfg_path = ckpt_dir / "tokenizer_config.json"
        if cfg_path.is_file():
            try:
                value = json.loads(cfg_path.read_text()).get("bos_token", bos)
            except (json.JSONDecodeError, AttributeError) as exc:
                raise ModelLoadError(f"{cfg_path}: not a valid JSON object ({exc})") from exc
            bos = value.get("content", bos) if isinstance(value, dict) else (value or bos)
        if tok.get_vocab_size(with_added_tokens=True) < vocab_size:
            raise ModelLoadError(f"{path}: tokenizer has {tok.get_vocab_size(with_added_tokens=True)} ids, "
                                 f"fewer than the model's {vocab_size}")
        try:
            return cls(tok, vocab_size, bos)
        except ValueError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def text_token_ids(self) -> list[int]:
        """OpenVLA emits no narration: no text id is allowed before EON."""
        return []

    def prompt_ids(self, instruction: str) -> list[int]:
        """BOS + OpenVLA's prompt (lower-cased instruction, as OpenVLA's examples do); ends before "▁"."""
        ids = [self.bos_token_id, *self.encode(PROMPT_TEMPLATE.format(instruction=instruction.strip().lower()))]
        while len(ids) > 1 and ids[-1] == self.eon_token_id:  # EON is emitted by the decoder, not the prefix
            ids.pop()
        return ids


class PendingStatsActionTokenizer(ActionTokenizer):
    """Action tokenizer of a checkpoint whose dataset is not chosen yet (several ``norm_stats``, no
    ``unnorm_key``): token <-> bin maps work, anything that needs statistics raises ModelLoadError.
    A caller that knows the dataset replaces it (e.g. ``Policy`` with ``PolicyConfig.unnorm_key``)."""

    def __init__(self, vocab_size: int, n_bins: int, message: str) -> None:
        super().__init__(vocab_size, None, n_bins)
        self.message = message

    def normalize(self, action: np.ndarray) -> np.ndarray:
        raise ModelLoadError(self.message)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        raise ModelLoadError(self.message)


# --- cache -------------------------------------------------------------------------------

class LlamaKVCache:
    """transformers ``DynamicCache`` with the project's ``KVCache`` protocol (any-length truncation)."""

    def __init__(self, config: LlamaConfig) -> None:
        from transformers import DynamicCache

        self.inner = DynamicCache(config=config)

    def __len__(self) -> int:
        return int(self.inner.get_seq_length())

    def truncate(self, length: int) -> None:
        cur = len(self)
        if not 0 <= length <= cur:
            raise ValueError(f"cannot truncate a cache of length {cur} to {length}")
        if length < cur:
            self.inner.crop(length - cur)  # transformers 5: negative = tokens to drop


# --- model -------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpenVLAGeometry:
    """Decoder geometry (what a matching EAGLE head needs); ``d_model`` = LLM hidden size."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    rope_theta: float
    max_positions: int
    vocab_size: int
    n_patches: int
    d_vision: int


class OpenVLA(nn.Module):
    """OpenVLA-class VLA: fused ViT featurizers + projector + LLaMA decoder.

    Use ``load_openvla`` (or ``load_vla`` on a dir whose config says model_type "openvla").
    """

    #: OpenVLA's processor resizes the uint8 frame with Pillow's bicubic.
    image_resize: ResizeMethod = "pil_bicubic"
    #: Not implemented for the adapter: history drafts are verified in the first verify pass instead.
    can_prefill_with_guess = False
    chunk_horizon = 1  # OpenVLA emits one action per decision

    def __init__(self, towers: list[ViTFeaturizer], projector: PrismaticProjector, llm: nn.Module,
                 llm_config: LlamaConfig, text_tokenizer: OpenVLATextTokenizer, action_tokenizer: ActionTokenizer,
                 norms: list[tuple[tuple, tuple]], unnorm_key: str | None) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)
        self.projector = projector
        self.llm = llm
        self.llm_config = llm_config
        self.text_tokenizer = text_tokenizer
        self.action_tokenizer = action_tokenizer
        self.norms = norms
        self.unnorm_key = unnorm_key
        self._static: StaticLlamaRunner | None = None
        c = llm_config
        self.config = OpenVLAGeometry(
            d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
            n_kv_heads=c.num_key_value_heads or c.num_attention_heads, intermediate_size=c.intermediate_size,
            rope_theta=float(c.rope_parameters.get("rope_theta", 10000.0)), max_positions=c.max_position_embeddings,
            vocab_size=text_tokenizer.vocab_size, n_patches=towers[0].cfg.n_patches,
            d_vision=sum(t.embed_dim for t in towers),
        )

    # --- VLAModel attributes --------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    @property
    def vocab_size(self) -> int:
        return self.text_tokenizer.vocab_size

    @property
    def image_size(self) -> int:
        """Side of the square frames the towers take (224 for OpenVLA-7B); other sizes are resized."""
        return self.towers[0].cfg.image_size

    @property
    def lm_head(self) -> nn.Linear:
        """LM head over the ``vocab_size`` real ids: (..., d) -> (..., V)."""
        return self.llm.lm_head

    # --- vision ---------------------------------------------------------------------------
    def encode_vision_batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> concatenated tower features (B, n_patches, d_vision) (no projector)."""
        imgs = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        if imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise ValueError(f"expected images of shape (B, H, W, 3), got {tuple(imgs.shape)}")
        feats, resized = [], {}
        for tower, (mean, std) in zip(self.towers, self.norms):
            size = tower.cfg.image_size
            if size not in resized:  # once per size, on the CPU with Pillow as OpenVLA's processor
                resized[size] = imgs if tuple(imgs.shape[1:3]) == (size, size) else [
                    torch.from_numpy(resize_frame(im.cpu().numpy(), (size, size), "pil_bicubic")) for im in imgs]
            px = torch.cat([preprocess_image(im, size, mean, std) for im in resized[size]])
            feats.append(tower(px.to(self.device, self.dtype)))
        return torch.cat(feats, dim=-1)

    @torch.inference_mode()
    def encode_vision(self, image: np.ndarray) -> VisionFeatures:
        """HxWx3 uint8 RGB -> VisionFeatures with patches (1, n_patches, d_vision)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        return VisionFeatures(patches=self.encode_vision_batch(image[None]))

    # --- decoder --------------------------------------------------------------------------
    def prompt_ids(self, instruction: str) -> torch.Tensor:
        return torch.tensor(self.text_tokenizer.prompt_ids(instruction), dtype=torch.long, device=self.device)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (...) -> input embeddings (..., d)."""
        return self.llm.model.embed_tokens(tokens)

    def prefix_embeds(self, vision: VisionFeatures, instruction: str, proprio: np.ndarray | None = None) -> torch.Tensor:
        """(1, P, d): BOS, projected patches, prompt tokens (Prismatic inserts patches after BOS)."""
        ids = self.embed_tokens(self.prompt_ids(instruction))
        patches = self.projector(vision.patches.to(device=self.device, dtype=self.dtype))[0]
        return torch.cat([ids[:1], patches, ids[1:]], dim=0)[None]

    def enable_static_cache(self, capacity: int = 512, cuda_graphs: bool = False, max_step_tokens: int = 9) -> None:
        """Decode on a preallocated cache of ``capacity`` positions; with ``cuda_graphs`` (CUDA only)
        every step of 1..max_step_tokens tokens replays a captured graph. One decision at a time."""
        self._static = StaticLlamaRunner(self.llm.model, self.llm.lm_head, capacity, max_step_tokens, cuda_graphs)

    def disable_static_cache(self) -> None:
        self._static = None

    def new_cache(self) -> LlamaKVCache | StaticCacheHandle:
        return self._static.new_cache() if self._static is not None else LlamaKVCache(self.llm_config)

    def forward_embeds(self, embeds: torch.Tensor, cache: LlamaKVCache | StaticCacheHandle,
                       logits_last_only: bool = False) -> StepOutput:
        """Feed (1, n, d) embeddings after ``cache`` -> logits (n or 1, V) float32, hidden (n, d)."""
        if isinstance(cache, StaticCacheHandle):
            if self._static is None:
                raise RuntimeError("a static cache was passed but the static cache is disabled")
            hidden, logits = self._static.forward(embeds, cache, logits_last_only)
            return StepOutput(logits=logits, hidden=hidden)
        out = self.llm.model(inputs_embeds=embeds, cache=cache.inner, use_cache=True)
        hidden = out.last_hidden_state[0]
        logits = self.llm.lm_head(hidden[-1:] if logits_last_only else hidden).float()
        return StepOutput(logits=logits, hidden=hidden)

    @torch.inference_mode()
    def prefill(self, vision: VisionFeatures, instruction: str, proprio: np.ndarray | None = None,
                return_all_hidden: bool = False) -> tuple[LlamaKVCache, StepOutput]:
        """Run the prefix -> (cache, logits (1, V), hidden (1, d) or (P, d) with return_all_hidden)."""
        cache = self.new_cache()
        out = self.forward_embeds(self.prefix_embeds(vision, instruction, proprio), cache, logits_last_only=True)
        if not return_all_hidden:
            out = StepOutput(logits=out.logits, hidden=out.hidden[-1:])
        return cache, out

    def prefill_with_guess(self, vision: VisionFeatures, instruction: str, proprio: np.ndarray | None,
                           guess: list[int], return_all_hidden: bool = False) -> tuple[LlamaKVCache, StepOutput, StepOutput]:
        raise NotImplementedError("OpenVLA adapter: can_prefill_with_guess is False")

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: LlamaKVCache) -> StepOutput:  # type: ignore[override]
        """tokens (n,) int64 -> logits (n, V) float32, hidden (n, d); the cache grows by n."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device).reshape(-1)
        return self.forward_embeds(self.embed_tokens(tokens)[None], cache)

    @torch.inference_mode()
    def greedy_action(self, image: np.ndarray, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        """Greedy reference decoding as OpenVLA's predict_action (no speculation, no drafter)
        -> (7 action tokens, action in robot units). Unlike predict_action, each argmax is taken
        over the 256 action ids only (what the project's grammar allows)."""
        cache, out = self.prefill(self.encode_vision(image), instruction)
        out = self.forward(torch.tensor([self.text_tokenizer.eon_token_id]), cache)
        tokens = []
        lo = self.action_tokenizer.action_token_begin
        for _ in range(7):
            tok = int(out.logits[-1, lo:].argmax()) + lo
            tokens.append(tok)
            out = self.forward(torch.tensor([tok]), cache)
        arr = np.array(tokens, dtype=np.int64)
        return arr, self.action_tokenizer.decode(arr)


# --- loading -----------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    return read_json_object(path)


def weight_files(ckpt_dir: Path) -> dict[str, list[str]]:
    """{shard path: [keys]} from the index (or the single file); ModelLoadError on a bad index or missing shard."""
    index = ckpt_dir / INDEX_FILE
    if index.exists():
        data = _read_json(index)
        wmap = data.get("weight_map")
        if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
            raise ModelLoadError(f"{index}: needs a non-empty \"weight_map\" of key -> shard file name")
        shards: dict[str, list[str]] = {}
        for key, shard in wmap.items():
            shards.setdefault(str(ckpt_dir / shard), []).append(key)
        for shard in shards:
            if not Path(shard).is_file():
                raise ModelLoadError(f"{shard}: shard listed in {index} is missing")
        return shards
    single = ckpt_dir / SINGLE_FILE
    if single.is_file():
        return {str(single): []}  # keys read from the file itself
    raise ModelLoadError(f"{ckpt_dir}: no weights ({INDEX_FILE} or {SINGLE_FILE})")


def _shard_shapes(shards: dict[str, list[str]]) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, shard)} read from safetensors headers only."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for shard, listed in shards.items():
        try:
            with safe_open(shard, framework="pt") as f:
                keys = set(f.keys())
                for k in keys:
                    shapes[k] = (tuple(f.get_slice(k).get_shape()), shard)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{shard}: cannot read safetensors ({exc})") from exc
        absent = sorted(set(listed) - keys)
        if absent:
            raise ModelLoadError(f"{shard}: the index lists {len(absent)} key(s) this shard lacks, e.g. {absent[:3]}")
    return shapes


def _norm_stats(ckpt_dir: Path, config: dict, unnorm_key: str | None,
                defer_ambiguous: bool = False) -> tuple[ActionNormStats | None, str | None]:
    """(statistics, dataset key); (None, message) when ambiguous and ``defer_ambiguous``."""
    stats = config.get("norm_stats")
    source = ckpt_dir / "config.json"
    if not stats:
        source = ckpt_dir / "dataset_statistics.json"
        if not source.is_file():
            raise ModelLoadError(f"{ckpt_dir}: no action statistics (config.json norm_stats or dataset_statistics.json)")
        stats = _read_json(source)
    if not isinstance(stats, dict) or not stats:
        raise ModelLoadError(f"{source}: action statistics must be an object keyed by dataset name")
    key = unnorm_key or config.get("unnorm_key")
    if key is None:
        if len(stats) != 1:
            message = (f"{source}: several datasets {sorted(stats)}; choose one with unnorm_key "
                       f"(load_openvla(..., unnorm_key=...), PolicyConfig.unnorm_key or \"unnorm_key\" in config.json)")
            if defer_ambiguous:
                return None, message
            raise ModelLoadError(message)
        key = next(iter(stats))
    if key not in stats:
        raise ModelLoadError(f"{source}: unnorm_key {key!r} not found; available: {sorted(stats)}")
    try:
        action = stats[key]["action"]
        q01 = np.asarray(action["q01"], dtype=np.float64)
        mask = np.asarray(action.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
        return ActionNormStats(q01=q01, q99=np.asarray(action["q99"], dtype=np.float64), mask=mask), key
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{source}: statistics of {key!r} are malformed ({exc})") from exc


def _image_norms(ckpt_dir: Path, model_ids: list[str]) -> list[tuple[tuple, tuple]]:
    """Per-tower (mean, std): preprocessor_config.json when shipped, else the timm family default."""
    norms = [timm_family(m)[2] for m in model_ids]
    path = ckpt_dir / "preprocessor_config.json"
    if path.is_file():
        data = _read_json(path)
        means, stds = data.get("means"), data.get("stds")
        if means is not None and stds is not None:
            if len(means) < len(model_ids) or len(stds) < len(model_ids):
                raise ModelLoadError(f"{path}: means/stds list fewer towers than timm_model_ids ({len(model_ids)})")
            norms = [(tuple(means[i]), tuple(stds[i])) for i in range(len(model_ids))]
        strategy = data.get("image_resize_strategy", "resize-naive")
        if strategy != "resize-naive":
            LOG.warning("%s: image_resize_strategy %r; this adapter always resizes naively (OpenVLA's choice)",
                        path, strategy)
    return norms


def _llama_config(config: dict, cfg_path: Path, attn_implementation: str) -> LlamaConfig:
    text = config.get("text_config") or {}
    if not isinstance(text, dict):
        raise ModelLoadError(f"{cfg_path}: text_config must be an object")
    if text.get("model_type", "llama") != "llama":
        raise ModelLoadError(f"{cfg_path}: only LLaMA language models are supported, got {text.get('model_type')!r}")
    kwargs = {k: v for k, v in text.items() if k not in _DROP_TEXT_KEYS}
    try:
        lcfg = LlamaConfig(**kwargs)  # missing keys take LlamaConfig defaults = LLaMA-2 7B, as in the published config
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{cfg_path}: bad text_config ({exc})") from exc
    lcfg._attn_implementation = attn_implementation
    return lcfg


def _build_towers(config: dict, cfg_path: Path, shapes: dict) -> tuple[list[ViTConfig], list[str]]:
    backbone = str(config.get("vision_backbone_id", ""))
    default_ids, default_sizes = _BACKBONE_DEFAULTS.get(backbone, (None, None))
    model_ids = config.get("timm_model_ids") or default_ids
    sizes = config.get("image_sizes") or default_sizes
    fused = config.get("use_fused_vision_backbone")
    if fused is None:  # Prismatic infers it from the backbone id
        fused = backbone.startswith(("dinoclip", "dinosiglip"))
    fused = bool(fused)
    n_towers = 2 if fused else 1
    if not isinstance(model_ids, list) or len(model_ids) < n_towers:
        raise ModelLoadError(f"{cfg_path}: timm_model_ids must list {n_towers} model id(s), got {model_ids!r}")
    if not isinstance(sizes, list) or len(sizes) < n_towers:
        raise ModelLoadError(f"{cfg_path}: image_sizes must list {n_towers} size(s), got {sizes!r}")
    acts = config.get("timm_override_act_layers") or [None] * n_towers
    cfgs = []
    for i, (_, prefix) in enumerate(_TOWERS[:n_towers]):
        sub = {k[len(prefix):]: v[0] for k, v in shapes.items() if k.startswith(prefix)}
        if not sub:
            raise ModelLoadError(f"{cfg_path}: weights hold no {prefix}* tensors")
        try:
            cfgs.append(ViTConfig.from_shapes(sub, model_ids[i], int(sizes[i]), acts[i] if i < len(acts) else None))
        except ValueError as exc:
            raise ModelLoadError(f"{cfg_path}: vision tower {i} ({model_ids[i]}): {exc}") from exc
    if len({c.n_patches for c in cfgs}) != 1:
        raise ModelLoadError(f"{cfg_path}: fused towers disagree on the patch count {[c.n_patches for c in cfgs]}")
    return cfgs, list(model_ids[:n_towers])


def _target_key(key: str) -> str | None:
    """Published key -> key inside ``OpenVLA`` (None: not used)."""
    for i, (_, prefix) in enumerate(_TOWERS):
        if key.startswith(prefix):
            return f"towers.{i}." + key[len(prefix):].replace(".gamma", ".scale_factor")
    if key.startswith(_PROJ_PREFIX):
        return key
    if key.startswith(_LLM_PREFIX):
        return "llm." + key[len(_LLM_PREFIX):]
    return None


def load_openvla(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 unnorm_key: str | None = None, attn_implementation: str = "sdpa", warmup: bool = True,
                 defer_unnorm_key: bool = False) -> OpenVLA:
    """Load an OpenVLA checkpoint dir natively.

    Args:
        path: checkpoint directory (layout in the module docstring).
        device: "cpu", "cuda[:N]" or a torch.device.
        dtype: None -> bfloat16 on CUDA, float32 on CPU.
        unnorm_key: dataset whose statistics de-normalise actions (needed when there are several).
        attn_implementation: transformers attention backend for the LLM ("sdpa" or "eager").
        warmup: time one vision + prefill + step pass and log it.
        defer_unnorm_key: with several datasets and no key, load anyway with a
            ``PendingStatsActionTokenizer`` (de-normalising raises until the caller sets statistics).
    Raises:
        ModelLoadError naming the file and the problem.
    """
    from safetensors import SafetensorError, safe_open
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    t0 = time.perf_counter()
    ckpt = Path(path)
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg_path = ckpt / "config.json"
    config = _read_json(cfg_path)
    if config.get("model_type") != MODEL_TYPE:
        raise ModelLoadError(f"{cfg_path}: model_type {config.get('model_type')!r} is not {MODEL_TYPE!r}")
    lcfg = _llama_config(config, cfg_path, attn_implementation)
    pad = int(config.get("pad_to_multiple_of", 0) or 0)
    vocab = lcfg.vocab_size - pad  # OpenVLA's de-tokenisation vocabulary
    n_bins = int(config.get("n_action_bins", 256))
    if vocab <= n_bins:
        raise ModelLoadError(f"{cfg_path}: text_config.vocab_size {lcfg.vocab_size} - pad_to_multiple_of {pad} "
                             f"leaves {vocab} ids, not more than n_action_bins {n_bins}")
    stats, key = _norm_stats(ckpt, config, unnorm_key, defer_unnorm_key)
    text_tok = OpenVLATextTokenizer.load(ckpt, vocab)
    shards = weight_files(ckpt)
    shapes = _shard_shapes(shards)
    vit_cfgs, model_ids = _build_towers(config, cfg_path, shapes)
    fused = len(vit_cfgs) == 2

    with torch.device("meta"):
        towers = [ViTFeaturizer(c) for c in vit_cfgs]
        projector = PrismaticProjector(fused, sum(c.embed_dim for c in vit_cfgs), lcfg.hidden_size)
        llm = LlamaForCausalLM(lcfg)
        llm.lm_head = nn.Linear(lcfg.hidden_size, vocab, bias=False)
    if stats is None:
        LOG.warning("%s", key)
        action_tok: ActionTokenizer = PendingStatsActionTokenizer(vocab, n_bins, str(key))
        key = None
    else:
        action_tok = ActionTokenizer(vocab, stats, n_bins)
    model = OpenVLA(towers, projector, llm, lcfg, text_tok, action_tok, _image_norms(ckpt, model_ids), key)
    own = model.state_dict()
    loaded: set[str] = set()
    ignored: list[str] = []
    for shard in shards:
        sd: dict[str, torch.Tensor] = {}
        try:
            with safe_open(shard, framework="pt", device="cpu") as f:
                for k in f.keys():
                    tk = _target_key(k)
                    if tk is None or tk not in own:
                        ignored.append(k)
                        continue
                    t = f.get_tensor(k)
                    if tk == "llm.lm_head.weight":
                        t = t[:vocab]  # drop the padding rows
                    if tuple(t.shape) != tuple(own[tk].shape):
                        raise ModelLoadError(f"{shard}: {k} has shape {tuple(t.shape)}, the config implies "
                                             f"{tuple(own[tk].shape)}")
                    sd[tk] = t.to(device=device, dtype=dtype)
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{shard}: cannot read safetensors ({exc})") from exc
        model.load_state_dict(sd, strict=False, assign=True)
        loaded.update(sd)
        del sd
    missing = sorted(set(own) - loaded)
    if missing:
        where = ckpt / INDEX_FILE if (ckpt / INDEX_FILE).exists() else ckpt / SINGLE_FILE
        raise ModelLoadError(f"{where}: {len(missing)} weight(s) missing, e.g. {missing[:4]}")
    unused = [k for k in ignored if not _is_known_unused(k, vit_cfgs)]
    if unused:
        LOG.warning("%s: %d unexpected weight(s) ignored, e.g. %s", ckpt, len(unused), unused[:4])
    with torch.device(device):  # non-persistent RoPE tables were built on meta
        model.llm.model.rotary_emb = LlamaRotaryEmbedding(lcfg)
    model.eval().requires_grad_(False)  # frozen: inference, and draft training never backprops into it
    _log_startup(model, ckpt, time.perf_counter() - t0, warmup)
    return model


def _is_known_unused(key: str, vit_cfgs: list[ViTConfig]) -> bool:
    for i, (_, prefix) in enumerate(_TOWERS[: len(vit_cfgs)]):
        if key.startswith(prefix):
            return ViTFeaturizer.is_unused_key(key[len(prefix):], vit_cfgs[i])
    return False


def _log_startup(model: OpenVLA, ckpt: Path, load_s: float, warmup: bool) -> None:
    n_vis = sum(p.numel() for p in model.towers.parameters())
    n_llm = sum(p.numel() for p in model.llm.parameters())
    n_proj = sum(p.numel() for p in model.projector.parameters())
    bytes_ = sum(p.numel() * p.element_size() for p in model.parameters())
    LOG.info("OpenVLA %s on %s/%s: vision %.1fM, projector %.1fM, LLM %.1fM params, %.2f GB weights, loaded in %.1f s",
             ckpt, model.device, str(model.dtype).removeprefix("torch."), n_vis / 1e6, n_proj / 1e6, n_llm / 1e6,
             bytes_ / 1e9, load_s)
    if model.device.type == "cuda":
        LOG.info("CUDA memory: %.2f GB allocated, %.2f GB reserved", torch.cuda.memory_allocated(model.device) / 1e9,
                 torch.cuda.memory_reserved(model.device) / 1e9)
    if not warmup:
        return
    img = np.zeros((model.towers[0].cfg.image_size,) * 2 + (3,), dtype=np.uint8)

    def clock() -> float:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        return time.perf_counter()

    t0 = clock()
    vis = model.encode_vision(img)
    t1 = clock()
    cache, _ = model.prefill(vis, "pick up the cube")
    t2 = clock()
    model.forward(torch.tensor([model.text_tokenizer.eon_token_id]), cache)
    t3 = clock()  # (warm-up decodes no action: it works before the dataset statistics are chosen)
    LOG.info("OpenVLA warm-up latency (first call, includes one-off setup): vision %.1f ms, prefill (%d tokens) %.1f ms, "
             "1-token step %.1f ms", (t1 - t0) * 1e3, len(cache), (t2 - t1) * 1e3, (t3 - t2) * 1e3)


def _registry_loader(path: Path, device: torch.device, dtype: torch.dtype) -> OpenVLA:
    # load_vla cannot pass unnorm_key; the caller (e.g. Policy) sets the statistics afterwards
    return load_openvla(path, device, dtype, defer_unnorm_key=True)


def _register() -> None:
    from specvla_ros.core.models.loading import register_model_type

    register_model_type(MODEL_TYPE, _registry_loader)


_register()

__all__ = ["OpenVLA", "OpenVLATextTokenizer", "PendingStatsActionTokenizer", "LlamaKVCache", "OpenVLAGeometry",
           "load_openvla", "weight_files", "PROMPT_TEMPLATE", "MODEL_TYPE"]
