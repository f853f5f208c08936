"""GPU benchmark script: the --smoke run (tiny shapes on CPU) completes and reports sane JSON."""
from __future__ import annotations

import json

import pytest

from specvla_ros.bench.gpu_bench import GpuBenchConfig, main


def _errors(node, path="") -> list[str]:
    if isinstance(node, dict):
        found = [f"{path}: {node['error']}"] if "error" in node else []
        return found + [e for k, v in node.items() for e in _errors(v, f"{path}/{k}")]
    return []


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "gpu_bench.json"
    assert main(["--smoke", "--frames", "1", "--warmup", "0", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_smoke_run_has_every_variant_and_no_errors(smoke):
    assert smoke["smoke"] and smoke["device"] == "cpu"
    assert _errors(smoke) == []
    for name in ("target_only", "spec_exact", "spec_relaxed"):
        assert smoke["shipped"][name]["median_ms"] > 0
    ov = smoke["openvla7b_random"]
    assert set(ov) >= {"dynamic_cache", "static_cache"}
    for variant in ("dynamic_cache", "static_cache"):
        micro = ov[variant]["micro"]
        assert sorted(map(int, micro["verify_pass_ms_by_tokens"])) == list(range(1, 10))
        assert ov[variant]["target_only"]["target_passes_per_decision"] == 8  # EON, then 7 action steps


def test_exact_modes_reproduce_target_only_tokens(smoke):
    assert smoke["shipped"]["spec_exact"]["action_tokens_equal_to_target_only"] == 1.0
    for variant in ("dynamic_cache", "static_cache"):
        res = smoke["openvla7b_random"][variant]
        assert res["spec_exact_eagle_random"]["action_tokens_equal_to_target_only"] == 1.0
        oracle = res["spec_exact_oracle"]
        assert oracle["action_tokens_equal_to_target_only"] == 1.0
        assert oracle["acceptance_rate"] == 1.0
        # draft_len 4, all accepted: prefill emits EON, then 2 verify passes cover 7 action tokens
        assert oracle["target_passes_per_decision"] == 3
        relaxed = res["spec_relaxed_eagle_random"]
        assert relaxed["max_bin_distance_to_target_only"] <= smoke["relax_bins"]


def test_config_validation_and_smoke_overrides():
    cfg = GpuBenchConfig(smoke=True, device="cuda", frames=50)
    assert cfg.device == "cpu" and cfg.frames == 3 and not cfg.cuda_graphs
    with pytest.raises(ValueError, match="draft_len"):
        GpuBenchConfig(draft_len=9, max_draft_len=8)
    with pytest.raises(ValueError, match="frames"):
        GpuBenchConfig(frames=0)


def test_full_run_refuses_a_cpu(capsys):
    assert main(["--device", "cpu", "--no-shipped"]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_benchmark_model_has_openvla_7bs_shape():
    """Built on the meta device (no memory): the random benchmark model has OpenVLA-7B's geometry."""
    import torch
    from transformers import LlamaForCausalLM

    from specvla_ros.core.models.openvla_checkpoint import OPENVLA_7B, _llama_config, _tower_cfg
    from specvla_ros.core.models.vision_vit import PrismaticProjector, ViTFeaturizer

    with torch.device("meta"):
        cfgs = [_tower_cfg(t, OPENVLA_7B.image_size) for t in OPENVLA_7B.towers]
        towers = [ViTFeaturizer(c) for c in cfgs]
        proj = PrismaticProjector(True, sum(c.embed_dim for c in cfgs), OPENVLA_7B.hidden)
        llm = LlamaForCausalLM(_llama_config(OPENVLA_7B))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert [c.n_patches for c in cfgs] == [256, 256] and sum(c.embed_dim for c in cfgs) == 2176
    assert llm.model.embed_tokens.weight.shape == (32064, 4096) and len(llm.model.layers) == 32
    assert llm.model.layers[0].mlp.gate_proj.weight.shape == (11008, 4096)
    total = sum(count(t) for t in towers) + count(proj) + count(llm)
    assert 7.50e9 < total < 7.56e9  # OpenVLA-7B: 7.54 B with SigLIP's unused attention-pool head


def test_time_budget_skips_remaining_variants(tmp_path):
    out = tmp_path / "b.json"
    assert main(["--smoke", "--frames", "1", "--warmup", "0", "--no-openvla", "--time-budget", "1e-6",
                 "--out", str(out)]) == 0
    shipped = json.loads(out.read_text())["shipped"]
    assert all(shipped[k] == {"skipped": "time budget spent (--time-budget)"}
               for k in ("target_only", "spec_exact", "spec_relaxed"))
