"""Drafters: adaptive length, teacher-forcing APIs, and caches that stay consistent after rollbacks."""
import numpy as np
import pytest
import torch

from specvla_ros.core.decoding.drafters import AdaptiveDraftLength, Drafter, EagleDrafter, ModelDrafter
from specvla_ros.core.models.loading import load_drafter, load_vla
from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
from specvla_ros.core.types import Observation


@pytest.fixture(scope="module")
def target(tiny_checkpoints):
    return load_vla(tiny_checkpoints[0], device="cpu")


def _obs(seed):
    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), "pick up the blue ball",
                       rng.normal(size=8).astype(np.float32))


def test_adaptive_draft_length_follows_transformers_heuristic():
    a = AdaptiveDraftLength(4, 8, adaptive=True)
    a.update(4, 4)
    assert a.num_draft_tokens == 6
    a.update(6, 6)
    a.update(8, 8)
    assert a.num_draft_tokens == 8  # capped at max
    a.update(3, 8)
    assert a.num_draft_tokens == 7
    for _ in range(10):
        a.update(0, 7)
    assert a.num_draft_tokens == 1  # floor
    fixed = AdaptiveDraftLength(3, 8, adaptive=False)
    fixed.update(3, 3)
    assert fixed.num_draft_tokens == 3
    with pytest.raises(ValueError, match="draft_len"):
        AdaptiveDraftLength(9, 8, True)


def test_loaded_drafters_implement_protocol(tiny_checkpoints, target):
    m, e = load_drafter(tiny_checkpoints[1], target), load_drafter(tiny_checkpoints[2], target)
    assert isinstance(m, ModelDrafter) and isinstance(e, EagleDrafter)
    assert isinstance(m, Drafter) and isinstance(e, Drafter)
    assert m.model.vision_encoder is None  # reads the target's vision features
    assert e.needs_target_hidden and not m.needs_target_hidden


class Recorder:
    """Wraps a drafter and records (committed tokens, state, proposed drafts) of every propose."""

    def __init__(self, inner):
        self.inner, self.calls, self.committed = inner, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def begin(self, ctx):
        self.committed = [ctx.first_token]
        self.inner.begin(ctx)

    def propose(self, k, grammar, state, sample, temperature, generator):
        before = self.inner.reused
        drafts, q = self.inner.propose(k, grammar, state, sample, temperature, generator)
        # the first n_reused drafts are last decision's narration (no model involved)
        self.calls.append((list(self.committed), state, list(drafts), grammar, self.inner.reused - before))
        return drafts, q

    def accept(self, n, nxt, hidden):
        self.committed += self.calls[-1][2][:n] if self.calls and n else []
        if nxt is not None:
            self.committed.append(nxt)
        self.inner.accept(n, nxt, hidden)

    def update(self, n, k):
        self.inner.update(n, k)


def _greedy_chain(next_logits_fn, first_logits, grammar, state, k):
    out = []
    logits = first_logits
    for _ in range(k):
        tok = int((logits + grammar.bias[grammar.row(state)]).argmax())
        out.append(tok)
        state = grammar.advance(state, tok)
        if grammar.is_done(state) or len(out) == k:
            break
        logits = next_logits_fn(tok)
    return out


