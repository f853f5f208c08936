"""``specvla_bench``: per-decision latency of every decoding strategy, side by side in one run.

Measured round-robin (each decision runs every method on the same observation, so
machine load hits all methods alike); each decision is a new camera frame (vision
encoder included everywhere):

    baseline        target-only autoregressive decoding with KV cache (our loop, k = 0)
    spec_exact      speculative decoding, greedy exact (lossless), one entry per drafter
    spec_relaxed    relaxed acceptance on action positions (|bin_draft - bin_target| <= r)
    lower_bound     vision + prefill + ONE target pass over all emitted positions

With an action-chunk target every row decodes the whole chunk (narration, then H actions):
baseline is the target's own autoregressive decoding of the chunk. Consecutive sim frames are
one control step apart, so each decision drafts from the previous chunk moved one step.
    hf_greedy / hf_assisted
                    transformers' generate() without / with ``assistant_model`` on the pair's
                    LLaMA backbones. transformers 5.x assisted generation rejects
                    ``inputs_embeds`` (our vision prefix), so both run on a token prefix of the
                    same length instead: same models, same lengths, not the same acceptance.

Checkpoints: --target/--draft dirs; by default the shipped models when present,
else random ones of --preset built in a temporary directory (random weights accept
little: speedups then show the loop's cost, not its benefit).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig

from specvla_ros.core.decoding.drafters import AdaptiveDraftLength
from specvla_ros.core.models.interface import ModelLoadError
from specvla_ros.core.models.loading import load_drafter, load_vla
from specvla_ros.core.paths import DEFAULT_DRAFT_DIR, DEFAULT_TARGET_DIR, shipped_models_present
from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft
from specvla_ros.core.types import Observation

PROMPTS = ("pick up the red cube", "push the blue block to the target", "move to the green ball",
           "reach the yellow cube")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specvla_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=Path, help="target checkpoint dir (default: shipped model, else random)")
    p.add_argument("--draft", type=Path, action="append", default=None,
                   help="draft checkpoint dir (repeatable; default: shipped draft, else random model + eagle)")
    p.add_argument("--preset", default="default", choices=["test", "default"], help="size of random models")
    p.add_argument("--decisions", type=int, default=20, help="measured decisions per method")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured decisions per method first")
    p.add_argument("--relax-bins", type=int, default=9, help="r of relaxed acceptance [bins]")
    p.add_argument("--free-drafts", action="store_true",
                   help="also run exact decoding with each draft plus the decoder's free drafts: +hist "
                        "(decode.history_actions: last decision's output, verified in the prefill pass, and its action "
                        "tokens), +la (decode.lookahead: the target's predictions past a rejection), +hist+la, +hist+la+wn "
                        "(decode.whole_narration: the model drafts the narration in one proposal)")
    p.add_argument("--draft-len", type=int, default=4, help="initial draft length k")
    p.add_argument("--max-draft-len", type=int, default=8)
    p.add_argument("--max-narration", type=int, default=12, help="narration token cap")
    p.add_argument("--horizon", type=int, default=0,
                   help="actions decoded per decision (0: the target's chunk length; fewer: the chunk's prefix)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--dtype", default=None, help="float32|bfloat16|float16 (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers generate() comparisons")
    p.add_argument("--frames", default="random", choices=["random", "sim"],
                   help="random: a noise image and prompt per decision (no simulator needed); sim: consecutive "
                        "camera frames of scripted-expert episodes (what the closed loop sees)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


class _Method:
    """Accumulates per-decision latencies and decode statistics of one strategy."""

    def __init__(self, name: str, note: str = "") -> None:
        self.name, self.note = name, note
        self.lat: list[float] = []
        self.emitted = self.passes = self.drafted = self.accepted = 0
        self.model_time = self.overhead_time = 0.0
        self.stages = {"vision": 0.0, "prefill": 0.0, "draft": 0.0, "verify": 0.0, "overhead": 0.0}

    def add(self, seconds: float, stats=None) -> None:
        self.lat.append(seconds)
        if stats is not None:
            self.emitted += stats.emitted
            self.passes += stats.target_passes
            self.drafted += stats.drafted
            self.accepted += stats.accepted
            self.overhead_time += stats.overhead_time_s
            self.model_time += stats.total_time_s - stats.overhead_time_s
            for stage in self.stages:
                self.stages[stage] += getattr(stats, f"{stage}_time_s")

    def summary(self, baseline_p50: float | None) -> dict:
        p50 = _pct(self.lat, 50)
        out = {"p50_ms": 1e3 * p50, "p95_ms": 1e3 * _pct(self.lat, 95), "n": len(self.lat)}
        if self.passes:
            out["tokens_per_verify_pass"] = self.emitted / self.passes
            out["acceptance_rate"] = self.accepted / self.drafted if self.drafted else 0.0
            out["overhead_pct_of_model_time"] = 100.0 * self.overhead_time / self.model_time if self.model_time else 0.0
            out["mean_stage_ms"] = {k: 1e3 * v / len(self.lat) for k, v in self.stages.items()}
        if baseline_p50:
            out["speedup_vs_baseline"] = baseline_p50 / p50 if p50 > 0 else float("nan")
        if self.note:
            out["note"] = self.note
        return out


class OracleDrafter(AdaptiveDraftLength):
    """Proposes a known token sequence (the target's greedy output) with no model: every
    draft is accepted and drafting costs nothing, so it measures the loop's ceiling."""

    kind = "oracle"
    needs_target_hidden = False
    module = None
    reused = looked_ahead = 0

    def configure(self, settings) -> None:  # noqa: ANN001 - DraftSettings; no free sources to switch
        self.set_length(settings)

    def previous_output(self, grammar, shift: int = 1) -> list[int]:  # noqa: ANN001
        return []

    def finish(self) -> None:
        pass

    def __init__(self, draft_len: int, max_draft_len: int) -> None:
        super().__init__(draft_len, max_draft_len, adaptive=True)
        self.sequence: list[int] = []
        self.passes = 0
        self._pos = 0
        self._proposed: list[int] = []

    def begin(self, ctx) -> None:  # noqa: ANN001 - DraftContext
        if not self.sequence or ctx.first_token != self.sequence[0]:
            raise ValueError("OracleDrafter needs the target's greedy output of this observation first")
        self._pos = 1
        self.num_draft_tokens = self.initial

    def propose(self, k, grammar, state, sample, temperature, generator):  # noqa: ANN001, ANN201
        self._proposed = self.sequence[self._pos : self._pos + k]
        return self._proposed, None

    def accept(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor) -> None:
        self._pos += n_accepted + (next_token is not None)


def _hf_causal_lm(model):
    """The model's LLaMA backbone + LM head as a transformers LlamaForCausalLM (shared weights copied)."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(model.config.llama_config())
    state = {f"model.{k}": v for k, v in model.backbone.state_dict().items()}
    state["lm_head.weight"] = model.lm_head.weight
    hf.load_state_dict(state, strict=True)
    return hf.to(device=model.device, dtype=model.dtype).eval()


def _resolve_checkpoints(args, workdir: Path) -> tuple[Path, list[Path], str]:
    if args.target is not None:
        target = args.target
        drafts = list(args.draft or [])
        source = "given"
        if not drafts:
            drafts = [make_random_draft(workdir / "draft_model", target, "model", seed=args.seed + 1),
                      make_random_draft(workdir / "draft_eagle", target, "eagle", seed=args.seed + 2)]
            source = "given target, random drafts"
        return target, drafts, source
    if shipped_models_present():
        return DEFAULT_TARGET_DIR, list(args.draft or [DEFAULT_DRAFT_DIR]), "shipped"
    target = make_random_checkpoint(workdir / "target", preset=args.preset, seed=args.seed)
    drafts = list(args.draft or [make_random_draft(workdir / "draft_model", target, "model", seed=args.seed + 1),
                                 make_random_draft(workdir / "draft_eagle", target, "eagle", seed=args.seed + 2)])
    return target, drafts, f"random {args.preset} preset"


def sim_observations(n: int, seed: int) -> list[Observation]:
    """n consecutive camera frames of scripted-expert episodes (reach, push, pick cycled), 10 Hz."""
    from specvla_ros.core.safety.kinematics import ArmKinematics
    from specvla_ros.sim.expert import ScriptedExpert
    from specvla_ros.sim.task_env import TaskEnv
    from specvla_ros.train.collect import run_episode

    env = TaskEnv("reach", seed=seed)
    expert, kin = ScriptedExpert(env), ArmKinematics.from_urdf()
    frames: list[Observation] = []
    try:
        i = 0
        while len(frames) < n:
            env.reset(seed=seed + i, task=("reach", "push", "pick")[i % 3])
            ep = run_episode(env, expert, kin, hold_steps=0)
            frames += [Observation(img, env.instruction, prop, frame_id=len(frames) + j)
                       for j, (img, prop) in enumerate(zip(ep.images, ep.proprio))]
            i += 1
    finally:
        env.close()
    return frames[:n]


def run(args: argparse.Namespace) -> dict:
    if args.decisions < 1 or args.warmup < 0:
        raise ValueError(f"--decisions must be >= 1 and --warmup >= 0, got {args.decisions}, {args.warmup}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="specvla_bench_"))
    target_dir, draft_dirs, source = _resolve_checkpoints(args, workdir)
    target = load_vla(target_dir, device=args.device, dtype=args.dtype)
    # the plain spec rows run without the free drafts (the DecodeConfig default); --free-drafts adds them
    cfg = dict(draft_len=args.draft_len, max_draft_len=args.max_draft_len, max_narration_tokens=args.max_narration,
               seed=args.seed, horizon=args.horizon, history_actions=False, lookahead=False, whole_narration=False)
    decoders: dict[str, SpeculativeDecoder] = {"baseline": SpeculativeDecoder(target, None, DecodeConfig(**cfg))}
    drafters_info = {}
    for i, d in enumerate(draft_dirs):
        kind = json.loads((Path(d) / "config.json").read_text()).get("draft_kind", "?")
        name = kind if kind not in drafters_info else f"{kind}{i}"
        drafters_info[name] = str(d)
        decoders[f"spec_exact[{name}]"] = SpeculativeDecoder(target, load_drafter(d, target), DecodeConfig(**cfg))
        decoders[f"spec_relaxed[{name},r={args.relax_bins}]"] = SpeculativeDecoder(
            target, load_drafter(d, target), DecodeConfig(mode="relaxed", relax_bins=args.relax_bins, **cfg))
        if args.free_drafts:
            all_free = dict(history_actions=True, lookahead=True, whole_narration=True)
            for suffix, extra in (("+hist", dict(history_actions=True)), ("+la", dict(lookahead=True)),
                                  ("+hist+la", dict(history_actions=True, lookahead=True)), ("+hist+la+wn", all_free)):
                decoders[f"spec_exact[{name}{suffix}]"] = SpeculativeDecoder(
                    target, load_drafter(d, target), DecodeConfig(**{**cfg, **extra}))
            # relaxed with all three free drafts (the node's decode.mode: relaxed)
            decoders[f"spec_relaxed[{name}+hist+la+wn,r={args.relax_bins}]"] = SpeculativeDecoder(
                target, load_drafter(d, target),
                DecodeConfig(**{**cfg, **all_free}, mode="relaxed", relax_bins=args.relax_bins))
    oracle = OracleDrafter(args.draft_len, args.max_draft_len)
    decoders["spec_exact[oracle]"] = SpeculativeDecoder(target, oracle, DecodeConfig(**cfg))
    methods = {name: _Method(name) for name in decoders}
    methods["spec_exact[oracle]"].note = ("drafts the baseline's own output at zero cost: the ceiling of "
                                          "speculative decoding with a perfect, free drafter")
    methods["lower_bound"] = _Method("lower_bound", "vision + prefill + one target pass over all emitted positions")

    hf_target = hf_assist = None
    hf_note = ""
    if not args.no_hf:
        model_drafts = [d for d in draft_dirs if json.loads((Path(d) / "config.json").read_text()).get("draft_kind") == "model"]
        hf_target = _hf_causal_lm(target)
        methods["hf_greedy"] = _Method("hf_greedy", "transformers generate(do_sample=False), token prefix of equal length")
        if model_drafts:
            hf_assist = _hf_causal_lm(load_drafter(model_drafts[0], target).model)
            hf_note = ("transformers assisted generation (assistant_model=draft backbone); it rejects inputs_embeds, "
                       "so it runs on a token prefix of the same length: same models and lengths, not the same acceptance")
            methods["hf_assisted"] = _Method("hf_assisted", hf_note)

    rng = np.random.default_rng(args.seed)
    n_total = args.warmup + args.decisions
    frames = sim_observations(n_total, 90000 + args.seed) if args.frames == "sim" else None
    device = target.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for i in range(n_total):
        measure = i >= args.warmup
        o = frames[i] if frames is not None else Observation(
            rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), PROMPTS[i % len(PROMPTS)],
            rng.normal(size=8).astype(np.float32), frame_id=None)
        base_tokens: list[int] = []
        for name, dec in decoders.items():
            sync()
            t0 = time.perf_counter()
            res = dec.decode(o)
            sync()
            dt = time.perf_counter() - t0
            if name == "baseline":  # runs first: the oracle replays it
                base_tokens = res.token_ids
                oracle.sequence = base_tokens
            if measure:
                methods[name].add(dt, res.stats)
        # lower bound: what one pass over all positions costs (what parallel decoding would pay)
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            vis = target.encode_vision(o.image)
            cache, _ = target.prefill(vis, o.instruction, o.proprio)
            target.forward(torch.tensor(base_tokens[:-1], dtype=torch.long, device=device), cache)
            sync()
            if measure:
                methods["lower_bound"].add(time.perf_counter() - t0)
            if hf_target is not None:
                n_new = len(base_tokens)
                prefix_len = len(cache) - (n_new - 1)
                prompt = target.prompt_ids(o.instruction)
                ids = prompt.repeat(prefix_len // len(prompt) + 1)[:prefix_len][None]
                gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                                           eos_token_id=None, pad_token_id=target.text_tokenizer.pad_token_id)
                gen_kw = dict(generation_config=gen_cfg, attention_mask=torch.ones_like(ids))
                for name, extra in (("hf_greedy", {}), ("hf_assisted", {"assistant_model": hf_assist})):
                    if name not in methods:
                        continue
                    sync()
                    t0 = time.perf_counter()
                    target.encode_vision(o.image)  # same vision cost as every other method
                    hf_target.generate(ids, **gen_kw, **extra)
                    sync()
                    if measure:
                        methods[name].add(time.perf_counter() - t0)

    base_p50 = _pct(methods["baseline"].lat, 50)
    return {
        "device": str(device), "dtype": str(target.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "checkpoints": {"source": source, "target": str(target_dir), "drafts": drafters_info},
        "horizon": decoders["baseline"].horizon,
        "decisions": args.decisions, "frames": args.frames, "relax_bins": args.relax_bins, "draft_len": args.draft_len,
        "max_draft_len": args.max_draft_len, "max_narration_tokens": args.max_narration,
        "methods": {name: m.summary(None if name == "baseline" else base_p50) for name, m in methods.items()},
    }


def format_table(report: dict) -> str:
    lines = [f"specvla_bench: {report['checkpoints']['source']} checkpoints, device {report['device']} "
             f"{report['dtype']}, {report['threads']} threads, {report['decisions']} decisions/method, {report['frames']} frames, "
             f"{report['horizon']} action(s) per decision",
             f"{'method':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'speedup':>8s} {'tok/pass':>8s} {'accept':>7s} {'ovh %':>6s}"]
    for name, m in report["methods"].items():
        def f(key, fmt):
            return format(m[key], fmt) if key in m else "-"
        lines.append(f"{name:34s} {m['p50_ms']:8.2f} {m['p95_ms']:8.2f} {f('speedup_vs_baseline', '8.2f'):>8s} "
                     f"{f('tokens_per_verify_pass', '8.2f'):>8s} {f('acceptance_rate', '7.2f'):>7s} "
                     f"{f('overhead_pct_of_model_time', '6.1f'):>6s}")
    notes = [f"  {n}: {m['note']}" for n, m in report["methods"].items() if "note" in m]
    return "\n".join(lines + (["notes:"] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, OSError, ModelLoadError) as exc:
        print(f"specvla_bench: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
