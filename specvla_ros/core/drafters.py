"""Drafters: propose k tokens for the target to verify in one pass.

Shaped like transformers' ``CandidateGenerator`` (``get_candidates`` ->
``propose``, ``update_candidate_strategy`` -> ``update``). One decision runs:

    drafter.begin(ctx)                        # after the target's prefill chose the first token
    loop:
        tokens, probs = drafter.propose(k, grammar, state, sample, temperature, generator)
        ... target verifies [last, *tokens] ...
        drafter.accept(n_accepted, next_token, target_hidden)   # roll own cache back
        drafter.update(n_accepted, len(tokens))                 # adapt k

Both drafters follow the same output grammar (bias rows) as the target, so
every proposed token is allowed where it stands.

Implementations:
- ``ModelDrafter``: an independent small causal VLA (a ``TinyVLA`` without
  vision encoder) reading the target's vision features through its own projector.
- ``EagleDrafter``: an EAGLE-style head, one LLaMA decoder layer whose input at
  position j is ``fc([embed(x_j), h_{j-1}])`` with ``h`` the target's last hidden
  state (post-norm); it predicts ``h_j`` and uses the target's LM head.

Both first propose the rest of the previous decision's narration when this decision has
begun the same way (``NarrationReuse``; ``reuse_narration=False`` turns it off): no model
cost for a repeated phrase, and greedy output stays exactly the target's.

Training API of the EAGLE head (teacher forcing, aligned with the target):

    EagleHead.forward_train(input_embeds (B,S,d), target_hidden (B,S,d), valid (B,S), lm_head)
        -> (logits (B,S,V), hidden (B,S,d))  where hidden[:, j] predicts target_hidden[:, j]
    (input_embeds, target_hidden, valid come from ``TinyVLA.forward_train(..., return_full=True)``.)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

from specvla_ros.core.kv_cache import StaticKVCache
from specvla_ros.core.model_interface import VisionFeatures
from specvla_ros.core.output_grammar import OutputGrammar
from specvla_ros.core.tiny_vla import (
    CACHE_MARGIN, CONFIG_FILE, DRAFT_MODEL_TYPE, WEIGHTS_FILE, TinyVLA, rope_tables, run_llama_layers,
)
from specvla_ros.core.text_tokenizer import VLATextTokenizer

_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DraftContext:
    """What a drafter needs to start a decision.

    target: the target model (EAGLE reads its embeddings and LM head).
    vision: the frame's shared vision features.
    first_token: the token the target's prefill chose (already emitted).
    target_prefix_hidden: (P, d) target hidden states of the whole prefix (EAGLE only).
    """

    target: object
    vision: VisionFeatures
    instruction: str
    proprio: np.ndarray
    first_token: int
    target_prefix_hidden: torch.Tensor | None = None


@runtime_checkable
class Drafter(Protocol):
    """Proposes draft tokens; see the module docstring for the call order."""

    num_draft_tokens: int  # current k
    max_draft_len: int
    needs_target_hidden: bool  # the decoder must pass full prefix hidden states in DraftContext
    passes: int  # draft forward passes run since begin()

    def begin(self, ctx: DraftContext) -> None: ...

    def propose(
        self, k: int, grammar: OutputGrammar, state: int, sample: bool, temperature: float,
        generator: torch.Generator | None,
    ) -> tuple[list[int], torch.Tensor | None]:
        """Up to k tokens (fewer if the grammar ends) and, when sampling, their
        distributions q (n, V) float32 (masked by the grammar, temperature applied)."""
        ...

    def accept(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor) -> None:
        """The target kept ``n_accepted`` drafts then emitted ``next_token`` (None: decode finished).
        target_hidden: (n_fed, d) target hidden states of the verify pass [last, *drafts]."""
        ...

    def update(self, num_accepted: int, num_proposed: int) -> None: ...


class AdaptiveDraftLength:
    """transformers' heuristic: k += 2 after a fully accepted draft, k -= 1 otherwise, in [1, max]."""

    def __init__(self, draft_len: int, max_draft_len: int, adaptive: bool) -> None:
        if not 1 <= draft_len <= max_draft_len:
            raise ValueError(f"draft_len must be in [1, max_draft_len={max_draft_len}], got {draft_len}")
        self.initial = draft_len
        self.num_draft_tokens = draft_len
        self.max_draft_len = max_draft_len
        self.adaptive = adaptive

    def update(self, num_accepted: int, num_proposed: int) -> None:
        if not self.adaptive or num_proposed == 0:
            return
        if num_accepted >= num_proposed:
            self.num_draft_tokens = min(self.num_draft_tokens + 2, self.max_draft_len)
        else:
            self.num_draft_tokens = max(1, self.num_draft_tokens - 1)


