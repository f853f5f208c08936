"""Speculative decoder: greedy is lossless, masks hold, relaxed only touches actions, rules."""
import numpy as np
import pytest
import torch

from specvla_ros.core.models.action_tokenizer import ActionTokenizer
from specvla_ros.core.decoding.drafters import EagleDrafter, ModelDrafter
from specvla_ros.core.models.loading import load_drafter, load_vla
from specvla_ros.core.decoding.grammar import OutputGrammar
from specvla_ros.core.decoding.decoder import (
    DecodeConfig, SpeculativeDecoder, greedy_accept, rejection_accept, text_allowed_mask,
)
from specvla_ros.core.models.tiny_vla import TinyVLA
from specvla_ros.core.types import Observation

PROMPTS = ["pick up the red cube", "push the blue block to the target", "move to the green ball",
           "reach the yellow object"]


#: the decoder's free drafts (on by default) off, for tests of one drafter mechanism at a time
PLAIN = dict(history_actions=None, lookahead=None, whole_narration=None)  # the drafter's own settings


@pytest.fixture(scope="module")
def target(tiny_checkpoints):
    return load_vla(tiny_checkpoints[0], device="cpu")


@pytest.fixture(scope="module")
def noisy_copy(tiny_checkpoints):
    """The target with perturbed decoder weights: agrees often, not always (partial acceptance)."""
    model = TinyVLA.from_pretrained(tiny_checkpoints[0])
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3 * p.std())
    return model


def make_drafter(kind, tiny_checkpoints, target, noisy_copy):
    if kind == "model":
        return load_drafter(tiny_checkpoints[1], target)
    if kind == "eagle":
        return load_drafter(tiny_checkpoints[2], target)
    if kind == "self":
        return ModelDrafter(target)
    return ModelDrafter(noisy_copy)


def obs(seed, prompt, frame_id=None):
    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), prompt,
                       rng.normal(size=8).astype(np.float32), frame_id)


