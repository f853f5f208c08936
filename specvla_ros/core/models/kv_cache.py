"""Preallocated, truncatable key/value cache for one sequence.

Keys and values of all layers live in two tensors of shape
(n_layers, 1, n_kv_heads, capacity, head_dim); a forward writes the new
positions in place and attends over a view of the filled part. Rolling back a
rejected draft is ``truncate(n)``: only the length changes, the kept positions
are neither copied nor recomputed. Capacity doubles when a write would
overflow (rare: the decoder reserves prefix + a generous margin up front).
"""
from __future__ import annotations

import torch

#: Extra cache positions reserved after the prefix (narration + EON + 7 actions + a full draft).
CACHE_MARGIN = 64


class StaticKVCache:
    """KV cache of one sequence; ``len(cache)`` counts every position held (prefix included).

    Args:
        n_layers, n_kv_heads, head_dim: decoder geometry.
        capacity: positions preallocated.
        device, dtype: where and how keys/values are stored.
    """

    def __init__(
        self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        shape = (n_layers, 1, n_kv_heads, capacity, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def truncate(self, length: int) -> None:
        """Drop every position at index >= length (no copy, no recompute)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = int(length)

    def reserve(self, n_new: int) -> None:
        """Make room for ``n_new`` more positions (grows by doubling, keeps contents)."""
        need = self.length + n_new
        if need <= self.capacity:
            return
        new_cap = max(need, 2 * self.capacity)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:3], new_cap, old.shape[4]))
            new[:, :, :, : self.length] = old[:, :, :, : self.length]
            setattr(self, name, new)

    def write(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (1, H_kv, n, Dh) keys/values of ``layer`` after the filled part.

        Returns views (1, H_kv, length + n, Dh) over everything this layer holds.
        Call ``reserve(n)`` before the first layer and ``advance(n)`` after the last.
        """
        n = k_new.shape[2]
        end = self.length + n
        self.k[layer, :, :, self.length : end] = k_new
        self.v[layer, :, :, self.length : end] = v_new
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += int(n)