def _pick(
    logits: torch.Tensor, bias: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked argmax or sample from (V,) logits -> (token (1,) int64, q (V,) or None)."""
    masked = logits.float() + bias
    if not sample:
        return masked.argmax(-1, keepdim=True), None
    q = torch.softmax(masked / temperature, dim=-1)
    return torch.multinomial(q, 1, generator=generator), q


class NarrationReuse:
    """Drafts the narration from the previous decision (shared by both drafters).

    At 10 Hz the robot says the same phrase for many frames in a row, so the rest of last
    decision's phrase (through [EON]) is proposed at no model cost whenever the tokens
    emitted so far match its start; the drafter's model drafts everything else (always the
    action tokens). Verification is unchanged, so greedy output stays exactly the target's,
    and in sampling mode the reused tokens carry a one-hot q (rejection sampling stays exact).

    A subclass keeps ``self._committed`` (this decision's emitted tokens) and calls
    ``_start_decision`` in ``begin`` and ``_reuse_prefix`` at the start of ``propose``.
    """

    def _init_reuse(self, eon_token_id: int, reuse_narration: bool) -> None:
        self.reuse_narration = reuse_narration
        self._eon_id = int(eon_token_id)
        self._last_text: list[int] = []  # previous decision's narration + [EON]
        self._committed: list[int] = []
        self.reused = 0  # narration tokens proposed from the previous decision since begin()

    def _start_decision(self, first_token: int) -> int:
        """Keep the last finished decision's narration; -> its length (0: none kept)."""
        kept = 0
        if self._eon_id in self._committed:
            kept = self._committed.index(self._eon_id) + 1
            self._last_text = self._committed[:kept]
        self._committed = [int(first_token)]
        self.reused = 0
        return kept

    def _reuse_prefix(self, grammar: OutputGrammar, state: int, sample: bool
                      ) -> tuple[list[int], int, list[torch.Tensor]]:
        """-> (reused tokens, grammar state after them, their one-hot q rows when sampling)."""
        reused = self._last_narration_rest(grammar, state)
        for tok in reused:
            state = grammar.advance(state, tok)
        self.reused += len(reused)
        probs: list[torch.Tensor] = []
        if sample and reused:  # a deterministic proposal: q is one-hot, so rejection sampling stays exact
            q = torch.zeros(len(reused), grammar.bias.shape[-1], device=grammar.bias.device)
            q[torch.arange(len(reused)), torch.tensor(reused)] = 1.0
            probs.extend(q)
        return reused, state, probs

    def _last_narration_rest(self, grammar: OutputGrammar, state: int) -> list[int]:
        """The rest of last decision's narration (through [EON]) when this one has begun the same way."""
        done = len(self._committed)
        last = self._last_text
        if not (self.reuse_narration and grammar.is_text(state) and done < len(last) and self._committed == last[:done]):
            return []
        rest: list[int] = []
        for tok in last[done:]:
            # the grammar may differ from last frame's (e.g. a shorter narration cap): stop where it objects
            if grammar.is_done(state) or not bool(torch.isfinite(grammar.bias[grammar.row(state), tok])):
                break
            rest.append(tok)
            state = grammar.advance(state, tok)
        return rest


class ModelDrafter(NarrationReuse, AdaptiveDraftLength):
    """Independent small VLA drafting from the target's shared vision features.

    With ``reuse_narration`` the narration is first drafted from the previous decision
    (``NarrationReuse``); the model drafts everything else (always the action tokens).
    """

    needs_target_hidden = False

    def __init__(self, model: TinyVLA, draft_len: int = 4, max_draft_len: int = 8, adaptive: bool = True,
                 reuse_narration: bool = True) -> None:
        super().__init__(draft_len, max_draft_len, adaptive)
        self.model = model
        self._init_reuse(model.text_tokenizer.eon_token_id, reuse_narration)
        self.cache: StaticKVCache | None = None
        self.passes = 0
        self._prefix_len = 0
        self._n_fed = 0  # committed tokens whose keys/values the cache holds
        self._drafts: list[int] = []
        self._n_spec = 0  # drafts fed speculatively in the last propose

    def begin(self, ctx: DraftContext) -> None:
        self._start_decision(ctx.first_token)
        self.cache, _ = self.model.prefill(ctx.vision, ctx.instruction, ctx.proprio)
        self._prefix_len = len(self.cache)
        self._n_fed = 0
        self._drafts, self._n_spec = [], 0
        self.passes = 1
        self.num_draft_tokens = self.initial

    @torch.inference_mode()
    def propose(
        self, k: int, grammar: OutputGrammar, state: int, sample: bool, temperature: float,
        generator: torch.Generator | None,
    ) -> tuple[list[int], torch.Tensor | None]:
        """Up to k model tokens (k >= 1), after the reused rest of last frame's narration when it
        applies, and, when sampling, their distributions (n, V); see ``Drafter``."""
        if self.cache is None:
            raise RuntimeError("ModelDrafter.propose called before begin()")
        reused, state, probs = self._reuse_prefix(grammar, state, sample)
        tokens: list[torch.Tensor] = []
        if grammar.is_done(state):
            self._drafts, self._n_spec = reused, 0
            return reused, (torch.stack(probs) if probs else None)
        # one pass over the committed tokens the cache lacks and the reused narration, then k model tokens
        pending = torch.tensor(self._committed[self._n_fed :] + reused, dtype=torch.long, device=self.model.device)
        logits = self.model.forward(pending, self.cache).logits[-1]
        self.passes += 1
        self._n_fed = len(self._committed)
        for i in range(k):
            tok, q = _pick(logits, grammar.bias[grammar.row(state)], sample, temperature, generator)
            tokens.append(tok)
            if q is not None:
                probs.append(q)
            # only narration positions need the token's value to advance the grammar
            tok_int = int(tok) if grammar.is_text(state) else -1
            state = grammar.advance(state, tok_int)
            if i == k - 1 or grammar.is_done(state):
                break
            logits = self.model.forward(tok, self.cache).logits[-1]
            self.passes += 1
        self._drafts = reused + torch.cat(tokens).tolist()
        self._n_spec = len(self._drafts) - 1  # every draft but the last is in the cache
        return self._drafts, (torch.stack(probs) if probs else None)

    def accept(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor) -> None:
        kept = min(n_accepted, self._n_spec)
        self._n_fed += kept
        if self.cache is not None:
            self.cache.truncate(self._prefix_len + self._n_fed)
        self._committed.extend(self._drafts[:n_accepted])
        if next_token is not None:
            self._committed.append(int(next_token))
        self._drafts, self._n_spec = [], 0


# --- EAGLE --------------------------------------------------------------------------------

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
        from safetensors.torch import save_file

        if storage_dtype not in _STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(_STORAGE_DTYPES)}, got {storage_dtype!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        sd = {k: v.detach().to("cpu", _STORAGE_DTYPES[storage_dtype]).contiguous() for k, v in self.state_dict().items()}
        save_file(sd, str(out / WEIGHTS_FILE), metadata={"format": "pt", "model_type": DRAFT_MODEL_TYPE})
        text_tokenizer.save(out)


class EagleDrafter(NarrationReuse, AdaptiveDraftLength):
    """EAGLE-style drafting from the target's hidden states, embeddings and LM head.

    The target must expose ``embed_tokens(ids)``, ``prefix_embeds(vision, instruction, proprio)``
    and ``lm_head`` (TinyVLA does).

    With ``reuse_narration`` the narration is first drafted from the previous decision
    (``NarrationReuse``). The head then drafts the action tokens after it in the same
    round: the reused tokens go through the head in one pass, fed with the target's hidden
    states of the previous decision at the same narration positions (same phrase, next
    frame: close to this frame's, which the target has not computed yet). Those positions
    are speculative like any draft and are fed again with this frame's target features
    once verified, so only the quality of the drafts depends on the stand-in features.
    """

    needs_target_hidden = True

    def __init__(self, head: EagleHead, target: TinyVLA, draft_len: int = 4, max_draft_len: int = 8,
                 adaptive: bool = True, reuse_narration: bool = True) -> None:
        super().__init__(draft_len, max_draft_len, adaptive)
        self._init_reuse(target.text_tokenizer.eon_token_id, reuse_narration)
        self.head = head
        self.target = target
        self.cache: StaticKVCache | None = None
        self.passes = 0
        self._pending: list[int] = []
        self._pending_feats: list[torch.Tensor] = []
        self._feats: list[torch.Tensor] = []  # (n, d) chunks: the head's input feature of each committed token
        self._last_feats: torch.Tensor | None = None  # (len(_last_text), d): the same for last decision's narration
        self._drafts: list[int] = []
        self._n_spec = 0

    @torch.inference_mode()
    def begin(self, ctx: DraftContext) -> None:
        if ctx.target_prefix_hidden is None:
            raise ValueError("EagleDrafter needs the target's prefix hidden states (target_prefix_hidden)")
        kept = self._start_decision(ctx.first_token)
        if kept:
            self._last_feats = torch.cat(self._feats, dim=0)[:kept]
        embeds = self.target.prefix_embeds(ctx.vision, ctx.instruction, ctx.proprio)[0]  # (P, d)
        hidden = ctx.target_prefix_hidden.to(embeds.dtype)
        prev = torch.cat([hidden.new_zeros(1, hidden.shape[1]), hidden[:-1]], dim=0)
        self.cache = self.head.new_cache(embeds.shape[0] + CACHE_MARGIN)
        self.head.step(embeds, prev, self.cache)
        self.passes = 1
        self._pending = [int(ctx.first_token)]
        self._pending_feats = [hidden[-1:]]
        self._feats = [hidden[-1:]]
        self._drafts, self._n_spec = [], 0
        self.num_draft_tokens = self.initial

    @torch.inference_mode()
    def propose(
        self, k: int, grammar: OutputGrammar, state: int, sample: bool, temperature: float,
        generator: torch.Generator | None,
    ) -> tuple[list[int], torch.Tensor | None]:
        """Up to k head tokens (k >= 1), after the reused rest of last frame's narration when it
        applies, and, when sampling, their distributions (n, V); see ``Drafter``."""
        if self.cache is None:
            raise RuntimeError("EagleDrafter.propose called before begin()")
        reused, state, probs = self._reuse_prefix(grammar, state, sample)
        if grammar.is_done(state):
            self._drafts, self._n_spec = reused, 0
            return reused, (torch.stack(probs) if probs else None)
        device = self.head.fc.weight.device
        feats = self._pending_feats
        if reused:  # stand-in features: last decision's, at the same narration positions
            done = len(self._committed)
            feats = feats + [self._last_feats[done : done + len(reused)]]
        pending = torch.tensor(self._pending + reused, dtype=torch.long, device=device)
        g = self.head.step(self.target.embed_tokens(pending), torch.cat(feats, dim=0), self.cache)[-1:]
        self.passes += 1
        self._pending, self._pending_feats = [], []
        tokens: list[torch.Tensor] = []
        for i in range(k):
            logits = self.target.lm_head(g)[0]
            tok, q = _pick(logits, grammar.bias[grammar.row(state)], sample, temperature, generator)
            tokens.append(tok)
            if q is not None:
                probs.append(q)
            tok_int = int(tok) if grammar.is_text(state) else -1
            state = grammar.advance(state, tok_int)
            if i == k - 1 or grammar.is_done(state):
                break
            g = self.head.step(self.target.embed_tokens(tok), g, self.cache)
            self.passes += 1
        self._drafts = reused + torch.cat(tokens).tolist()
        self._n_spec = len(self._drafts) - 1  # every draft but the last is in the cache
        return self._drafts, (torch.stack(probs) if probs else None)

    def accept(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor) -> None:
        # speculative positions were fed with draft (or stand-in) features: drop them, refeed with the target's
        if self.cache is not None:
            self.cache.truncate(len(self.cache) - self._n_spec)
        new = self._drafts[:n_accepted] + ([int(next_token)] if next_token is not None else [])
        self._pending.extend(new)
        self._committed.extend(new)
        self._pending_feats.append(target_hidden[: len(new)])
        self._feats.append(target_hidden[: len(new)])
        self._drafts, self._n_spec = [], 0