def narrow_mask(target, n_allowed, seed):
    """Random (7, n_bins) mask with n_allowed bins per dimension (makes random drafts agree often)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((7, target.action_tokenizer.n_bins), dtype=bool)
    for row in mask:
        row[rng.choice(row.size, n_allowed, replace=False)] = True
    return mask


@pytest.fixture(scope="module")
def greedy_reference(target):
    """Target-only greedy decodes of the cases below, computed once: {(seed, masked): DecodeResult}."""
    base = SpeculativeDecoder(target, None, DecodeConfig())
    return {(seed, masked): base.decode(obs(seed, PROMPTS[seed]), narrow_mask(target, 2, seed) if masked else None)
            for seed in range(3) for masked in (False, True)}


@pytest.mark.parametrize("kind", ["model", "eagle", "self", "noisy"])
@pytest.mark.parametrize("draft_len,adaptive", [(1, False), (3, True), (8, False)])
def test_greedy_spec_equals_target_greedy(kind, draft_len, adaptive, tiny_checkpoints, target, noisy_copy,
                                          greedy_reference):
    drafter = make_drafter(kind, tiny_checkpoints, target, noisy_copy)
    cfg = DecodeConfig(draft_len=draft_len, max_draft_len=8, adaptive_draft=adaptive)
    spec = SpeculativeDecoder(target, drafter, cfg)
    # seeds/prompts vary per draft length so the whole matrix covers many cases cheaply
    for seed in {1: (0, 1), 3: (1, 2), 8: (0, 2)}[draft_len]:
        for masked in (False, True):
            o = obs(seed, PROMPTS[seed])
            want = greedy_reference[(seed, masked)]
            got = spec.decode(o, narrow_mask(target, 2, seed) if masked else None)
            assert got.token_ids == want.token_ids, (kind, seed, masked)
            np.testing.assert_array_equal(got.action, want.action)
            assert got.stats.emitted == len(want.token_ids)
            assert got.stats.target_passes <= want.stats.target_passes
    if kind == "self":  # a perfect drafter: everything accepted, few verify passes
        assert got.stats.accepted == got.stats.drafted > 0
        assert got.stats.target_passes < want.stats.target_passes


def test_partial_acceptance_is_exercised(tiny_checkpoints, target, noisy_copy):
    """The noisy copy and the narrow-mask eagle both accept some but not all drafts (rollback paths)."""
    for kind in ("noisy", "eagle"):
        drafter = make_drafter(kind, tiny_checkpoints, target, noisy_copy)
        spec = SpeculativeDecoder(target, drafter, DecodeConfig(draft_len=4, adaptive_draft=False))
        acc = drf = 0
        for seed in range(3):
            s = spec.decode(obs(seed, PROMPTS[seed]), narrow_mask(target, 2, seed)).stats
            acc, drf = acc + s.accepted, drf + s.drafted
        assert 0 < acc < drf, kind


def test_baseline_is_one_token_per_pass(target):
    r = SpeculativeDecoder(target, None, DecodeConfig()).decode(obs(0, PROMPTS[0]))
    assert r.stats.target_passes == r.stats.emitted == len(r.token_ids)
    assert r.stats.drafted == r.stats.draft_passes == 0


@pytest.mark.parametrize("max_narr", [0, 1, 12])
def test_output_grammar_and_result(target, tiny_checkpoints, max_narr):
    spec = SpeculativeDecoder(target, load_drafter(tiny_checkpoints[1], target),
                              DecodeConfig(max_narration_tokens=max_narr))
    at = target.action_tokenizer
    eon = target.text_tokenizer.eon_token_id
    for seed in range(3):
        r = spec.decode(obs(seed, PROMPTS[seed]))
        assert len(r.narration_ids) <= max_narr
        assert r.token_ids == r.narration_ids + [eon] + r.action_tokens.tolist()
        assert r.action_tokens.shape == (7,) and r.action_tokens.dtype == np.int64
        assert at.is_action_token(r.action_tokens).all()
        assert not at.is_action_token(np.array(r.narration_ids, dtype=np.int64)).any()
        np.testing.assert_allclose(r.action, at.decode(r.action_tokens))
        assert r.narration == target.text_tokenizer.decode(r.narration_ids)
        s = r.stats
        assert s.total_time_s >= s.vision_time_s + s.prefill_time_s + s.verify_time_s > 0
        assert s.emitted == len(r.token_ids)
        # the first decision has no previous output to reuse: the draft model must run; later ones
        # may be fully drafted for free (DecodeConfig.history_actions verifies the last output in prefill)
        assert s.draft_passes >= 1 or seed > 0


def test_vision_features_cached_per_frame(target, tiny_checkpoints):
    spec = SpeculativeDecoder(target, load_drafter(tiny_checkpoints[1], target), DecodeConfig())
    a = spec.decode(obs(0, PROMPTS[0], frame_id=7))
    b = spec.decode(obs(0, PROMPTS[0], frame_id=7))
    c = spec.decode(obs(1, PROMPTS[0], frame_id=8))
    assert (a.stats.vision_cached, b.stats.vision_cached, c.stats.vision_cached) == (False, True, False)
    assert a.token_ids == b.token_ids
    # same frame id but a different image is served from the cache (the id is the contract)
    d = spec.decode(obs(1, PROMPTS[0], frame_id=8))
    assert d.stats.vision_cached and d.token_ids == c.token_ids


# --- masks ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["greedy", "sample", "relaxed"])
@pytest.mark.parametrize("kind", ["model", "eagle"])
def test_decoded_actions_always_inside_mask(mode, kind, target, tiny_checkpoints, noisy_copy):
    drafter = make_drafter(kind, tiny_checkpoints, target, noisy_copy)
    spec = SpeculativeDecoder(target, drafter, DecodeConfig(mode=mode, relax_bins=20, seed=3))
    at = target.action_tokenizer
    rng = np.random.default_rng(11)
    for trial in range(3):
        mask = rng.random((7, at.n_bins)) < rng.uniform(0.01, 0.3)
        mask[np.arange(7), rng.integers(0, at.n_bins, 7)] = True  # no empty row
        r = spec.decode(obs(trial, PROMPTS[trial % 4]), mask)
        bins = at.token_to_bin(r.action_tokens)
        assert mask[np.arange(7), bins].all(), (mode, kind, trial)


def test_envelope_mask_from_interval(target, tiny_checkpoints):
    at = target.action_tokenizer
    low = np.array([-0.005, 0.0, -0.01, -0.02, 0.0, 0.01, 0.9])
    high = np.array([0.005, 0.01, 0.0, 0.02, 0.03, 0.05, 1.0])
    mask = at.bin_mask_for_interval(low, high)
    spec = SpeculativeDecoder(target, load_drafter(tiny_checkpoints[1], target), DecodeConfig(mode="sample"))
    for seed in range(2):
        a = spec.decode(obs(seed, PROMPTS[seed]), mask).action
        assert np.all(a >= low - 1e-9) and np.all(a <= high + 1e-9)


def test_empty_mask_row_is_rejected(target):
    mask = np.ones((7, 256), dtype=bool)
    mask[4] = False
    with pytest.raises(ValueError, match=r"dimension\(s\) \[4\]"):
        SpeculativeDecoder(target, None, DecodeConfig()).decode(obs(0, PROMPTS[0]), mask)
    with pytest.raises(ValueError, match="shape"):
        SpeculativeDecoder(target, None, DecodeConfig()).decode(obs(0, PROMPTS[0]), np.ones((7, 10), bool))


def test_rules_never_emit_disallowed_tokens_random_logits():
    """Random logits, random masks, random grammar states: every emitted token is allowed."""
    vocab, n_bins = 300, 256
    text_allowed = np.zeros(vocab, bool)
    text_allowed[4:vocab - n_bins] = True
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        mask = rng.random((7, n_bins)) < rng.uniform(0.005, 0.5)
        mask[np.arange(7), rng.integers(0, n_bins, 7)] = True
        g = OutputGrammar(vocab, 3, text_allowed, n_bins, int(rng.integers(0, 4)), mask)
        state = int(rng.integers(0, g.done_state))
        k = int(rng.integers(0, 6))
        states, drafts, qs = [state], [], []
        for _ in range(k):
            if g.is_done(states[-1]):
                break
            q = torch.softmax(torch.randn(vocab, generator=gen) * 3 + g.bias[g.row(states[-1])], -1)
            d = int(torch.multinomial(q, 1, generator=gen))
            drafts.append(d)
            qs.append(q)
            states.append(g.advance(states[-1], d))
        if g.is_done(states[-1]):
            continue
        rows = [g.row(s) for s in states]
        logits = torch.randn(len(rows), vocab, generator=gen) * 5 + g.bias[rows]
        d_t = torch.tensor(drafts, dtype=torch.long)
        relax = torch.tensor([g.is_action_row(r) for r in rows[:-1]], dtype=torch.bool)
        for n, nxt in (greedy_accept(logits, d_t, relax, 30),
                       rejection_accept(torch.softmax(logits, -1), torch.stack(qs) if qs else logits[:0], d_t, gen)):
            emitted = drafts[:n] + [nxt]
            for tok, s in zip(emitted, states):
                assert g.allowed[g.row(s), tok], (trial, tok, s)


# --- relaxed ----------------------------------------------------------------------------

def test_relaxed_r0_equals_greedy(target, tiny_checkpoints, noisy_copy):
    for kind in ("eagle", "noisy"):
        greedy = SpeculativeDecoder(target, make_drafter(kind, tiny_checkpoints, target, noisy_copy), DecodeConfig())
        relaxed = SpeculativeDecoder(target, make_drafter(kind, tiny_checkpoints, target, noisy_copy),
                                     DecodeConfig(mode="relaxed", relax_bins=0))
        for seed in range(2):
            o = obs(seed, PROMPTS[seed])
            mask = narrow_mask(target, 3, seed)
            assert relaxed.decode(o, mask).token_ids == greedy.decode(o, mask).token_ids


def test_greedy_accept_relaxes_only_flagged_positions():
    vocab = 20
    logits = torch.full((4, vocab), -10.0)
    logits[0, 5] = logits[1, 12] = logits[2, 15] = logits[3, 0] = 10.0  # target argmax 5, 12, 15, 0
    drafts = torch.tensor([6, 13, 15])  # off by one, off by one, exact
    text_first = torch.tensor([False, True, True])
    assert greedy_accept(logits, drafts, text_first, 1) == (0, 5)  # text position stays exact
    all_action = torch.tensor([True, True, True])
    assert greedy_accept(logits, drafts, all_action, 1) == (3, 0)  # all within 1 bin -> bonus
    assert greedy_accept(logits, drafts, all_action, 0) == (0, 5)
    assert greedy_accept(logits, torch.tensor([5, 15, 15]), all_action, 2) == (1, 12)  # 3 bins away


def test_relaxed_keeps_narration_and_accepts_close_actions(target, tiny_checkpoints):
    greedy = SpeculativeDecoder(target, load_drafter(tiny_checkpoints[1], target), DecodeConfig())
    wide = SpeculativeDecoder(target, load_drafter(tiny_checkpoints[1], target),
                              DecodeConfig(mode="relaxed", relax_bins=255, draft_len=8, adaptive_draft=False))
    for seed in range(2):
        o = obs(seed, PROMPTS[seed])
        g, w = greedy.decode(o), wide.decode(o)
        assert w.narration_ids == g.narration_ids  # text positions are exact
        # with r = 255 every drafted action token is accepted
        n_action_passes = w.stats.target_passes - 1 - len(w.narration_ids)
        assert w.stats.accepted >= 7 - 1 and n_action_passes <= 2


def test_relaxed_actions_within_r_of_target_choice(target, tiny_checkpoints):
    """With narration capped at 0, each relaxed action token lies within r bins of the target's
    argmax given the same (accepted) prefix."""
    r = 6
    spec = SpeculativeDecoder(target, load_drafter(tiny_checkpoints[1], target),
                              DecodeConfig(mode="relaxed", relax_bins=r, max_narration_tokens=0))
    eon = target.text_tokenizer.eon_token_id
    for seed in range(3):
        o = obs(seed, PROMPTS[seed])
        res = spec.decode(o)
        vis = target.encode_vision(o.image)
        cache, _ = target.prefill(vis, o.instruction, o.proprio)
        logits = target.forward(torch.tensor([eon, *res.action_tokens.tolist()]), cache).logits
        at_begin = target.action_tokenizer.action_token_begin
        argmax = logits[:7, at_begin:].argmax(-1) + at_begin
        assert (torch.from_numpy(res.action_tokens) - argmax).abs().max() <= r


# --- config -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [({"mode": "beam"}, "mode"), ({"relax_bins": -1}, "relax_bins"),
                                         ({"draft_len": 9}, "draft_len"), ({"temperature": 0.0}, "temperature"),
                                         ({"max_narration_tokens": -2}, "max_narration_tokens")])
def test_decode_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DecodeConfig(**kwargs)


def test_text_allowed_mask_excludes_specials_and_actions(target):
    allowed = text_allowed_mask(target)
    tok = target.text_tokenizer
    assert not allowed[[tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eon_token_id]].any()
    assert not allowed[tok.action_token_begin:].any() and allowed[tok.eon_token_id + 1]
    assert isinstance(target.action_tokenizer, ActionTokenizer)


def test_non_finite_logits_never_yield_a_disallowed_action(tiny_checkpoints):
    """A model whose weights went NaN must not produce an action outside the mask."""
    broken = load_vla(tiny_checkpoints[0], device="cpu")
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite logits"):
        SpeculativeDecoder(broken, None, DecodeConfig()).decode(obs(0, PROMPTS[0]), narrow_mask(broken, 2, 0))


@pytest.mark.parametrize("kind", ["model", "eagle"])
def test_narration_reuse_is_lossless_and_skips_draft_passes(kind, tiny_checkpoints, target, noisy_copy):
    """Drafting last frame's narration again: same greedy output, fewer draft passes, and a
    stale or grammar-breaking history (different prompt, shorter narration cap) changes nothing.
    EAGLE feeds the reused tokens with last decision's target features (stand-ins)."""
    base = SpeculativeDecoder(target, None, DecodeConfig())
    if kind == "model":
        reuse = ModelDrafter(noisy_copy, draft_len=3)
        plain = ModelDrafter(noisy_copy, draft_len=3, reuse_narration=False)
    else:
        head = load_drafter(tiny_checkpoints[2], target).head
        reuse = EagleDrafter(head, target, draft_len=3)
        plain = EagleDrafter(head, target, draft_len=3, reuse_narration=False)
    spec_reuse = SpeculativeDecoder(target, reuse, DecodeConfig(draft_len=3, **PLAIN))
    spec_plain = SpeculativeDecoder(target, plain, DecodeConfig(draft_len=3, **PLAIN))
    frames = [obs(0, PROMPTS[0], 1), obs(0, PROMPTS[0], 2), obs(1, PROMPTS[1], 3), obs(1, PROMPTS[1], 4)]
    reused_total = 0
    for o in frames:
        want = base.decode(o)
        got_reuse, got_plain = spec_reuse.decode(o), spec_plain.decode(o)
        assert got_reuse.token_ids == want.token_ids and got_plain.token_ids == want.token_ids
        reused_total += reuse.reused
        assert plain.reused == 0
        if reuse.reused:  # reused narration tokens cost no draft forward passes
            assert got_reuse.stats.draft_passes < got_plain.stats.draft_passes
    assert reused_total > 0, "a repeated frame must reuse the previous narration"
    # the same drafter under a grammar that caps the narration at 1 token: history must yield to it
    short = SpeculativeDecoder(target, reuse, DecodeConfig(draft_len=3, max_narration_tokens=1))
    o = frames[-1]
    assert short.decode(o).token_ids == SpeculativeDecoder(target, None, DecodeConfig(max_narration_tokens=1)).decode(o).token_ids


