"""Distil a draft (independent 1-layer VLA, or an EAGLE head) from a trained target.

The draft objective of Spec-VLA (arXiv 2507.22424: text CE + action loss + 0.5 safety
loss + 0.3 feature-alignment loss), per target position:

    loss = text CE (narration + EON labels)
         + action KL(target || draft) on the 7 action positions
         + 0.5 * safety: draft probability mass on action bins outside the safety
                 envelope of that step's state (SafetyGate.envelope ->
                 ActionTokenizer.bin_mask_for_interval; skipped with a note when the
                 gate cannot be built)
         + 0.3 * feature alignment: MSE between the draft's hidden states and the
                 target's (through a trained projection when the widths differ)

The target is frozen; its outputs are computed per batch under no_grad and its
vision features are fed to the draft (the deployed draft reads them too).
Kind "model": the draft starts as the target truncated to its first decoder
layer (same embeddings, projectors, final norm and LM head) when the widths
match, which gives it the target's token statistics from step 0.
Kind "eagle": ``drafters.EagleHead`` on the target's embeddings, hidden states
and LM head (its feature loss is the EAGLE regression target).

    python -m specvla_ros.train.distill_draft --data DIR [DIR ...] --target CKPT --out OUT [--kind model|eagle]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specvla_ros.train.cpu_features import add_bf16_arguments, bf16_from_args
from specvla_ros.core.models.checkpoint_io import DRAFT_MODEL_TYPE, count_parameters
from specvla_ros.core.models.tiny_vla import DRAFT_PRESETS, TinyVLA, TinyVLAConfig
from specvla_ros.core.types import ACTION_DIM, RobotState
from specvla_ros.train.dataset import IGNORE, Batch, DemoDataset, epoch_batches, load_demos, make_batch
from specvla_ros.train.train_target import lr_factor

LOG = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
CONTROL_PERIOD_S = 0.2  # [s] the envelope's dt: the simulator's and node's control period
KINDS = ("model", "eagle")


@dataclass
class DraftTrainConfig:
    """Settings of a distillation run (validated on construction)."""

    data: list[str] = field(default_factory=list)
    target: str = ""
    out: str = ""
    kind: str = "model"
    preset: str = "match"  # "match": the target's width, 1 layer, initialised from the target; else DRAFT_PRESETS
    steps: int = 1500
    batch_size: int = 32
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    text_weight: float = 1.0
    action_weight: float = 1.0
    safety_weight: float = 0.5
    feature_weight: float = 0.3
    temperature: float = 1.0  # distillation temperature of the action KL
    jitter: float = 0.1
    val_fraction: float = 0.05
    eval_every: int = 200
    ckpt_every: int = 200
    time_budget_min: float = 0.0
    max_episodes: int | None = None
    seed: int = 0
    threads: int = 1  # see train_target: one thread is fastest on a busy shared CPU
    bf16: bool = True
    storage_dtype: str = "float16"
    progress: bool = True
    init_from: str = ""  # start from this draft checkpoint dir's weights (fresh optimiser and schedule)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("DraftTrainConfig.data needs at least one dataset directory")
        if not self.target or not self.out:
            raise ValueError(f"DraftTrainConfig.target and .out are required, got {self.target!r}, {self.out!r}")
        if self.kind not in KINDS:
            raise ValueError(f"DraftTrainConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.preset != "match" and self.preset not in DRAFT_PRESETS:
            raise ValueError(f"DraftTrainConfig.preset must be 'match' or one of {sorted(DRAFT_PRESETS)}, got {self.preset!r}")
        for name in ("steps", "batch_size", "eval_every", "ckpt_every", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DraftTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("text_weight", "action_weight", "safety_weight", "feature_weight", "weight_decay", "time_budget_min"):
            if getattr(self, name) < 0:
                raise ValueError(f"DraftTrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and self.temperature > 0 and self.grad_clip > 0):
            raise ValueError(f"DraftTrainConfig lr, temperature, grad_clip must be > 0: {self.lr}, {self.temperature}, {self.grad_clip}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"DraftTrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")


# --- safety envelope per dataset row --------------------------------------------------------

def envelope_masks(ds: DemoDataset, action_tokenizer, dt: float = CONTROL_PERIOD_S) -> np.ndarray | None:
    """(N, 7, n_bins) bool, bins (in id order: action_token_begin + i) allowed by the gate's envelope.

    None (with a logged note) when the safety gate cannot be built.
    """
    try:
        from specvla_ros.core.safety.config import load_safety_config
        from specvla_ros.core.safety.gate import SafetyGate

        gate = SafetyGate(load_safety_config())
    except (ImportError, ValueError, OSError) as exc:
        LOG.warning("safety loss skipped: no safety gate available (%s)", exc)
        return None
    out = np.zeros((len(ds), ACTION_DIM, action_tokenizer.n_bins), dtype=bool)
    for i in range(len(ds)):
        p = ds.proprio[i]
        low, high = gate.envelope(RobotState(q=p[:7].astype(np.float64), gripper=float(p[7])), dt)
        # bin_mask_for_interval is in bin order; action id first+i is bin n_bins-1-i
        out[i] = action_tokenizer.bin_mask_for_interval(low, high)[:, ::-1]
    return out


# --- models -------------------------------------------------------------------------------

def build_draft_model(target: TinyVLA, preset: str) -> TinyVLA:
    """1-layer draft VLA reading the target's vision features; initialised from the target when widths match."""
    tc = target.config
    geometry = (dict(d_model=tc.d_model, n_layers=1, n_heads=tc.n_heads, n_kv_heads=tc.n_kv_heads,
                     intermediate_size=tc.intermediate_size) if preset == "match" else dict(DRAFT_PRESETS[preset]))
    cfg = TinyVLAConfig(
        model_type=DRAFT_MODEL_TYPE, draft_kind="model", vocab_size=tc.vocab_size, has_vision_encoder=False,
        d_vision=tc.d_vision, image_size=tc.image_size, patch_size=tc.patch_size, patch_pool=tc.patch_pool,
        vision_layers=0, vision_keypoints=tc.vision_keypoints, proprio_keep=tc.proprio_keep,
        proprio_features=tc.proprio_features, named_keypoint=tc.named_keypoint, named_relative=tc.named_relative,
        prompt_template=tc.prompt_template, rope_theta=tc.rope_theta,
        max_positions=tc.max_positions, chunk_horizon=tc.chunk_horizon, action_bin_stride=tc.action_bin_stride,
        **geometry,
    )
    draft = TinyVLA(cfg, target.text_tokenizer)
    if cfg.d_model == tc.d_model and cfg.intermediate_size == tc.intermediate_size and cfg.n_heads == tc.n_heads:
        own = draft.state_dict()
        src = target.state_dict()
        copied = {k: src[k].clone() for k in own if k in src and src[k].shape == own[k].shape}
        draft.load_state_dict({**own, **copied})
        LOG.info("draft initialised from the target (%d tensors)", len(copied))
    return draft