@pytest.mark.parametrize("kind", ["model", "eagle"])
def test_proposals_after_rollbacks_equal_fresh_recomputation(kind, tiny_checkpoints, target):
    """Every proposal equals what the drafter computes from scratch on the committed tokens,
    so truncation never leaves stale keys/values or features behind. The frame is decoded
    twice: the second time the narration is reused from the first (for EAGLE with last
    decision's target features, which for the same frame are this decision's), and what the
    model drafts after it must still equal a fresh computation over committed + reused tokens."""
    drafter = Recorder(load_drafter(tiny_checkpoints[1 if kind == "model" else 2], target))
    spec = SpeculativeDecoder(target, drafter, DecodeConfig(draft_len=3, adaptive_draft=True, history_actions=False,
                                                            lookahead=False, whole_narration=False))
    o = _obs(4)
    mask = np.zeros((7, 256), bool)
    mask[:, [10, 11, 100]] = True  # narrow: some drafts accepted, some rejected
    first_res = spec.decode(o, mask)
    n_first = len(drafter.calls)
    assert n_first >= 3
    assert spec.decode(o, mask).token_ids == first_res.token_ids
    assert any(c[4] for c in drafter.calls[n_first:]), "the second decision must reuse the narration"
    assert not any(c[4] for c in drafter.calls[:n_first])
    vis = target.encode_vision(o.image)
    with torch.inference_mode():
        for committed, state, all_drafts, grammar, n_reused in drafter.calls:
            reused, drafts = all_drafts[:n_reused], all_drafts[n_reused:]
            for tok in reused:
                state = grammar.advance(state, tok)
            ids = torch.tensor(committed + reused)
            if kind == "model":
                dm = drafter.inner.model
                cache, _ = dm.prefill(vis, o.instruction, o.proprio)
                first = dm.forward(ids, cache).logits[-1]
                fresh = _greedy_chain(lambda t: dm.forward(torch.tensor([t]), cache).logits[-1], first, grammar,
                                      state, len(drafts))
            else:
                head = drafter.inner.head
                tcache, pre = target.prefill(vis, o.instruction, o.proprio, return_all_hidden=True)
                hid = torch.cat([pre.hidden, target.forward(ids[:-1], tcache).hidden]) if len(ids) > 1 else pre.hidden
                embeds = torch.cat([target.prefix_embeds(vis, o.instruction, o.proprio)[0], target.embed_tokens(ids)])
                feats = torch.cat([hid.new_zeros(1, hid.shape[1]), hid])
                ecache = head.new_cache(embeds.shape[0] + 16)
                g = head.step(embeds, feats, ecache)[-1:]
                state_g = {"g": g}

                def nxt(t, state_g=state_g, ecache=ecache):
                    state_g["g"] = head.step(target.embed_tokens(torch.tensor([t])), state_g["g"], ecache)
                    return target.lm_head(state_g["g"])[0]

                fresh = _greedy_chain(nxt, target.lm_head(g)[0], grammar, state, len(drafts))
            assert fresh == drafts, (kind, committed, reused)


def test_draft_model_forward_train_matches_incremental(tiny_checkpoints, target):
    dm = load_drafter(tiny_checkpoints[1], target).model
    images = np.stack([_obs(1).image, _obs(2).image])
    patches = target.encode_vision_batch(images).detach()
    instructions = ["pick up the red cube", "move to the green ball"]
    proprio = np.stack([_obs(1).proprio, _obs(2).proprio])
    tgt = torch.tensor([[40, 3, 300, 301], [41, 42, 3, 302]])
    logits, hidden = dm.forward_train(None, instructions, proprio, tgt, vision_patches=patches)
    assert logits.shape == (2, 4, dm.vocab_size) and hidden.shape == (2, 4, dm.config.d_model)
    from specvla_ros.core.models.interface import VisionFeatures
    for b in range(2):
        cache, first = dm.prefill(VisionFeatures(patches[b : b + 1]), instructions[b], proprio[b])
        inc = torch.cat([first.logits, dm.forward(tgt[b, :-1], cache).logits])
        torch.testing.assert_close(logits[b].detach(), inc, atol=1e-4, rtol=1e-4)


def test_eagle_forward_train_matches_incremental(tiny_checkpoints, target):
    head = load_drafter(tiny_checkpoints[2], target).head
    images = np.stack([_obs(1).image, _obs(2).image])
    instructions = ["pick up the red cube", "push the yellow block to the target"]
    proprio = np.stack([_obs(1).proprio, _obs(2).proprio])
    tgt = torch.tensor([[40, 3, 300, 301], [41, 42, 3, 302]])
    full = target.forward_train(images, instructions, proprio, tgt, return_full=True)
    logits, hidden = head.forward_train(full.input_embeds.detach(), full.all_hidden.detach(), full.valid,
                                        target.lm_head)
    assert logits.shape == (2, full.valid.shape[1], target.vocab_size)
    for b in range(2):
        valid = full.valid[b]
        emb, hid = full.input_embeds[b, valid].detach(), full.all_hidden[b, valid].detach()
        feats = torch.cat([hid.new_zeros(1, hid.shape[1]), hid[:-1]])
        with torch.inference_mode():
            inc = head.step(emb, feats, head.new_cache(emb.shape[0]))
        torch.testing.assert_close(hidden[b, valid].detach(), inc, atol=1e-4, rtol=1e-4)


def test_training_apis_carry_gradients(tiny_checkpoints, target):
    head = load_drafter(tiny_checkpoints[2], target).head
    images = np.stack([_obs(1).image])
    full = target.forward_train(images, ["pick up the red cube"], _obs(1).proprio[None], torch.tensor([[40, 3]]),
                                return_full=True)
    full.logits.sum().backward()
    assert target.vision_encoder.patch.weight.grad is not None
    target.zero_grad(set_to_none=True)
    logits, _ = head.forward_train(full.input_embeds.detach(), full.all_hidden.detach(), full.valid, target.lm_head)
    logits.sum().backward()
    assert head.fc.weight.grad is not None and head.fc.weight.grad.abs().sum() > 0
    target.zero_grad(set_to_none=True)