@pytest.mark.parametrize("kind", ["model", "eagle"])
@pytest.mark.parametrize("mode", ["greedy", "sample"])
@pytest.mark.parametrize("lookahead", [False, True])
def test_action_history_reuse_is_lossless(kind, mode, lookahead, tiny_checkpoints, target, noisy_copy):
    """Proposing last decision's action tokens (every dimension, between model tokens), and with
    ``lookahead`` the target's own predictions past a rejection, keeps greedy output exactly the
    target's and sampling valid; a mask that bans last decision's bins makes the history yield."""
    dims = range(7)
    if kind == "model":
        hist = ModelDrafter(noisy_copy, draft_len=2, reuse_action_dims=dims, lookahead=lookahead)
    else:
        hist = EagleDrafter(load_drafter(tiny_checkpoints[2], target).head, target, draft_len=2,
                            reuse_action_dims=dims, lookahead=lookahead)
    with pytest.raises(ValueError, match="reuse_action_dims"):
        ModelDrafter(noisy_copy, reuse_action_dims=[7])
    # the decoder's free drafts off: this drafter's own settings are under test
    cfg = dict(draft_len=2, mode=mode, temperature=0.7, seed=1, **PLAIN)
    base = SpeculativeDecoder(target, None, DecodeConfig(**cfg))
    spec = SpeculativeDecoder(target, hist, DecodeConfig(**cfg))
    frames = [obs(0, PROMPTS[0], 1), obs(0, PROMPTS[0], 2), obs(5, PROMPTS[0], 3), obs(1, PROMPTS[1], 4)]
    reused = looked_ahead = 0
    for i, o in enumerate(frames):
        mask = narrow_mask(target, 3, i) if i == 2 else None
        got = spec.decode(o, mask)
        assert len(got.action_tokens) == 7
        if mode == "greedy":
            assert got.token_ids == base.decode(o, mask).token_ids
            if i == 1:  # the same image again: everything after the prefill's token comes from history
                assert hist.reused == len(got.token_ids) - 1 and got.stats.target_passes == 2
        # (decode itself raises if an emitted token breaks the grammar or the mask)
        reused += hist.reused
        looked_ahead += hist.looked_ahead
    assert reused >= 7, "repeated frames must reuse last decision's action tokens"
    assert (looked_ahead > 0) == lookahead


