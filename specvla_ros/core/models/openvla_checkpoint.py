"""Random OpenVLA-layout models and checkpoints (for tests, CI and the GPU benchmark).

``make_random_openvla_checkpoint`` writes a directory with the published file
layout and key names (config.json with norm_stats, sharded safetensors with
an index, a LLaMA-style ``tokenizer.json``); ``random_openvla`` builds the same
thing in memory (used for the OpenVLA-7B-shaped benchmark model, whose 15 GB
of random weights are never written to disk).
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from specvla_ros.core.models.action_tokenizer import ActionNormStats, ActionTokenizer
from specvla_ros.core.models.openvla import (
    EMPTY_PIECE, INDEX_FILE, MODEL_TYPE, OpenVLA, OpenVLATextTokenizer, _TOWERS,
)
from specvla_ros.core.models.vision_vit import PrismaticProjector, ViTConfig, ViTFeaturizer, timm_family

PAD_TOKEN = "<PAD>"


@dataclass(frozen=True)
class TowerShape:
    """One timm ViT tower: model id (sets heads/activation) and geometry."""

    model_id: str
    embed_dim: int
    depth: int
    mlp_hidden: int
    patch_size: int = 14
    class_token: bool = True
    reg_tokens: int = 0
    layer_scale: bool = False
    attn_pool: bool = False  # SigLIP's MAP head: present in checkpoints, unused by Prismatic


@dataclass(frozen=True)
class OpenVLAShape:
    """Geometry of a whole OpenVLA-class model.

    base_vocab: tokenizer ids before "<PAD>" (OpenVLA: 32000, a multiple of ``pad_to_multiple_of``).
    """

    towers: tuple[TowerShape, ...]
    image_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    base_vocab: int
    pad_to_multiple_of: int = 64
    max_positions: int = 2048
    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    llm_backbone_id: str = "llama2-7b-pure"
    datasets: tuple[str, ...] = field(default=("bridge_orig",))

    def __post_init__(self) -> None:
        if self.base_vocab % self.pad_to_multiple_of:
            raise ValueError(f"base_vocab {self.base_vocab} must be a multiple of pad_to_multiple_of "
                             f"{self.pad_to_multiple_of} (OpenVLA's vocab_size - pad rule relies on it)")
        if self.base_vocab <= 256 + 300:
            raise ValueError(f"base_vocab {self.base_vocab} too small for bytes, characters and 256 action ids")
        if not 1 <= len(self.towers) <= 2:
            raise ValueError(f"an OpenVLA model has 1 or 2 vision towers, got {len(self.towers)}")

    @property
    def text_vocab(self) -> int:
        """Embedding rows: base + <PAD>, rounded up to pad_to_multiple_of."""
        m = self.pad_to_multiple_of
        return -(-(self.base_vocab + 1) // m) * m


DINO_SIGLIP_IDS = ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224")

#: OpenVLA-7B: DINOv2 ViT-L/14 (reg4) + SigLIP So400m/14 at 224 px, LLaMA-2 7B (vocab 32000 + pad -> 32064).
OPENVLA_7B = OpenVLAShape(
    towers=(TowerShape(DINO_SIGLIP_IDS[0], 1024, 24, 4096, reg_tokens=4, layer_scale=True),
            TowerShape(DINO_SIGLIP_IDS[1], 1152, 27, 4304, class_token=False, attn_pool=True)),
    image_size=224, hidden=4096, layers=32, heads=32, intermediate=11008, base_vocab=32000,
)

#: Same structure, tiny sizes (16 heads in the towers, as their timm ids imply).
OPENVLA_TINY = OpenVLAShape(
    towers=(TowerShape(DINO_SIGLIP_IDS[0], 32, 3, 64, reg_tokens=4, layer_scale=True),
            TowerShape(DINO_SIGLIP_IDS[1], 48, 3, 80, class_token=False, attn_pool=True)),
    image_size=28, hidden=64, layers=2, heads=4, intermediate=128, base_vocab=576, max_positions=512,
    datasets=("bridge_orig", "sim_panda"),
)


def llama_style_tokenizer(base_vocab: int):
    """A ``tokenizers`` BPE tokenizer shaped like LLaMA-2's tokenizer.json.

    ids: <unk> <s> </s>, 256 byte-fallback tokens, "▁", printable characters,
    "▁"+word merges of the prompt, fillers up to ``base_vocab``, then "<PAD>".
    """
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    vocab: dict[str, int] = {}
    for tok in ("<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], EMPTY_PIECE,
                *string.ascii_letters, *string.digits, *string.punctuation):
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in ("In", "What", "action", "should", "the", "robot", "take", "to", "Out", "pick", "up", "cube"):
        piece = EMPTY_PIECE
        for ch in word:
            merged = piece + ch
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((piece, ch))
            piece = merged
    if len(vocab) > base_vocab:
        raise ValueError(f"base_vocab {base_vocab} is smaller than the {len(vocab)} tokens the tokenizer needs")
    for i in range(len(vocab), base_vocab):
        vocab[f"<extra_{i}>"] = i
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(EMPTY_PIECE), normalizers.Replace(" ", EMPTY_PIECE)])
    tok.decoder = decoders.Sequence([decoders.Replace(EMPTY_PIECE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>", PAD_TOKEN])  # marked special, as in LLaMA's tokenizer.json
    return tok


def _tower_cfg(t: TowerShape, image_size: int) -> ViTConfig:
    heads, act, _ = timm_family(t.model_id)
    return ViTConfig(embed_dim=t.embed_dim, depth=t.depth, num_heads=heads, patch_size=t.patch_size,
                     image_size=image_size, mlp_hidden=t.mlp_hidden, act=act, class_token=t.class_token,
                     reg_tokens=t.reg_tokens, no_embed_class=t.reg_tokens > 0, layer_scale=t.layer_scale,
                     take_block=t.depth - 1)  # build every block: checkpoints hold them all


def _randomize_(module: nn.Module, gen: torch.Generator, std: float = 0.05) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("scale_factor"):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=gen))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def _norm_stats_json(datasets: tuple[str, ...]) -> dict:
    out = {}
    for i, name in enumerate(datasets):
        s = 1.0 + i
        out[name] = {"action": {"q01": [-0.02 * s] * 3 + [-0.1 * s] * 3 + [0.0],
                                "q99": [0.03 * s] * 3 + [0.1 * s] * 3 + [1.0],
                                "mask": [True] * 6 + [False]},
                     "num_transitions": 1000}
    return out


def _llama_config(shape: OpenVLAShape):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=shape.text_vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                       num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                       num_key_value_heads=shape.heads, max_position_embeddings=shape.max_positions,
                       pad_token_id=shape.base_vocab)


def openvla_config_json(shape: OpenVLAShape) -> dict:
    """config.json in the published layout (text_config lists the sizes a non-7B model needs)."""
    return {
        "architectures": ["OpenVLAForActionPrediction"], "model_type": MODEL_TYPE,
        "arch_specifier": "no-align+fused-gelu-mlp" if len(shape.towers) == 2 else "no-align+gelu-mlp",
        "vision_backbone_id": shape.vision_backbone_id, "llm_backbone_id": shape.llm_backbone_id,
        "hf_llm_id": "meta-llama/Llama-2-7b-hf", "image_resize_strategy": "resize-naive",
        "image_sizes": [shape.image_size] * len(shape.towers), "timm_model_ids": [t.model_id for t in shape.towers],
        "timm_override_act_layers": [None] * len(shape.towers),
        "use_fused_vision_backbone": len(shape.towers) == 2, "llm_max_length": shape.max_positions,
        "n_action_bins": 256, "norm_stats": _norm_stats_json(shape.datasets), "output_projector_states": False,
        "pad_to_multiple_of": shape.pad_to_multiple_of, "pad_token_id": shape.base_vocab,
        "text_config": {"model_type": "llama", "pad_token_id": shape.base_vocab, "vocab_size": shape.text_vocab,
                        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
                        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
                        "max_position_embeddings": shape.max_positions, "torch_dtype": "bfloat16"},
        "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
    }


def _random_parts(shape: OpenVLAShape, seed: int, device: torch.device, dtype: torch.dtype):
    """Random towers (all blocks), projector and LlamaForCausalLM (full padded vocabulary)."""
    from transformers import LlamaForCausalLM

    gen = torch.Generator().manual_seed(seed)
    cfgs = [_tower_cfg(t, shape.image_size) for t in shape.towers]
    towers = [ViTFeaturizer(c) for c in cfgs]
    pools = []
    for t, tower in zip(shape.towers, towers):
        _randomize_(tower, gen)
        pools.append(_attn_pool(t.embed_dim, t.mlp_hidden, gen) if t.attn_pool else {})
    projector = PrismaticProjector(len(cfgs) == 2, sum(c.embed_dim for c in cfgs), shape.hidden)
    _randomize_(projector, gen)
    lcfg = _llama_config(shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = LlamaForCausalLM(lcfg)
    return cfgs, towers, pools, projector, llm, lcfg


def _attn_pool(dim: int, hidden: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    r = lambda *s: 0.02 * torch.randn(*s, generator=gen)  # noqa: E731
    return {"attn_pool.latent": r(1, 1, dim), "attn_pool.q.weight": r(dim, dim), "attn_pool.q.bias": r(dim),
            "attn_pool.kv.weight": r(2 * dim, dim), "attn_pool.kv.bias": r(2 * dim),
            "attn_pool.proj.weight": r(dim, dim), "attn_pool.proj.bias": r(dim),
            "attn_pool.norm.weight": torch.ones(dim), "attn_pool.norm.bias": r(dim),
            "attn_pool.mlp.fc1.weight": r(hidden, dim), "attn_pool.mlp.fc1.bias": r(hidden),
            "attn_pool.mlp.fc2.weight": r(dim, hidden), "attn_pool.mlp.fc2.bias": r(dim)}


def make_random_openvla_checkpoint(out_dir: str | Path, shape: OpenVLAShape = OPENVLA_TINY, seed: int = 0,
                                   n_shards: int = 3) -> Path:
    """Write a random checkpoint with the published layout (sharded safetensors + index) -> ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfgs, towers, pools, projector, llm, _ = _random_parts(shape, seed, torch.device("cpu"), torch.float32)
    sd: dict[str, torch.Tensor] = {}
    for (_, prefix), tower, pool, cfg in zip(_TOWERS, towers, pools, cfgs):
        for k, v in tower.state_dict().items():
            sd[prefix + k] = v
        d = cfg.embed_dim
        sd[prefix + "norm.weight"], sd[prefix + "norm.bias"] = torch.ones(d), torch.zeros(d)
        sd.update({prefix + k: v for k, v in pool.items()})
    sd.update({"projector." + k: v for k, v in projector.state_dict().items()})
    sd.update({"language_model." + k: v for k, v in llm.state_dict().items()})
    keys = sorted(sd)
    chunks = np.array_split(np.arange(len(keys)), n_shards)
    weight_map = {}
    for i, idx in enumerate(chunks):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {keys[j]: sd[keys[j]].detach().to(torch.bfloat16).contiguous() for j in idx}
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * 2 for v in sd.values())
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg = openvla_config_json(shape)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "dataset_statistics.json").write_text(json.dumps(cfg["norm_stats"], indent=2))  # published repos ship both
    llama_style_tokenizer(shape.base_vocab).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": PAD_TOKEN,
         "model_max_length": shape.max_positions, "padding_side": "right", "tokenizer_class": "LlamaTokenizer"}))
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "PrismaticImageProcessor", "image_resize_strategy": "resize-naive",
         "input_sizes": [[3, shape.image_size, shape.image_size]] * len(shape.towers),
         "interpolations": ["bicubic"] * len(shape.towers),
         "means": [list(timm_family(t.model_id)[2][0]) for t in shape.towers],
         "stds": [list(timm_family(t.model_id)[2][1]) for t in shape.towers],
         "use_fused_vision_backbone": len(shape.towers) == 2}))
    return out


