"""The LLaMA decoder-layer loop over a static KV cache, and its rotary tables.

Shared by the tiny VLA and the EAGLE head: the same ``LlamaDecoderLayer`` weights as
transformers, run without its per-call overhead (no cache objects, no mask building
beyond what a step needs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specvla_ros.core.models.kv_cache import StaticKVCache


def rope_tables(head_dim: int, max_positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_positions, head_dim) in float32, identical to LlamaRotaryEmbedding's."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.arange(max_positions, dtype=torch.float)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def run_llama_layers(
    layers: nn.ModuleList,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    cache: StaticKVCache | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run LlamaDecoderLayer modules on ``x`` (B, n, d) -> (B, n, d) (before the final norm).

    cos/sin: (n, Dh) (shared positions) or (B, n, Dh).
    With ``cache`` (B = 1) the new keys/values are appended and attention is causal
    over cache + new positions; without it ``attn_mask`` (B, 1, n, n) bool, True =
    attend, must be given (teacher forcing).
    """
    bsz, n, d = x.shape
    head_dim = d // n_heads
    if cos.dim() == 2:
        cos, sin = cos[None, None], sin[None, None]
    else:
        cos, sin = cos[:, None], sin[:, None]
    gqa = n_kv_heads != n_heads
    if cache is not None:
        past = cache.length
        cache.reserve(n)
        if n > 1:
            attn_mask = (torch.arange(past + n, device=x.device)[None, :]
                         <= (past + torch.arange(n, device=x.device))[:, None])
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(bsz, n, n_heads, head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(bsz, n, n_kv_heads, head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(bsz, n, n_kv_heads, head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.write(i, k, v)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(bsz, n, d))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    if cache is not None:
        cache.advance(n)
    return x