def build_eagle(target: TinyVLA):
    from specvla_ros.core.models.eagle_head import EagleConfig, EagleHead

    tc = target.config
    cfg = EagleConfig(vocab_size=tc.vocab_size, d_model=tc.d_model, n_heads=tc.n_heads, n_kv_heads=tc.n_kv_heads,
                      intermediate_size=tc.intermediate_size, rope_theta=tc.rope_theta, max_positions=tc.max_positions)
    head = EagleHead(cfg)
    # start from the target's last decoder layer: it already maps hidden states to hidden states
    head.layers[0].load_state_dict(target.backbone.layers[-1].state_dict())
    return head


# --- losses -------------------------------------------------------------------------------

def draft_loss(
    d_logits: torch.Tensor, d_hidden: torch.Tensor, t_logits: torch.Tensor, t_hidden: torch.Tensor, batch: Batch,
    cfg: DraftTrainConfig, n_bins: int, allowed: torch.Tensor | None, proj: nn.Module | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The draft objective over target positions (B,T). allowed: (B,7,n_bins) bool or None."""
    d_logits, t_logits = d_logits.float(), t_logits.float()
    valid = batch.labels != IGNORE
    act = batch.is_action & valid
    txt = valid & ~batch.is_action
    ce = F.cross_entropy(d_logits.transpose(1, 2), batch.labels, reduction="none", ignore_index=IGNORE)
    text_ce = ce[txt].mean() if txt.any() else d_logits.sum() * 0
    tau = cfg.temperature
    first = d_logits.shape[-1] - n_bins
    d_act = d_logits[act]  # (M, V), rows in (b, col) order
    t_act = t_logits[act]
    kl = F.kl_div(F.log_softmax(d_act / tau, -1), F.log_softmax(t_act / tau, -1), log_target=True,
                  reduction="batchmean") * tau * tau
    feat_d = proj(d_hidden.float()) if proj is not None else d_hidden.float()
    feat = F.mse_loss(feat_d[valid], t_hidden.float()[valid])
    safety = d_logits.sum() * 0
    if allowed is not None:
        # row (b, col) of d_act is action dimension (col - n_text[b]) % 7 (every step of a chunk: the
        # first step's envelope, tighter than the later steps')
        dims = torch.remainder((torch.arange(act.shape[1])[None, :]
                                - torch.from_numpy(batch_n_text(batch))[:, None]).clamp(min=0), ACTION_DIM)
        rows_b = torch.arange(act.shape[0])[:, None].expand_as(act)[act]
        rows_dim = dims[act]
        ok = allowed[rows_b, rows_dim]  # (M, n_bins)
        p = torch.softmax(d_act, -1)[:, first:]
        safety = (p * (~ok).float()).sum(-1).mean()
    loss = (cfg.text_weight * text_ce + cfg.action_weight * kl + cfg.safety_weight * safety
            + cfg.feature_weight * feat)
    with torch.no_grad():
        d_arg, t_arg = d_logits.argmax(-1), t_logits.argmax(-1)
        agree = d_arg == t_arg
        metrics = {"text_ce": float(text_ce), "action_kl": float(kl), "safety": float(safety), "feature_mse": float(feat),
                   "agree_text": float(agree[txt].float().mean()) if txt.any() else 0.0,
                   "agree_action": float(agree[act].float().mean()) if act.any() else 0.0,
                   "agree_action_r9": float(((d_arg - t_arg).abs() <= 9)[act].float().mean()) if act.any() else 0.0}
    return loss, metrics


def batch_n_text(batch: Batch) -> np.ndarray:
    """Column where each row's action tokens start (first True of is_action)."""
    return batch.is_action.float().argmax(1).numpy()


# --- training -----------------------------------------------------------------------------

class _Forward:
    """Runs the frozen target and the trainable draft on a batch."""

    def __init__(self, target: TinyVLA, draft: nn.Module, kind: str, bf16: bool) -> None:
        self.target, self.draft, self.kind, self.bf16 = target, draft, kind, bf16

    def __call__(self, b: Batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            with torch.no_grad():
                patches, keypoints = self.target.encode_vision_full(b.images)
                full = self.target.forward_train(None, b.instructions, b.proprio, b.target_ids, vision_patches=patches,
                                                 return_full=True, vision_keypoints=keypoints)
            if self.kind == "model":
                d_logits, d_hidden = self.draft.forward_train(None, b.instructions, b.proprio, b.target_ids,
                                                              vision_patches=patches, vision_keypoints=keypoints)
                return d_logits, d_hidden, full.logits, full.hidden
            e_logits, e_hidden = self.draft.forward_train(full.input_embeds, full.all_hidden, full.valid,
                                                          self.target.lm_head)
            t_len = b.target_ids.shape[1]
            sl = slice(full.target_offset - 1, full.target_offset - 1 + t_len)
            # EAGLE hidden j predicts the target's hidden j: align over the target positions
            return e_logits[:, sl], e_hidden[:, sl], full.logits, full.hidden


@torch.no_grad()
def evaluate(fwd: _Forward, ds: DemoDataset, idx: np.ndarray, cfg: DraftTrainConfig, n_bins: int,
             masks: np.ndarray | None, proj: nn.Module | None) -> dict[str, float]:
    if len(idx) == 0:
        return {}
    fwd.draft.eval()
    sums: dict[str, float] = {}
    n = 0
    for s in range(0, len(idx), 64):
        b = make_batch(ds, idx[s : s + 64])
        outs = fwd(b)
        allowed = torch.from_numpy(masks[b.index]) if masks is not None else None
        loss, m = draft_loss(*outs, b, cfg, n_bins, allowed, proj)
        k = len(b.index)
        for key, v in {"loss": float(loss), **m}.items():
            sums[key] = sums.get(key, 0.0) + v * k
        n += k
    fwd.draft.train()
    return {k: v / n for k, v in sums.items()}


def _save(draft: nn.Module, kind: str, tokenizer, out_dir: Path, storage_dtype: str) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if kind == "model":
        draft.save_pretrained(tmp, storage_dtype)
    else:
        draft.save_pretrained(tmp, tokenizer, storage_dtype)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def distill_draft(cfg: DraftTrainConfig, ds: DemoDataset | None = None) -> dict:
    """Run (or resume) distillation; returns a summary (also OUT/summary.json)."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    target = TinyVLA.from_pretrained(cfg.target).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    tok = target.text_tokenizer
    if ds is None:
        # the target's tokens, and its chunk length (a chunk target's draft learns the whole chunk)
        ds = load_demos(cfg.data, tok, cfg.max_episodes, stats=target.action_tokenizer.stats,
                        chunk_horizon=target.chunk_horizon, bin_stride=target.config.action_bin_stride)
    if ds.bin_stride != target.config.action_bin_stride:
        raise ValueError(f"the dataset's labels have bin stride {ds.bin_stride}, the target was trained on "
                         f"{target.config.action_bin_stride}: the draft must learn the target's bins")
    train_idx, val_idx = ds.split(cfg.val_fraction, cfg.seed)
    t_env = time.perf_counter()
    masks = envelope_masks(ds, target.action_tokenizer) if cfg.safety_weight > 0 else None
    env_s = time.perf_counter() - t_env
    torch.manual_seed(cfg.seed)
    draft = build_draft_model(target, cfg.preset) if cfg.kind == "model" else build_eagle(target)
    if cfg.init_from:  # continue from an earlier draft (e.g. one distilled from a previous target)
        if cfg.kind != "model":
            raise ValueError("init_from is supported for kind 'model' drafts")
        draft.load_state_dict(TinyVLA.from_pretrained(cfg.init_from).state_dict())
        print(f"draft initialised from {cfg.init_from}", flush=True)
    draft.train()
    d_draft = draft.config.d_model
    proj = nn.Linear(d_draft, target.config.d_model, bias=False) if d_draft != target.config.d_model else None
    params = list(draft.parameters()) + (list(proj.parameters()) if proj is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    step, elapsed_before, epoch = 0, 0.0, 0
    rng = np.random.default_rng(cfg.seed + 1)
    state_path = out / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        draft.load_state_dict(state["draft"])
        if proj is not None and state.get("proj") is not None:
            proj.load_state_dict(state["proj"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed_before, epoch = state["step"], state["elapsed_s"], state["epoch"]
        rng = np.random.default_rng([cfg.seed + 1, epoch, step])
        print(f"resumed from {state_path} at step {step}", flush=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    fwd = _Forward(target, draft, cfg.kind, cfg.bf16)
    n_bins = target.action_tokenizer.n_bins
    print(f"draft ({cfg.kind}): {count_parameters(draft) / 1e6:.2f} M params; target {count_parameters(target) / 1e6:.2f} M; "
          f"{len(train_idx)} train / {len(val_idx)} val steps; safety envelopes "
          f"{'computed in %.0f s' % env_s if masks is not None else 'unavailable (safety loss off)'}", flush=True)
    budget_s = cfg.time_budget_min * 60.0
    t0 = time.perf_counter()
    log = (out / LOG_FILE).open("a")
    bar = tqdm(total=cfg.steps, initial=step, desc=f"draft-{cfg.kind}", unit="step", disable=not cfg.progress)
    batches = iter(())
    first_val = evaluate(fwd, ds, val_idx, cfg, n_bins, masks, proj) if step == 0 else {}
    if first_val:
        bar.write("before distillation: val " + " ".join(f"{k} {v:.3f}" for k, v in first_val.items()))
    last: dict[str, float] = {}
    done = False

    def save_state() -> None:
        torch.save({"draft": draft.state_dict(), "proj": proj.state_dict() if proj is not None else None,
                    "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                    "elapsed_s": elapsed_before + time.perf_counter() - t0}, str(state_path) + ".tmp")
        Path(str(state_path) + ".tmp").replace(state_path)
        _save(draft, cfg.kind, tok, out / "latest", "float32")

    while not done:
        idx = next(batches, None)
        if idx is None:
            epoch += 1
            batches = epoch_batches(train_idx, cfg.batch_size, rng)
            continue
        elapsed = elapsed_before + time.perf_counter() - t0
        progress = max(step / cfg.steps, elapsed / budget_s if budget_s > 0 else 0.0)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(progress, step, cfg.warmup_steps, cfg.min_lr_ratio)
        b = make_batch(ds, idx, rng, cfg.jitter)
        allowed = torch.from_numpy(masks[b.index]) if masks is not None else None
        loss, m = draft_loss(*fwd(b), b, cfg, n_bins, allowed, proj)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        last = {"loss": float(loss.detach()), **m}
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.3f}", agree_t=f"{m['agree_text']:.2f}", agree_a=f"{m['agree_action']:.2f}")
        done = step >= cfg.steps or (budget_s > 0 and elapsed >= budget_s)
        record = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 1),
                  **{f"train_{k}": round(v, 4) for k, v in last.items()}}
        if step % cfg.eval_every == 0 or done:
            val = evaluate(fwd, ds, val_idx, cfg, n_bins, masks, proj)
            record.update({f"val_{k}": round(v, 4) for k, v in val.items()})
            bar.write(f"step {step}: val " + " ".join(f"{k} {v:.3f}" for k, v in val.items()))
        log.write(json.dumps(record) + "\n")
        log.flush()
        if step % cfg.ckpt_every == 0 or done:
            save_state()
    bar.close()
    log.close()
    draft.eval()
    _save(draft, cfg.kind, tok, out / "final", cfg.storage_dtype)
    final_val = evaluate(fwd, ds, val_idx, cfg, n_bins, masks, proj)
    summary = {"kind": cfg.kind, "params": count_parameters(draft), "steps": step, "epochs": epoch,
               "train_minutes": round((elapsed_before + time.perf_counter() - t0) / 60.0, 1),
               "safety_loss": masks is not None, "val_before": first_val, "last_train": last, "val": final_val,
               "seed": cfg.seed, "target": cfg.target, "final_dir": str(out / "final")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DraftTrainConfig(data=["x"], target="x", out="x")
    p.add_argument("--data", nargs="+", required=True, help="dataset directories written by collect")
    p.add_argument("--target", required=True, help="trained target checkpoint dir")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, final/)")
    p.add_argument("--kind", default=d.kind, choices=KINDS)
    p.add_argument("--preset", default=d.preset, help="'match' or a tiny_vla.DRAFT_PRESETS name")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--safety-weight", type=float, default=d.safety_weight)
    p.add_argument("--feature-weight", type=float, default=d.feature_weight)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--time-budget-min", type=float, default=d.time_budget_min)
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--init-from", default="", help="start from this draft checkpoint dir's weights")
    add_bf16_arguments(p)
    p.add_argument("--no-progress", action="store_true")


def config_from_args(a: argparse.Namespace) -> DraftTrainConfig:
    return DraftTrainConfig(
        data=list(a.data), target=a.target, out=a.out, kind=a.kind, preset=a.preset, steps=a.steps,
        batch_size=a.batch_size, lr=a.lr, safety_weight=a.safety_weight, feature_weight=a.feature_weight,
        eval_every=a.eval_every, ckpt_every=a.ckpt_every, time_budget_min=a.time_budget_min,
        max_episodes=a.max_episodes, seed=a.seed, threads=a.threads, bf16=bf16_from_args(a), progress=not a.no_progress,
        init_from=a.init_from,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(distill_draft(cfg), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
