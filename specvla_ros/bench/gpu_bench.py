"""GPU benchmark: target-only vs speculative (exact, relaxed) decoding, printed as JSON.

One prepared script, sized to finish in well under 5 minutes on one GPU:

1. ``shipped``: the shipped default pair (``specvla_ros/data/models/{chunk_target,chunk_draft}``) when present.
2. ``openvla7b_random``: a random-weight model of OpenVLA-7B's shape (LLaMA-2 7B:
   32 x 4096, 11008 MLP, 32 heads, vocab 32000 (+64 padding); DINOv2 ViT-L/14 + SigLIP
   So400m/14 at 224 px, fused projector) in bf16, with a random EAGLE head of
   Spec-VLA's shape (one 4096-wide LLaMA layer) and an *oracle* drafter that
   proposes the target's own greedy tokens. Random weights make the EAGLE
   head's acceptance meaningless; the oracle row is the ceiling (every draft
   accepted), i.e. the pure cost of drafting k tokens and verifying them in one pass.
   Micro-benchmarks: vision, prefill, and one verify pass over n = 1..9 tokens.

Every decode variant runs through ``SpeculativeDecoder`` (the node's decoder);
with ``--static-cache`` / ``--cuda-graphs`` the OpenVLA target also runs on a
preallocated cache, and with graphs its n-token steps are captured once per n
and replayed (if capturing fails, the plain static cache is measured instead).
A variant that fails reports its error in the JSON instead of ending the run,
and variants not started within ``--time-budget`` seconds are skipped.

    python -m specvla_ros.bench.gpu_bench                 # on the GPU machine
    python -m specvla_ros.bench.gpu_bench --smoke         # tiny shapes on CPU (CI)
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specvla_ros.core.types import Observation

LOG = logging.getLogger(__name__)


@dataclass
class GpuBenchConfig:
    """What to run. Times are seconds; ``frames`` decisions are timed per variant after ``warmup``."""

    smoke: bool = False
    device: str = "auto"
    frames: int = 20
    warmup: int = 3
    draft_len: int = 4
    max_draft_len: int = 8
    relax_bins: int = 9  # Spec-VLA's default threshold
    shipped: bool = True
    openvla: bool = True
    static_cache: bool = True
    cuda_graphs: bool = True
    seed: int = 0
    time_budget_s: float = 270.0  # variants not started by then are skipped (the run must stay under 5 min)

    def __post_init__(self) -> None:
        for name in ("frames", "draft_len", "max_draft_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.relax_bins < 0:
            raise ValueError(f"warmup ({self.warmup}) and relax_bins ({self.relax_bins}) must be >= 0")
        if not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if self.draft_len > self.max_draft_len:
            raise ValueError(f"draft_len {self.draft_len} exceeds max_draft_len {self.max_draft_len}")
        if self.smoke:  # CI: tiny shapes, CPU, a couple of frames, no graphs
            self.device, self.frames, self.warmup, self.cuda_graphs = "cpu", min(self.frames, 3), min(self.warmup, 1), False


class OracleDrafter:
    """Proposes a known token script (the target's own greedy output): every draft is accepted.

    Call ``set_script(token_ids)`` before each decode. Costs nothing to draft, so a
    decode with it measures the verify side alone: ceil(8 / (k + 1)) target passes.
    """

    kind = "oracle"
    needs_target_hidden = False
    module = None
    reused = looked_ahead = 0

    def configure(self, settings) -> None:  # noqa: ANN001 - DraftSettings; k stays fixed (update is a no-op)
        self.num_draft_tokens = self.initial = settings.draft_len
        self.max_draft_len = settings.max_draft_len

    def previous_output(self, grammar) -> list[int]:  # noqa: ANN001
        return []

    def finish(self) -> None:
        pass

    def __init__(self, draft_len: int, max_draft_len: int) -> None:
        self.num_draft_tokens = self.initial = draft_len
        self.max_draft_len = max_draft_len
        self.adaptive = False
        self.passes = 0
        self._script: list[int] = []
        self._pos = 0

    def set_script(self, tokens: list[int]) -> None:
        self._script = list(tokens)

    def begin(self, ctx) -> None:  # noqa: ANN001 - DraftContext
        self._pos = 1  # the prefill emitted script[0]
        self.passes = 0
        self.num_draft_tokens = self.initial

    def propose(self, k, grammar, state, sample, temperature, generator):  # noqa: ANN001, ANN201
        return self._script[self._pos: self._pos + k], None

    def accept(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor) -> None:
        self._pos += n_accepted + (next_token is not None)

    def update(self, num_accepted: int, num_proposed: int) -> None:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Smooth random frames (a blurred noise field plus a few blocks), distinct per frame."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3)).astype(np.float32)
        img = np.kron(base, np.ones((8, 8, 1)))[:size, :size]
        out.append(img.astype(np.uint8))
    return out


def _summ(xs: list[float]) -> dict:
    arr = np.asarray(xs) * 1e3
    return {"median_ms": float(np.median(arr)), "mean_ms": float(arr.mean()), "p90_ms": float(np.percentile(arr, 90)),
            "min_ms": float(arr.min())}


def run_variant(target, drafter, mode: str, frames: list[np.ndarray], instruction: str, cfg: GpuBenchConfig,  # noqa: ANN001
                scripts: list[list[int]] | None = None, reference: list[np.ndarray] | None = None) -> dict:
    """Decode every frame (after warm-up) -> latency summary, acceptance and agreement with ``reference``."""
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder

    dec = SpeculativeDecoder(target, drafter, DecodeConfig(
        mode="relaxed" if mode == "relaxed" else "greedy", relax_bins=cfg.relax_bins if mode == "relaxed" else 0,
        draft_len=cfg.draft_len, max_draft_len=cfg.max_draft_len, seed=cfg.seed))
    proprio = np.zeros(8, np.float32)
    times, parts = [], {"vision": [], "prefill": [], "draft": [], "verify": []}
    passes = drafted = accepted = emitted = 0
    tokens: list[np.ndarray] = []
    order = list(range(min(cfg.warmup, len(frames)))) + list(range(len(frames)))
    for n, i in enumerate(order):
        if scripts is not None:
            drafter.set_script(scripts[i])
        _sync(target.device)
        t0 = time.perf_counter()
        res = dec.decode(Observation(frames[i], instruction, proprio, frame_id=n))  # new frame id: vision runs
        _sync(target.device)
        dt = time.perf_counter() - t0
        if n < min(cfg.warmup, len(frames)):
            continue
        times.append(dt)
        s = res.stats
        for key, val in (("vision", s.vision_time_s), ("prefill", s.prefill_time_s), ("draft", s.draft_time_s),
                         ("verify", s.verify_time_s)):
            parts[key].append(val * 1e3)
        passes += s.target_passes
        drafted += s.drafted
        accepted += s.accepted
        emitted += s.emitted
        tokens.append(res.action_tokens)
    out = {**_summ(times), "hz": float(1.0 / statistics.median(times)),
           "stage_median_ms": {k: float(np.median(v)) for k, v in parts.items()},
           "target_passes_per_decision": passes / len(times), "mean_accepted_length": emitted / max(passes, 1),
           "acceptance_rate": accepted / drafted if drafted else None, "tokens_per_decision": emitted / len(times)}
    if reference is not None:
        a, b = np.stack(tokens), np.stack(reference)
        out["action_tokens_equal_to_target_only"] = float((a == b).mean())
        out["max_bin_distance_to_target_only"] = int(np.abs(a - b).max())
    out["_tokens"] = tokens
    return out


_DEADLINE = [float("inf")]  # perf_counter() after which no new variant starts (set by run())


def _guarded(name: str, fn, results: dict) -> dict | None:  # noqa: ANN001
    """Run one variant; on failure record its error and go on (a prepared script must not die half-way)."""
    if time.perf_counter() > _DEADLINE[0]:
        results[name] = {"skipped": "time budget spent (--time-budget)"}
        return None
    LOG.info("running %s", name)
    try:
        res = fn()
    except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError, NotImplementedError, TypeError) as exc:
        LOG.error("%s failed: %s", name, exc)
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)}
        return None
    results[name] = {k: v for k, v in res.items() if not k.startswith("_")}
    return res


def bench_pair(target, drafter, frames: list[np.ndarray], instruction: str, cfg: GpuBenchConfig) -> dict:  # noqa: ANN001
    """target-only, speculative exact and relaxed on one (target, drafter) pair."""
    results: dict = {}
    base = _guarded("target_only", lambda: run_variant(target, None, "greedy", frames, instruction, cfg), results)
    ref = base["_tokens"] if base else None
    for mode in ("exact", "relaxed"):
        _guarded(f"spec_{mode}", lambda m=mode: run_variant(target, drafter, m, frames, instruction, cfg,
                                                            reference=ref), results)
    _speedups(results)
    return results


def _speedups(results: dict) -> None:
    base = results.get("target_only", {}).get("median_ms")
    for name, r in results.items():
        if base and isinstance(r, dict) and "median_ms" in r and name != "target_only":
            r["speedup_vs_target_only"] = base / r["median_ms"]


def bench_shipped(cfg: GpuBenchConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """The shipped tiny pair (or, with --smoke and no shipped models, a random pair of the same kind)."""
    from specvla_ros.core.models.loading import load_drafter, load_vla
    from specvla_ros.core.paths import DEFAULT_DRAFT_DIR, DEFAULT_TARGET_DIR, shipped_models_present

    tmp = None
    if shipped_models_present():
        target_dir, draft_dir, source = DEFAULT_TARGET_DIR, DEFAULT_DRAFT_DIR, "shipped"
    elif cfg.smoke:
        from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft

        tmp = tempfile.TemporaryDirectory(prefix="gpu_bench_")
        target_dir = make_random_checkpoint(Path(tmp.name) / "target", preset="test")
        draft_dir = make_random_draft(Path(tmp.name) / "draft", target_dir, kind="model")
        source = "random tiny pair (smoke)"
    else:
        return {"skipped": f"no shipped models under {DEFAULT_TARGET_DIR.parent}"}
    try:
        target = load_vla(target_dir, device=device, dtype=dtype)
        drafter = load_drafter(draft_dir, target, cfg.draft_len, cfg.max_draft_len)
        size = getattr(getattr(target, "config", None), "image_size", 128)
        frames = _images(cfg.frames, size, cfg.seed)
        out = {"source": source, "drafter": type(drafter).__name__,
               **bench_pair(target, drafter, frames, "pick up the red cube", cfg)}
    finally:
        if tmp is not None:
            tmp.cleanup()
    return out


@torch.inference_mode()
def micro_openvla(model, device: torch.device, n_max: int, reps: int) -> dict:  # noqa: ANN001
    """Vision, prefill and n-token verify-pass latency (medians, ms) of an OpenVLA model."""
    img = _images(1, model.towers[0].cfg.image_size, 1)[0]

    def timed(fn, k: int = reps) -> float:  # noqa: ANN001
        ts = []
        for _ in range(k + 1):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts[1:]) * 1e3)

    vis = model.encode_vision(img)
    out = {"vision_ms": timed(lambda: model.encode_vision(img))}
    out["prefill_ms"] = timed(lambda: model.prefill(vis, "pick up the red cube"))
    cache, _ = model.prefill(vis, "pick up the red cube")
    base = len(cache)
    lo = model.action_tokenizer.action_token_begin
    steps = {}
    for n in range(1, n_max + 1):
        toks = torch.arange(lo, lo + n, device=device)

        def step() -> None:
            model.forward(toks, cache)
            cache.truncate(base)

        steps[str(n)] = timed(step)
    out["verify_pass_ms_by_tokens"] = steps
    out["prefix_tokens"] = base
    return out


def bench_openvla(cfg: GpuBenchConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """Random model of OpenVLA-7B's shape (tiny shape with --smoke): micro-benchmarks and decode variants."""
    from specvla_ros.core.decoding.drafters import EagleDrafter
    from specvla_ros.core.models.openvla_checkpoint import OPENVLA_7B, OPENVLA_TINY, random_openvla
    from specvla_ros.train.train_draft_head import head_for

    shape = OPENVLA_TINY if cfg.smoke else OPENVLA_7B
    t0 = time.perf_counter()
    model = random_openvla(shape, device=device, dtype=dtype, seed=cfg.seed)
    _sync(device)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    out: dict = {"shape": "tiny (smoke)" if cfg.smoke else "OpenVLA-7B", "params_billion": n_params / 1e9,
                 "build_s": build_s, "dtype": str(dtype).removeprefix("torch.")}
    if device.type == "cuda":
        out["cuda_memory_gb_after_build"] = torch.cuda.memory_allocated(device) / 1e9
    head = head_for(model).to(device=device, dtype=dtype).eval()
    eagle = EagleDrafter(head, model, cfg.draft_len, cfg.max_draft_len)
    oracle = OracleDrafter(cfg.draft_len, cfg.max_draft_len)
    frames = _images(cfg.frames, shape.image_size, cfg.seed)
    instruction = "pick up the red cube"

    def variants(tag: str) -> dict:
        res: dict = {}
        try:
            if time.perf_counter() > _DEADLINE[0]:
                raise RuntimeError("skipped: time budget spent (--time-budget)")
            res["micro"] = micro_openvla(model, device, cfg.max_draft_len + 1, reps=1 if cfg.smoke else 10)
        except (RuntimeError, ValueError) as exc:
            res["micro"] = {"error": f"{type(exc).__name__}: {exc}"}
        base = _guarded("target_only", lambda: run_variant(model, None, "greedy", frames, instruction, cfg), res)
        ref = base["_tokens"] if base else None
        scripts = None
        if base is not None:  # per frame, the target's own greedy tokens: EON + 7 actions
            eon = model.text_tokenizer.eon_token_id
            scripts = [[eon, *t.tolist()] for t in base["_tokens"]]
        for mode in ("exact", "relaxed"):
            _guarded(f"spec_{mode}_eagle_random", lambda m=mode: run_variant(
                model, eagle, m, frames, instruction, cfg, reference=ref), res)
        if scripts is not None:
            _guarded("spec_exact_oracle", lambda: run_variant(
                model, oracle, "exact", frames, instruction, cfg, scripts=scripts, reference=ref), res)
        _speedups(res)
        LOG.info("%s done", tag)
        return res

    out["dynamic_cache"] = variants("dynamic cache")
    # graphs first (the fast path); if capturing fails, still measure the plain static cache
    for graphs in ([True, False] if cfg.cuda_graphs else [False]):
        if not cfg.static_cache or time.perf_counter() > _DEADLINE[0]:
            break
        tag = "static_cache_cuda_graphs" if graphs else "static_cache"
        try:
            t_cap = time.perf_counter()
            model.enable_static_cache(capacity=512 if not cfg.smoke else 128, cuda_graphs=graphs,
                                      max_step_tokens=cfg.max_draft_len + 1)
            setup_s = time.perf_counter() - t_cap
            out[tag] = {"setup_s": setup_s, **variants(tag)}
            break
        except (RuntimeError, ValueError, NotImplementedError, AttributeError, TypeError) as exc:
            out[tag] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)}
            model.disable_static_cache()
    model.disable_static_cache()
    if device.type == "cuda":
        out["cuda_max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    del model, head, eagle
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def run(cfg: GpuBenchConfig) -> dict:
    """Run every enabled workload -> the JSON-able result."""
    threads = torch.get_num_threads()
    if cfg.smoke:  # tiny matmuls only lose from intra-op threads (much slower on a busy CI machine)
        torch.set_num_threads(1)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: GpuBenchConfig) -> dict:
    import transformers

    from specvla_ros.core.models.loading import resolve_device

    t0 = time.perf_counter()
    _DEADLINE[0] = t0 + cfg.time_budget_s
    device = resolve_device(cfg.device)
    if device.type != "cuda" and not cfg.smoke and cfg.openvla:
        raise ValueError("the OpenVLA-7B-shaped model needs a GPU (28 GB of fp32 weights on a CPU); "
                         "use --smoke for the CPU check or --no-openvla for the shipped pair only")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    result: dict = {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "dtype": str(dtype).removeprefix("torch."), "smoke": cfg.smoke, "frames": cfg.frames, "warmup": cfg.warmup,
        "draft_len": cfg.draft_len, "max_draft_len": cfg.max_draft_len, "relax_bins": cfg.relax_bins,
    }
    if cfg.shipped:
        result["shipped"] = bench_shipped(cfg, device, dtype)
    if cfg.openvla:
        result["openvla7b_random"] = bench_openvla(cfg, device, dtype)
    result["total_time_s"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m specvla_ros.bench.gpu_bench", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (CI check that the script runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--frames", type=int, default=20, help="timed decisions per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--draft-len", type=int, default=4)
    p.add_argument("--max-draft-len", type=int, default=8)
    p.add_argument("--relax-bins", type=int, default=9)
    p.add_argument("--no-shipped", action="store_true")
    p.add_argument("--no-openvla", action="store_true")
    p.add_argument("--no-static-cache", action="store_true")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--time-budget", type=float, default=270.0,
                   help="seconds after which remaining variants are skipped (reported as skipped)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = GpuBenchConfig(smoke=a.smoke, device=a.device, frames=a.frames, warmup=a.warmup, draft_len=a.draft_len,
                             max_draft_len=a.max_draft_len, relax_bins=a.relax_bins, shipped=not a.no_shipped,
                             openvla=not a.no_openvla, static_cache=not a.no_static_cache,
                             cuda_graphs=not a.no_cuda_graphs, time_budget_s=a.time_budget)
        result = run(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
