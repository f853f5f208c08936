"""Static-cache (and CUDA-graph) runner for a transformers ``LlamaModel``.

Why: at batch 1 a 7B decoder step is launch-bound on a GPU (~500 small kernels
per token). A preallocated cache gives every n-token step static shapes, so
the step can be captured once per n (1..max_step_tokens) as a CUDA graph and
replayed; truncation is just a length change (stale positions are masked and
overwritten).

Layout: keys/values (n_layers, 1, n_kv_heads, capacity, head_dim); attention
always spans the full capacity with a mask ``key_pos <= query_pos`` so shapes
never depend on the cache length. Weights are the model's own modules (same
parameters, nothing copied); RoPE tables are precomputed in fp32 from the
model's ``inv_freq``.

One runner holds ONE live cache (the buffers are shared, as graphs need fixed
addresses): ``new_cache()`` invalidates the previous handle.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticCacheHandle:
    """``KVCache`` view of a runner's buffers: ``len`` and ``truncate`` only."""

    def __init__(self, runner: "StaticLlamaRunner", generation: int) -> None:
        self._runner = runner
        self._generation = generation

    def _check(self) -> "StaticLlamaRunner":
        if self._generation != self._runner.generation:
            raise RuntimeError("this static cache was superseded by a newer new_cache() on the same runner")
        return self._runner

    def __len__(self) -> int:
        return self._check().length

    def truncate(self, length: int) -> None:
        r = self._check()
        if not 0 <= length <= r.length:
            raise ValueError(f"cannot truncate a cache of length {r.length} to {length}")
        r.length = int(length)


class StaticLlamaRunner:
    """Runs ``llama_model`` (a transformers ``LlamaModel``) + ``lm_head`` on a preallocated cache.

    Args:
        llama_model: the decoder (its layers, norm and rotary embedding are used as they are).
        lm_head: (..., d) -> (..., V).
        capacity: most positions a decision may hold (prefix + generated + one draft).
        max_step_tokens: steps of up to this many tokens replay a CUDA graph (when enabled).
        cuda_graphs: capture one graph per step length 1..max_step_tokens (CUDA only).
    """

    def __init__(self, llama_model: nn.Module, lm_head: nn.Module, capacity: int = 512,
                 max_step_tokens: int = 9, cuda_graphs: bool = False) -> None:
        cfg = llama_model.config
        if capacity < 2 or max_step_tokens < 1:
            raise ValueError(f"capacity ({capacity}) must be >= 2 and max_step_tokens ({max_step_tokens}) >= 1")
        if capacity > cfg.max_position_embeddings:
            raise ValueError(f"capacity {capacity} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        self.model = llama_model
        self.lm_head = lm_head
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        weight = lm_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {self.device}")
        self.capacity = int(capacity)
        shape = (len(llama_model.layers), 1, self.n_kv, self.capacity, self.head_dim)
        self.k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        rope = llama_model.rotary_emb
        pos = torch.arange(self.capacity, device=self.device, dtype=torch.float32)
        freqs = pos[:, None] * rope.inv_freq.to(device=self.device, dtype=torch.float32)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = float(getattr(rope, "attention_scaling", 1.0))
        self.cos = (emb.cos() * scale).to(self.dtype)  # (capacity, head_dim)
        self.sin = (emb.sin() * scale).to(self.dtype)
        self.key_pos = torch.arange(self.capacity, device=self.device)
        self.length = 0
        self.generation = 0
        self.max_step_tokens = int(max_step_tokens)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if cuda_graphs:
            self._capture_all()

    # --- cache ----------------------------------------------------------------------------
    def new_cache(self) -> StaticCacheHandle:
        self.generation += 1
        self.length = 0
        return StaticCacheHandle(self, self.generation)

    # --- compute --------------------------------------------------------------------------
    def _compute(self, x: torch.Tensor, pos: torch.Tensor, logits_last_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x (1, n, d), pos (n,) int64 -> hidden (n, d), logits (n or 1, V) float32; writes the cache at pos."""
        n = x.shape[1]
        cos, sin = self.cos[pos][None, None], self.sin[pos][None, None]  # (1, 1, n, Dh)
        mask = (self.key_pos[None, :] <= pos[:, None])[None, None]  # (1, 1, n, capacity)
        gqa = self.n_kv != self.n_heads
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, n, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, n, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, n, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k[i].index_copy_(2, pos, k)
            self.v[i].index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, enable_gqa=gqa)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, n, self.n_heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        hidden = self.model.norm(x)[0]
        logits = self.lm_head(hidden[-1:] if logits_last_only else hidden).float()
        return hidden, logits

    def _capture_all(self) -> None:
        """One graph per step length; warm-up writes land in the last slots and are overwritten later."""
        d = self.model.config.hidden_size
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode():
            for n in range(1, self.max_step_tokens + 1):
                x = torch.zeros(1, n, d, device=self.device, dtype=self.dtype)
                pos = torch.arange(self.capacity - n, self.capacity, device=self.device)
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        self._compute(x, pos, False)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    hidden, logits = self._compute(x, pos, False)
                self._graphs[n] = (graph, x, pos, hidden, logits)
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def forward(self, embeds: torch.Tensor, cache: StaticCacheHandle,
                logits_last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed (1, n, d) embeddings after the cache -> hidden (n, d), logits (n or 1, V) float32."""
        cache._check()
        n = embeds.shape[1]
        start = self.length
        if start + n > self.capacity:
            raise ValueError(f"static cache full: {start} + {n} positions exceed capacity {self.capacity}")
        entry = self._graphs.get(n)
        if entry is not None:
            graph, x, pos, hidden, logits = entry
            x.copy_(embeds)
            pos.copy_(torch.arange(start, start + n, device=self.device))
            graph.replay()
            hidden, logits = hidden.clone(), logits.clone()
            if logits_last_only:
                logits = logits[-1:]
        else:
            pos = torch.arange(start, start + n, device=self.device)
            hidden, logits = self._compute(embeds.to(self.dtype), pos, logits_last_only)
        self.length = start + n
        return hidden, logits

    @property
    def graph_sizes(self) -> list[int]:
        return sorted(self._graphs)


__all__ = ["StaticLlamaRunner", "StaticCacheHandle"]