def test_narration_reuse_in_sampling_mode_with_shipped_pair():
    """Sampling with a reused (one-hot q) narration: the shipped one-action pair says a steady phrase, so
    later decisions reuse it, and every decision is still a whole phrase + 7 action tokens."""
    from specvla_ros.core.paths import ONE_ACTION_DRAFT_DIR, ONE_ACTION_TARGET_DIR

    target = load_vla(ONE_ACTION_TARGET_DIR, device="cpu")
    drafter = load_drafter(ONE_ACTION_DRAFT_DIR, target)
    spec = SpeculativeDecoder(target, drafter, DecodeConfig(mode="sample", draft_len=3, seed=3, temperature=0.5))
    o = obs(2, "reach the red cube", 1)
    reused, narrations = 0, set()
    for _ in range(5):
        res = spec.decode(o)
        assert len(res.action_tokens) == 7 and res.narration
        narrations.add(res.narration)
        reused += drafter.reused
    assert reused > 0, narrations


@pytest.mark.parametrize("kind", ["model", "eagle"])
def test_decode_config_turns_on_free_drafts(kind, tiny_checkpoints, target):
    """DecodeConfig(history_actions, lookahead, whole_narration) (the node's decode.* parameters) switch the loaded
    drafter's free drafts on (in greedy mode last decision's output is verified in the prefill
    pass); False leaves the drafter's own setting; greedy stays exact, with masks too."""
    drafter = load_drafter(tiny_checkpoints[1 if kind == "model" else 2], target)
    assert drafter.reuse_action_dims == () and not drafter.lookahead and not drafter.whole_narration
    spec = SpeculativeDecoder(target, drafter, DecodeConfig(history_actions=True, lookahead=True, whole_narration=True))
    assert drafter.reuse_action_dims == tuple(range(7)) and drafter.lookahead and drafter.whole_narration
    SpeculativeDecoder(target, drafter, DecodeConfig())
    assert drafter.reuse_action_dims == tuple(range(7)) and drafter.lookahead and drafter.whole_narration
    base = SpeculativeDecoder(target, None, DecodeConfig())
    masked = narrow_mask(target, 3, 0)
    for i, (o, mask) in enumerate([(obs(0, PROMPTS[0], 1), None), (obs(0, PROMPTS[0], 2), None),
                                   (obs(2, PROMPTS[0], 3), None), (obs(2, PROMPTS[0], 4), masked),
                                   (obs(1, PROMPTS[1], 5), None)]):
        got = spec.decode(o, mask)
        assert got.token_ids == base.decode(o, mask).token_ids
        if i == 1:  # the same image again: the prefill pass verified last decision's whole output
            assert got.stats.target_passes == 1 and got.stats.accepted == len(got.token_ids) - 1


