"""Sampling mode reproduces the target's distribution (Leviathan/Chen rule)."""
import numpy as np
import pytest
import torch

from specvla_ros.core.decoding.drafters import ModelDrafter
from specvla_ros.core.models.loading import load_drafter, load_vla
from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder, rejection_accept
from specvla_ros.core.types import Observation


def tv(a, b):
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def accept_all(p, q, drafts, generator):
    """A WRONG rule (accept every draft): its output follows q, not p."""
    k = drafts.shape[0]
    return k, int(torch.multinomial(p[k], 1, generator=generator))


def _first_token_frequencies(rule, p, q, n_trials, seed):
    """Empirical distribution of the first emitted token, drafts sampled from q."""
    gen = torch.Generator().manual_seed(seed)
    counts = np.zeros(p.shape[1])
    pair_counts = np.zeros((p.shape[1], p.shape[1]))
    for _ in range(n_trials):
        d = torch.stack([torch.multinomial(q[i], 1, generator=gen)[0] for i in range(q.shape[0])])
        n, nxt = rule(p, q, d, gen)
        emitted = d[:n].tolist() + [nxt]
        counts[emitted[0]] += 1
        if len(emitted) > 1:
            pair_counts[emitted[0], emitted[1]] += 1
    return counts / n_trials, pair_counts


def test_rejection_rule_reproduces_target_distribution():
    # small vocabulary; p is position-independent so the second emitted token must also follow p
    p_row = torch.tensor([0.05, 0.45, 0.10, 0.30, 0.10])
    q_row = torch.tensor([0.40, 0.05, 0.30, 0.05, 0.20])
    assert tv(p_row, q_row) > 0.5  # a rule that keeps q's choices is far off
    p = p_row.repeat(3, 1)
    q = q_row.repeat(2, 1)
    freq, pairs = _first_token_frequencies(rejection_accept, p, q, 6000, seed=0)
    assert tv(freq, p_row) < 0.03
    second = pairs.sum(0) / pairs.sum()
    assert tv(second, p_row) < 0.04
    wrong, _ = _first_token_frequencies(accept_all, p, q, 6000, seed=0)
    assert tv(wrong, p_row) > 0.3  # the same threshold catches the wrong rule


def test_rejection_rule_edge_cases():
    gen = torch.Generator().manual_seed(1)
    p = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    q = torch.tensor([[0.0, 1.0, 0.0]])
    assert rejection_accept(p, q, torch.tensor([1]), gen) == (1, 2)  # accepted, bonus from p[1]
    q_bad = torch.tensor([[1.0, 0.0, 0.0]])
    assert rejection_accept(p, q_bad, torch.tensor([0]), gen) == (0, 1)  # p(x)=0 rejects; residual -> 1
    assert rejection_accept(p[:1], p[:0], torch.tensor([], dtype=torch.long), gen) == (0, 1)  # no drafts


@pytest.fixture(scope="module")
def target(tiny_checkpoints):
    return load_vla(tiny_checkpoints[0], device="cpu")


def test_sampling_decoder_matches_target_distribution(target, tiny_checkpoints):
    """End to end: first two action tokens, 3 allowed bins each, no narration. The exact joint
    distribution comes from the target's own logits; the drafter's differs clearly."""
    temperature = 0.05  # random weights give flat logits; sharpen so p and q differ
    rng = np.random.default_rng(0)
    o = Observation(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), "pick up the red cube",
                    rng.normal(size=8).astype(np.float32), frame_id=1)
    mask = np.zeros((7, 256), dtype=bool)
    bins = np.array([40, 130, 200])
    mask[:, bins] = True
    at = target.action_tokenizer
    toks = at.bin_to_token(bins)
    eon = target.text_tokenizer.eon_token_id

    def joint(model, first_dim_only=False):
        vis = target.encode_vision(o.image)
        out = np.zeros((3, 3))
        for i, t0 in enumerate(toks):
            cache, _ = model.prefill(vis, o.instruction, o.proprio)
            logits = model.forward(torch.tensor([eon, int(t0)]), cache).logits
            p0 = torch.softmax(logits[0, toks] / temperature, -1)
            p1 = torch.softmax(logits[1, toks] / temperature, -1)
            out[i] = (p0[i] * p1).numpy()
        return out

    exact = joint(target)
    draft_model = load_drafter(tiny_checkpoints[1], target).model
    assert tv(exact.ravel(), joint(draft_model).ravel()) > 0.3

    spec = SpeculativeDecoder(target, ModelDrafter(draft_model),
                              DecodeConfig(mode="sample", temperature=temperature, max_narration_tokens=0,
                                           draft_len=3, adaptive_draft=False, seed=0))
    n = 300
    counts = np.zeros((3, 3))
    index = {int(t): i for i, t in enumerate(toks)}
    for _ in range(n):
        a = spec.decode(o, mask).action_tokens
        counts[index[int(a[0])], index[int(a[1])]] += 1
    assert tv(counts.ravel() / n, exact.ravel()) < 0.1
