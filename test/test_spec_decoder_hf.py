"""Our cached LLaMA loop against transformers: the backbone inside LlamaForCausalLM,
fed the same prefix embeddings, generates (do_sample=False) exactly what our decoder
emits, target-only and speculative."""
import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from specvla_ros.core.models.loading import load_drafter, load_vla
from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
from specvla_ros.core.types import Observation


class GrammarLogitsProcessor(LogitsProcessor):
    """Applies the decoder's output grammar (narration, EON, 7 actions, mask) inside generate()."""

    def __init__(self, grammar):
        self.grammar = grammar

    def __call__(self, input_ids, scores):
        state = self.grammar.initial_state
        for tok in input_ids[0].tolist():
            state = self.grammar.advance(state, tok)
        return scores + self.grammar.bias[self.grammar.row(min(state, self.grammar.done_state - 1))].to(scores.dtype)


@pytest.fixture(scope="module")
def setup(tiny_checkpoints):
    target = load_vla(tiny_checkpoints[0], device="cpu", dtype=torch.float64)
    hf = LlamaForCausalLM(target.config.llama_config())
    state = {f"model.{k}": v for k, v in target.backbone.state_dict().items()}
    state["lm_head.weight"] = target.lm_head.weight
    hf.load_state_dict(state, strict=True)
    return target, hf.to(torch.float64).eval()


@pytest.mark.parametrize("seed,masked", [(0, False), (1, True), (2, False)])
def test_decoder_matches_transformers_generate(setup, tiny_checkpoints, seed, masked):
    target, hf = setup
    rng = np.random.default_rng(seed)
    o = Observation(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
                    ["pick up the red cube", "move to the blue ball", "push the green block to the target"][seed],
                    rng.normal(size=8).astype(np.float32))
    mask = None
    if masked:
        mask = rng.random((7, 256)) < 0.1
        mask[:, 0] = True
    base = SpeculativeDecoder(target, None, DecodeConfig())
    ours = base.decode(o, mask)
    grammar = base._make_grammar(mask)
    with torch.inference_mode():
        embeds = target.prefix_embeds(target.encode_vision(o.image), o.instruction, o.proprio)
        gen = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                          do_sample=False, max_new_tokens=len(ours.token_ids), min_new_tokens=len(ours.token_ids),
                          logits_processor=LogitsProcessorList([GrammarLogitsProcessor(grammar)]),
                          pad_token_id=target.text_tokenizer.pad_token_id, eos_token_id=None)
    assert gen[0, -len(ours.token_ids):].tolist() == ours.token_ids
    for drafter_dir in tiny_checkpoints[1:]:
        spec = SpeculativeDecoder(target, load_drafter(drafter_dir, target), DecodeConfig(draft_len=4))
        assert spec.decode(o, mask).token_ids == ours.token_ids