def random_openvla(shape: OpenVLAShape = OPENVLA_TINY, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, seed: int = 0, unnorm_key: str | None = None) -> OpenVLA:
    """An in-memory random OpenVLA of ``shape`` (no files). For the 7B shape on a GPU: ~15 GB in bf16."""
    device = torch.device(device)
    with torch.device(device):
        towers_cfgs = [_tower_cfg(t, shape.image_size) for t in shape.towers]
        use = [ViTConfig(**{**c.__dict__, "take_block": c.depth - 2}) for c in towers_cfgs]
        towers = [ViTFeaturizer(c) for c in use]
        projector = PrismaticProjector(len(use) == 2, sum(c.embed_dim for c in use), shape.hidden)
        lcfg = _llama_config(shape)
        lcfg._attn_implementation = "sdpa"
        from transformers import LlamaForCausalLM
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # build a 7B model directly in bf16: half the memory and init time
        try:
            llm = LlamaForCausalLM(lcfg)
            llm.lm_head = nn.Linear(shape.hidden, shape.base_vocab, bias=False)
        finally:
            torch.set_default_dtype(previous)
        llm.model.rotary_emb = LlamaRotaryEmbedding(lcfg)  # fp32 RoPE tables, as the loader keeps them
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for mod in (*towers, projector, llm.lm_head):
            for name, p in mod.named_parameters():
                if name.endswith("scale_factor") or ("norm" in name and name.endswith("weight")):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02, generator=gen)
    tok = OpenVLATextTokenizer(llama_style_tokenizer(shape.base_vocab), shape.base_vocab)
    stats = _norm_stats_json(shape.datasets)[unnorm_key or shape.datasets[0]]["action"]
    at = ActionTokenizer(shape.base_vocab, ActionNormStats(np.array(stats["q01"]), np.array(stats["q99"]),
                                                           np.array(stats["mask"])))
    norms = [timm_family(t.model_id)[2] for t in shape.towers]
    model = OpenVLA(towers, projector, llm, lcfg, tok, at, norms, unnorm_key or shape.datasets[0])
    towers_and_proj = (*model.towers, model.projector)
    for mod in towers_and_proj:
        mod.to(dtype=dtype)
    return model.eval().requires_grad_(False)


__all__ = ["OpenVLAShape", "TowerShape", "OPENVLA_7B", "OPENVLA_TINY", "make_random_openvla_checkpoint",
           "random_openvla", "llama_style_tokenizer", "openvla_config_json"]
