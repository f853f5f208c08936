"""The EAGLE draft head: one LLaMA decoder layer over ``fc([embed(x_j), h_{j-1}])`` with ``h``
the target's last hidden state (post-norm); it predicts ``h_j`` and drafts through the
target's LM head (``decoding.drafters.EagleDrafter`` runs it).

Training API (teacher forcing, aligned with the target):

    EagleHead.forward_train(input_embeds (B,S,d), target_hidden (B,S,d), valid (B,S), lm_head)
        -> (logits (B,S,V), hidden (B,S,d))  where hidden[:, j] predicts target_hidden[:, j]
    (input_embeds, target_hidden, valid come from ``TinyVLA.forward_train(..., return_full=True)``.)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

from specvla_ros.core.models.checkpoint_io import DRAFT_MODEL_TYPE, save_checkpoint
from specvla_ros.core.models.kv_cache import StaticKVCache
from specvla_ros.core.models.llama_layers import rope_tables, run_llama_layers
from specvla_ros.core.models.text_tokenizer import VLATextTokenizer


@dataclass
class EagleConfig:
    """Geometry of the EAGLE head; d_model must equal the target's."""

    model_type: str = DRAFT_MODEL_TYPE
    draft_kind: str = "eagle"
    vocab_size: int = 472
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 4
    intermediate_size: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_positions: int = 512

    def __post_init__(self) -> None:
        if self.draft_kind != "eagle":
            raise ValueError(f"EagleConfig.draft_kind must be 'eagle', got {self.draft_kind!r}")
        for name in ("vocab_size", "d_model", "n_heads", "n_kv_heads", "intermediate_size", "max_positions"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EagleConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"EagleConfig.d_model ({self.d_model}) / n_heads ({self.n_heads}) must be an even integer")

    @classmethod
    def from_dict(cls, data: dict) -> "EagleConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**data)


class EagleHead(nn.Module):
    """fc(2d -> d) + one LLaMA decoder layer + RMSNorm; predicts the target's next hidden state."""

    def __init__(self, cfg: EagleConfig) -> None:
        super().__init__()
        from transformers import LlamaConfig

        self.config = cfg
        lcfg = LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=1, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=cfg.max_positions, rms_norm_eps=cfg.rms_norm_eps,
            rope_parameters={"rope_theta": cfg.rope_theta, "rope_type": "default"},
        )
        self.fc = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=True)
        self.layers = nn.ModuleList([LlamaDecoderLayer(lcfg, 0)])
        self.norm = LlamaRMSNorm(cfg.d_model, eps=cfg.rms_norm_eps)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, cfg.max_positions, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def new_cache(self, capacity: int) -> StaticKVCache:
        c = self.config
        return StaticKVCache(1, c.n_kv_heads, c.d_model // c.n_heads, capacity, self.fc.weight.device, self.dtype)

    def step(self, embeds: torch.Tensor, feats: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """embeds, feats (n, d) -> predicted hidden states (n, d); the cache grows by n."""
        n = embeds.shape[0]
        start = len(cache)
        x = self.fc(torch.cat([embeds, feats.to(embeds.dtype)], dim=-1))[None]
        cos = self.rope_cos[start : start + n].to(self.dtype)
        sin = self.rope_sin[start : start + n].to(self.dtype)
        x = run_llama_layers(self.layers, x, cos, sin, self.config.n_heads, self.config.n_kv_heads, cache=cache)
        return self.norm(x)[0]

    def forward_train(
        self, input_embeds: torch.Tensor, target_hidden: torch.Tensor, valid: torch.Tensor, lm_head: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: input_embeds, target_hidden (B,S,d), valid (B,S) -> (logits (B,S,V), hidden (B,S,d)).

        hidden[:, j] is built from (input_embeds[:, j], target_hidden[:, j-1]) and predicts
        target_hidden[:, j]; logits[:, j] = lm_head(hidden[:, j]) predicts the token after j.
        """
        bsz, seq_len, d = input_embeds.shape
        prev = torch.cat([target_hidden.new_zeros(bsz, 1, d), target_hidden[:, :-1]], dim=1)
        x = self.fc(torch.cat([input_embeds, prev.to(input_embeds.dtype)], dim=-1))
        offsets = (~valid).sum(dim=1)  # left padding
        positions = (torch.arange(seq_len, device=x.device)[None, :] - offsets[:, None]).clamp(min=0)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(seq_len, dtype=torch.bool, device=x.device)
        mask = ((causal[None] & valid[:, None, :]) | eye[None])[:, None]
        cos, sin = self.rope_cos.to(self.dtype)[positions], self.rope_sin.to(self.dtype)[positions]
        x = run_llama_layers(self.layers, x, cos, sin, self.config.n_heads, self.config.n_kv_heads, attn_mask=mask)
        hidden = self.norm(x)
        return lm_head(hidden).float(), hidden

    def save_pretrained(self, out_dir: str | Path, text_tokenizer: VLATextTokenizer, storage_dtype: str = "float32") -> None:
        save_checkpoint(self, out_dir, asdict(self.config), DRAFT_MODEL_TYPE, storage_dtype)
        text_tokenizer.save(Path(out_dir))