def test_decode_config_switches_free_drafts_off_and_none_keeps_the_drafters_own(noisy_copy, target):
    """Every free-draft flag turns its source off as well as on; None leaves the drafter's setting;
    off means no free tokens and no prefill guess, and greedy output is unchanged."""
    drafter = ModelDrafter(noisy_copy, draft_len=2, reuse_action_dims=range(7), lookahead=True)
    drafter.whole_narration = True
    SpeculativeDecoder(target, drafter, DecodeConfig(history_actions=None, lookahead=None, whole_narration=None))
    assert drafter.reuse_action_dims == tuple(range(7)) and drafter.lookahead and drafter.whole_narration
    off = SpeculativeDecoder(target, drafter, DecodeConfig(history_actions=False, lookahead=False,
                                                           whole_narration=False, history_narration=False))
    assert drafter.reuse_action_dims == () and not drafter.lookahead and not drafter.whole_narration
    assert not drafter.reuse_narration and not off.config.prefill_guess
    base = SpeculativeDecoder(target, None, DecodeConfig())
    for i in range(3):  # the same frame: history would draft everything, but every source is off
        o = obs(0, PROMPTS[0], i + 1)
        got = off.decode(o)
        assert got.token_ids == base.decode(o).token_ids
        assert drafter.reused == 0 and drafter.looked_ahead == 0 and got.stats.target_passes > 1
    with pytest.raises(ValueError, match="history_actions"):
        DecodeConfig(history_actions="yes")


@pytest.mark.parametrize("relax_bins", [0, 5])
def test_relaxed_verifies_the_previous_output_in_the_prefill_pass(relax_bins, tiny_checkpoints, target):
    """Relaxed mode reuses last decision's output too (one target pass for a repeated frame); its
    narration stays exactly the target's and each action token within relax_bins of the
    target's choice after the same accepted prefix (r = 0 is token-identical to greedy)."""
    spec = SpeculativeDecoder(target, load_drafter(tiny_checkpoints[1], target),
                              DecodeConfig(mode="relaxed", relax_bins=relax_bins))
    base = SpeculativeDecoder(target, None, DecodeConfig())
    for i, o in enumerate([obs(0, PROMPTS[0], 1), obs(0, PROMPTS[0], 2), obs(3, PROMPTS[2], 3)]):
        got, ref = spec.decode(o), base.decode(o)
        assert got.narration_ids == ref.narration_ids
        assert np.abs(got.action_tokens - ref.action_tokens)[:1].max() <= relax_bins
        if relax_bins == 0:
            assert got.token_ids == ref.token_ids
        if i == 1:
            assert got.stats.target_passes == 1 and got.stats.accepted == len(got.token_ids) - 1
