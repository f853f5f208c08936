"""Behaviour cloning of the target TinyVLA on expert demonstrations.

Loss per target position (teacher forcing, ``TinyVLA.forward_train``):
narration + EON tokens: cross-entropy; action tokens: cross-entropy against a
narrow Gaussian over neighbouring bins (``action_label_sigma``; the argmax is
still the expert's bin, but "one bin off" costs less than "100 bins off", which
teaches the ordinal structure of the bins faster), weighted ``action_weight``.

AdamW with linear warmup then cosine decay. The schedule's progress is
``max(step / steps, elapsed / time_budget)``, so a run on a busy shared CPU
still anneals and finishes inside its time budget. Checkpoints
(``train_state.pt`` + a loadable ``latest/`` dir) are written periodically and
a run resumes from them; ``final/`` is written at the end. Held-out episodes
give a validation loss and action-bin error.

    python -m specvla_ros.train.train_target --data DIR [DIR ...] --out OUT [--preset small] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
from specvla_ros.sim.language import COLOR_NAMES
from specvla_ros.core.models.tiny_vla import (
    IDENTITY_STD, KEYPOINT_STRIDE, PRESETS, SpatialSoftmaxKeypoints, TinyVLA, TinyVLAConfig,
)
from specvla_ros.core.models.action_tokenizer import load_norm_stats
from specvla_ros.core.models.checkpoint_io import STATS_FILE, count_parameters
from specvla_ros.core.types import MAX_CHUNK_HORIZON
from specvla_ros.train.cpu_features import add_bf16_arguments, bf16_from_args
from specvla_ros.train.dataset import DATASET_KEY, IGNORE, Batch, DemoDataset, epoch_batches, load_demos, make_batch

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"


@dataclass
class TargetTrainConfig:
    """Settings of a behaviour-cloning run (validated on construction)."""

    data: list[str] = field(default_factory=list)
    out: str = ""
    preset: str = "small"
    steps: int = 4000
    batch_size: int = 32
    lr: float = 6e-4
    min_lr_ratio: float = 0.05  # cosine floor as a fraction of lr
    warmup_steps: int = 150
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    action_weight: float = 2.0  # loss weight of action tokens relative to text tokens
    action_label_sigma: float = 1.0  # [bins] Gaussian soft labels on action tokens (0 = one-hot)
    action_reg_weight: float = 0.0  # L1 of the expected action bin (in half-ranges) -- see expected_bin_error
    # train the translation dims on every s-th action bin only (the checkpoint's action_bin_stride):
    # where 256 bins are finer than the policy can tell apart its argmax among neighbouring bins
    # is a coin toss that no draft can predict, and each miss costs exact speculation a pass
    translation_bin_stride: int = 1
    jitter: float = 0.1  # brightness/contrast/colour jitter amplitude (0 = none)
    val_fraction: float = 0.05
    eval_every: int = 250
    ckpt_every: int = 250
    time_budget_min: float = 0.0  # 0 = no time limit
    max_episodes: int | None = None
    seed: int = 0
    threads: int = 1  # one thread: two OpenMP threads on a busy shared 2-core CPU stall each other
    bf16: bool = True  # CPU autocast to bfloat16 (the CLI turns it on only where native: cpu_features)
    storage_dtype: str = "float16"  # final weights
    # auxiliary losses (training only): object positions from the vision features, the named
    # object's and the TCP's position from the decoder's last prefix state -- they make the
    # vision pathway localise objects within minutes instead of hours
    aux_weight: float = 1.0
    init_from: str = ""  # start from this checkpoint dir's weights (fresh optimiser and schedule)
    # tokenise actions with init_from's statistics (its action bins keep their meaning) instead of
    # recomputing q01/q99 over the data
    keep_init_stats: bool = False
    # actions per example: H > 1 trains an action-chunk model (narration, [EON], H x 7 action
    # tokens) on the expert chunks that collect --chunk-horizon records
    chunk_horizon: int = 1
    # keypoint models: first fit the keypoint stem alone to the object positions (fast: the stem is
    # tiny), so the decoder trains on keypoints that already sit on the objects
    keypoint_pretrain_steps: int = 0
    fresh_keypoints: bool = False  # re-initialise the keypoint stem after init_from (new stem settings)
    # re-draw the keypoint identity embeddings at IDENTITY_STD after init_from (checkpoints from
    # before it was raised from 0.02 cannot tell their keypoints apart)
    reset_keypoint_identity: bool = False
    keypoint_pretrain_lr: float = 3e-3
    # weight of the push target's keypoint in the colour-keypoint loss: a flat white disc beside
    # the white arm, it is the keypoint fixed worst, and a push ends where it puts the target
    keypoint_goal_weight: float = 1.0
    # keep the keypoint stem (its convolutions and temperature) as keypoint pretraining or
    # init_from left it while the decoder trains on its keypoints
    freeze_keypoint_stem: bool = False
    # pull keypoint c onto the object of colour c (sim.language.COLOR_NAMES order) in the camera
    # image. The shared linear read-out spreads each object over all keypoints; a colour-bound
    # keypoint is one token the instruction's colour can attend to
    colour_keypoints: bool = False
    # extra weight on the decoder's named-object estimate (absolute and relative to the TCP): the
    # action needs exactly that vector, and without it the policy learned one average move per colour
    named_aux_weight: float = 1.0
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("TargetTrainConfig.data needs at least one dataset directory")
        if not self.out:
            raise ValueError("TargetTrainConfig.out must name an output directory")
        if self.preset not in PRESETS:
            raise ValueError(f"TargetTrainConfig.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for name in ("steps", "batch_size", "eval_every", "ckpt_every", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TargetTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"TargetTrainConfig.lr must be > 0 and min_lr_ratio in [0,1], got {self.lr}, {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(f"bad warmup_steps/weight_decay/grad_clip: {self.warmup_steps}, {self.weight_decay}, {self.grad_clip}")
        if self.action_reg_weight < 0:
            raise ValueError(f"TargetTrainConfig.action_reg_weight must be >= 0, got {self.action_reg_weight}")
        if self.action_weight <= 0 or self.action_label_sigma < 0:
            raise ValueError(f"action_weight must be > 0 and action_label_sigma >= 0, got {self.action_weight}, {self.action_label_sigma}")
        if self.translation_bin_stride < 1 or TinyVLAConfig.n_action_bins % self.translation_bin_stride:
            raise ValueError(f"TargetTrainConfig.translation_bin_stride must divide the {TinyVLAConfig.n_action_bins} "
                             f"action bins, got {self.translation_bin_stride}")
        if self.keypoint_pretrain_steps < 0 or self.keypoint_pretrain_lr <= 0:
            raise ValueError(f"keypoint_pretrain_steps must be >= 0 and keypoint_pretrain_lr > 0, got "
                             f"{self.keypoint_pretrain_steps}, {self.keypoint_pretrain_lr}")
        if self.freeze_keypoint_stem and not PRESETS[self.preset].get("vision_keypoints", 0):
            raise ValueError(f"freeze_keypoint_stem needs a keypoint preset, {self.preset!r} has no keypoint stem")
        if self.freeze_keypoint_stem and self.fresh_keypoints and self.keypoint_pretrain_steps == 0:
            raise ValueError("freeze_keypoint_stem with fresh_keypoints needs keypoint_pretrain_steps > 0 "
                             "(the stem would stay random)")
        if self.keypoint_goal_weight < 0:
            raise ValueError(f"TargetTrainConfig.keypoint_goal_weight must be >= 0, got {self.keypoint_goal_weight}")
        if not 0 <= self.jitter <= 0.5:
            raise ValueError(f"TargetTrainConfig.jitter must be in [0, 0.5], got {self.jitter}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TargetTrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.time_budget_min < 0:
            raise ValueError(f"TargetTrainConfig.time_budget_min must be >= 0, got {self.time_budget_min}")
        if self.aux_weight < 0 or self.named_aux_weight < 0:
            raise ValueError(f"TargetTrainConfig.aux_weight and named_aux_weight must be >= 0, got "
                             f"{self.aux_weight}, {self.named_aux_weight}")
        if not 1 <= self.chunk_horizon <= MAX_CHUNK_HORIZON:
            raise ValueError(f"TargetTrainConfig.chunk_horizon must be in [1, {MAX_CHUNK_HORIZON}], got {self.chunk_horizon}")
        if self.keep_init_stats and not self.init_from:
            raise ValueError("TargetTrainConfig.keep_init_stats needs init_from")
        if self.storage_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"TargetTrainConfig.storage_dtype must be float32/float16/bfloat16, got {self.storage_dtype!r}")


def lr_factor(progress: float, step: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` as progress goes 0 -> 1."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    return warm * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


def bin_stride(translation_bin_stride: int) -> tuple[int, ...]:
    """Per action dimension (x, y, z, 3 rotations, gripper): the labels' bin stride (empty = 1)."""
    s = int(translation_bin_stride)
    return (s, s, s, 1, 1, 1, 1) if s > 1 else ()


def soft_action_targets(labels: torch.Tensor, is_action: torch.Tensor, vocab: int, n_bins: int,
                        sigma: float) -> torch.Tensor:
    """(B,T,V) target distributions: one-hot on text, Gaussian over bins on action tokens."""
    safe = labels.clamp(min=0)
    target = F.one_hot(safe, vocab).float()
    if sigma > 0:
        first = vocab - n_bins
        ids = torch.arange(first, vocab)
        dist = (ids[None, None, :] - safe[..., None]).float()
        g = torch.exp(-0.5 * (dist / sigma) ** 2)
        g = g / g.sum(-1, keepdim=True)
        target[..., first:] = torch.where(is_action[..., None], g, target[..., first:])
    return target


def expected_bin_error(logits: torch.Tensor, labels: torch.Tensor, act: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Mean |E[bin] - label bin| over action positions [bins].

    Cross-entropy alone over 256 fine bins gives no signal about *how far* a guess is, and
    the policy collapsed to one average move whatever the image showed (it ignored the
    object); the expected bin under the predicted distribution is a regression the
    gradient can follow.
    """
    if not act.any():
        return logits.new_zeros(())
    first = logits.shape[-1] - n_bins
    p = torch.softmax(logits[act][:, first:], dim=-1)
    expected = (p * torch.arange(n_bins, dtype=p.dtype, device=p.device)).sum(-1)
    return (expected - (labels[act] - first).to(p.dtype)).abs().mean()


def bc_loss(logits: torch.Tensor, batch: Batch, n_bins: int, action_weight: float,
            sigma: float, reg_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted token loss; returns (loss, metrics: text_ce, action_ce, action_acc, bin_err)."""
    logits = logits.float()
    valid = batch.labels != IGNORE
    logp = F.log_softmax(logits, dim=-1)
    target = soft_action_targets(batch.labels, batch.is_action, logits.shape[-1], n_bins, sigma)
    tok_loss = -(target * logp).sum(-1)
    act = batch.is_action & valid
    txt = valid & ~batch.is_action
    w = txt.float() + action_weight * act.float()
    loss = (tok_loss * w).sum() / w.sum().clamp(min=1.0)
    reg = expected_bin_error(logits, batch.labels, act, n_bins)
    if reg_weight > 0 and act.any():
        loss = loss + reg_weight * reg / (n_bins / 2)
    with torch.no_grad():
        pred = logits.argmax(-1)
        ce = F.cross_entropy(logits.transpose(1, 2), batch.labels, reduction="none", ignore_index=IGNORE)
        metrics = {
            "text_ce": float(ce[txt].mean()) if txt.any() else 0.0,
            "action_ce": float(ce[act].mean()) if act.any() else 0.0,
            "text_acc": float((pred[txt] == batch.labels[txt]).float().mean()) if txt.any() else 0.0,
            "action_acc": float((pred[act] == batch.labels[act]).float().mean()) if act.any() else 0.0,
            "bin_err": float((pred[act] - batch.labels[act]).abs().float().mean()) if act.any() else 0.0,
            "expected_bin_err": float(reg),
        }
    return loss, metrics


class AuxHeads(nn.Module):
    """Training-only heads: per-colour (present, x, y) from the patches (or, with colour_keypoints,
    each colour's keypoint in the image); named-object xy, TCP xyz and named object - TCP from the
    decoder state that predicts the first output token."""

    def __init__(self, n_patches: int, d_vision: int, d_model: int, n_colors: int = 4, n_keypoints: int = 0,
                 colour_keypoints: bool = False, cells: int = 32, named_weight: float = 1.0,
                 goal_weight: float = 1.0) -> None:
        super().__init__()
        self.n_colors = n_colors
        self.goal_weight = goal_weight
        if colour_keypoints and n_keypoints < n_colors:
            raise ValueError(f"colour_keypoints needs >= {n_colors} keypoints, the model has {n_keypoints}")
        self.colour_keypoints = colour_keypoints
        # keypoint n_colors follows the push target when there is one to spare
        self.goal_keypoint = colour_keypoints and n_keypoints > n_colors
        self.tcp_keypoint = colour_keypoints and n_keypoints > n_colors + 1
        self.cells = cells
        # with keypoints, object positions are read *linearly* from the keypoint coordinates alone:
        # that pushes the keypoints onto the objects. An MLP read-out memorised the layouts, and
        # extra TCP or presence read-outs held the keypoints at ~5 cm on held-out layouts (vs ~2 cm)
        self.keypoint_readout = bool(n_keypoints)
        if n_keypoints:
            self.vision = nn.Sequential(nn.Flatten(1), nn.Linear(n_keypoints * 3, n_colors * 3))
        else:
            self.vision = nn.Sequential(nn.Flatten(1), nn.Linear(n_patches * d_vision, 256), nn.GELU(),
                                        nn.Linear(256, n_colors * 3))
        self.named_weight = named_weight
        # named object xy, TCP xyz, named object - TCP (xy)
        self.decoder = nn.Sequential(nn.Linear(d_model, 256), nn.GELU(), nn.Linear(256, 7))

    def vision_loss(self, vision_in: torch.Tensor, aux: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to train on, object position loss) from the vision features; with keypoints both are
        the position loss, else the first adds the presence loss."""
        if self.colour_keypoints:
            # keypoint c is pulled straight onto colour c's object in the image: a read-out to table
            # coordinates starts at zero and then passes no gradient to the keypoints (measured: stuck)
            present = aux["objects"][..., 0] * aux["valid"].float()[:, None]
            target = aux["objects_px"] * self.cells / (self.cells - 1)  # soft-argmax spans cell centres
            err = ((vision_in.float()[:, :self.n_colors, :2] - target) ** 2).sum(-1)
            l_px = (err * present).sum() / present.sum().clamp(min=1.0)
            if self.goal_keypoint:
                # the next keypoint goes to the push target's centre (push episodes only)
                has_goal = aux["has_goal"].float()
                goal = aux["goal_px"] * self.cells / (self.cells - 1)
                g_err = ((vision_in.float()[:, self.n_colors, :2] - goal) ** 2).sum(-1)
                l_px = l_px + self.goal_weight * (g_err * has_goal).sum() / has_goal.sum().clamp(min=1.0)
            if self.tcp_keypoint:  # and the one after it to the gripper (the TCP's projection)
                tcp = aux["tcp_px"] * self.cells / (self.cells - 1)
                l_px = l_px + ((vision_in.float()[:, self.n_colors + 1, :2] - tcp) ** 2).sum(-1).mean()
            return l_px, l_px
        obj = self.vision(vision_in.float()).view(-1, self.n_colors, 3)
        present = aux["objects"][..., 0]
        w = present * aux["valid"].float()[:, None]
        l_obj = (((obj[..., 1:] - aux["objects"][..., 1:]) ** 2).sum(-1) * w).sum() / w.sum().clamp(min=1.0)
        if self.keypoint_readout:
            return l_obj, l_obj
        return F.binary_cross_entropy_with_logits(obj[..., 0], present) + l_obj, l_obj

    def loss(self, patches: torch.Tensor, hidden0: torch.Tensor, aux: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        l_vision, l_obj = self.vision_loss(patches, aux)
        dec = self.decoder(hidden0.float())
        valid = aux["valid"].float()
        named_err = ((dec[:, :2] - aux["named"]) ** 2).sum(-1)
        l_named = (named_err * valid).sum() / valid.sum().clamp(min=1.0)
        l_tcp = ((dec[:, 2:5] - aux["tcp"]) ** 2).sum(-1).mean()
        rel_err = ((dec[:, 5:7] - (aux["named"] - aux["tcp"][:, :2])) ** 2).sum(-1)
        l_named = self.named_weight * (l_named + (rel_err * valid).sum() / valid.sum().clamp(min=1.0))
        with torch.no_grad():  # [m]: x scaled by 0.13, y by 0.22 -> report a rough metric error
            named_cm = float((named_err.sqrt() * valid).sum() / valid.sum().clamp(min=1.0)) * 17.5
        return l_vision + l_named + l_tcp, {"aux_obj": float(l_obj.detach()), "aux_named_cm": named_cm,
                                                     "aux_tcp": float(l_tcp.detach())}


@torch.no_grad()
def fit_linear_readout(heads: "AuxHeads", kp: SpatialSoftmaxKeypoints, model: TinyVLA, ds: DemoDataset,
                       idx: np.ndarray) -> None:
    """Least-squares fit of the linear object read-out to the current keypoints. A fresh random
    read-out would first drag the trained keypoints off the objects with its large gradients."""
    if heads.colour_keypoints:
        return  # colour-bound keypoints are supervised in the image directly, through no read-out
    coords = []
    for start in range(0, len(idx), 256):
        b = make_batch(ds, idx[start:start + 256])
        coords.append(kp.coordinates(model._images_to_tensor(b.images)).flatten(1).double())
    x = torch.cat([torch.cat(coords), torch.ones(len(idx), 1, dtype=torch.float64)], dim=1)
    objects = torch.from_numpy(ds.aux.objects[idx]).double()
    usable = (objects[..., 0] > 0) & torch.from_numpy(ds.aux.valid[idx])[:, None]
    linear = heads.vision[1]
    for c in range(heads.n_colors):
        rows = usable[:, c]
        if int(rows.sum()) <= x.shape[1]:
            continue  # too few samples of this colour: keep the random read-out
        gram = x[rows].T @ x[rows]
        # ridge: near-constant keypoints (a fresh stem) would otherwise get huge weights that the
        # first stem updates turn into huge errors
        ridge = 0.05 * gram.diagonal().mean() * torch.eye(x.shape[1], dtype=torch.float64)
        sol = torch.linalg.solve(gram + ridge, x[rows].T @ objects[rows, c, 1:])  # (features+1, 2)
        linear.weight[3 * c + 1:3 * c + 3] = sol[:-1].T.to(linear.weight.dtype)
        linear.bias[3 * c + 1:3 * c + 3] = sol[-1].to(linear.bias.dtype)


def pretrain_keypoints(model: TinyVLA, heads: "AuxHeads | None", ds: DemoDataset, train_idx: np.ndarray,
                       val_idx: np.ndarray, cfg: TargetTrainConfig) -> dict[str, float]:
    """Fit the keypoint stem and the aux heads' linear object read-out to the object positions."""
    kp = model.vision_encoder.keypoints if model.vision_encoder is not None else None
    if kp is None or heads is None or ds.aux is None:
        raise ValueError("keypoint pretraining needs a keypoint preset and auxiliary targets (aux_weight > 0)")
    opt = torch.optim.AdamW(list(kp.parameters()) + list(heads.vision.parameters()), lr=cfg.keypoint_pretrain_lr)
    rng = np.random.default_rng(cfg.seed + 7)

    def object_loss(idx: np.ndarray, train: bool) -> torch.Tensor:
        b = make_batch(ds, idx, rng if train else None, cfg.jitter if train else 0.0)
        total, l_obj = heads.vision_loss(kp.coordinates(model._images_to_tensor(b.images)), b.aux)
        return total if train else l_obj

    result: dict[str, float] = {}
    with torch.no_grad():
        first = float(object_loss(train_idx[:512], False))
        fit_linear_readout(heads, kp, model, ds, rng.choice(train_idx, min(len(train_idx), 2048), replace=False))
    warmup = min(50, cfg.keypoint_pretrain_steps // 10)  # a trained stem is knocked off by full-size first steps
    for i in range(1, cfg.keypoint_pretrain_steps + 1):
        for g in opt.param_groups:
            g["lr"] = cfg.keypoint_pretrain_lr * lr_factor(i / cfg.keypoint_pretrain_steps, i, warmup, 0.05)
        loss = object_loss(rng.choice(train_idx, cfg.batch_size), True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 250 == 0 or i == cfg.keypoint_pretrain_steps:
            with torch.no_grad():
                val = float(object_loss(val_idx[:512], False)) if len(val_idx) else float("nan")
                now = float(object_loss(train_idx[:512], False))
            result = {"step": i, "train_obj_before": first, "train_obj": now, "val_obj": val}
            print(f"keypoint pretraining {i}: object loss train {result['train_obj']:.3f} val {val:.3f}", flush=True)
    return result


def build_target(preset: str, tokenizer: VLATextTokenizer, ds: DemoDataset,
                 action_bin_stride: tuple[int, ...] = ()) -> TinyVLA:
    cfg = TinyVLAConfig(vocab_size=tokenizer.vocab_size, chunk_horizon=ds.horizon, action_bin_stride=action_bin_stride,
                        **PRESETS[preset])
    return TinyVLA(cfg, tokenizer, ds.stats)


def train_forward(model: TinyVLA, heads: AuxHeads | None, b: Batch, cfg: TargetTrainConfig) -> tuple[torch.Tensor, dict]:
    """Loss of one batch (token loss + aux_weight * auxiliary losses) and its metrics."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        patches, keypoints = model.encode_vision_full(b.images)
        logits, hidden = model.forward_train(None, b.instructions, b.proprio, b.target_ids, vision_patches=patches,
                                             vision_keypoints=keypoints)
    loss, m = bc_loss(logits, b, model.config.n_action_bins, cfg.action_weight, cfg.action_label_sigma,
                      cfg.action_reg_weight)
    if heads is not None and b.aux is not None and cfg.aux_weight > 0:
        aux_loss, am = heads.loss(keypoints if keypoints is not None else patches, hidden[:, 0], b.aux)
        if model.last_selection_logits is not None and heads.colour_keypoints:
            # the instruction's colour word must select its colour-bound keypoint
            sel = selection_loss(model.last_selection_logits, b.instructions)
            aux_loss = aux_loss + sel
            am["aux_select"] = float(sel.detach())
        loss = loss + cfg.aux_weight * aux_loss
        m.update(am)
    return loss, m


def named_colour_index(instruction: str) -> int:
    """Index in ``sim.language.COLOR_NAMES`` of the colour the instruction names (-1: none)."""
    words = instruction.split()
    return next((i for i, c in enumerate(COLOR_NAMES) if c in words), -1)


def selection_loss(logits: torch.Tensor, instructions: list[str]) -> torch.Tensor:
    """Cross-entropy of the named-keypoint selection against the instruction colour's keypoint
    (keypoint c is bound to colour c by ``colour_keypoints``); instructions without a colour are skipped."""
    labels = torch.tensor([named_colour_index(s) for s in instructions], device=logits.device)
    return F.cross_entropy(logits.float(), labels, ignore_index=-1) if bool((labels >= 0).any()) else logits.sum() * 0.0


@torch.no_grad()
def evaluate(model: TinyVLA, ds: DemoDataset, idx: np.ndarray, cfg: TargetTrainConfig,
             heads: AuxHeads | None = None) -> dict[str, float]:
    """Mean loss and metrics over ``idx`` (no augmentation)."""
    if len(idx) == 0:
        return {}
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for s in range(0, len(idx), 64):
        b = make_batch(ds, idx[s : s + 64])
        loss, m = train_forward(model, heads, b, cfg)
        k = len(b.index)
        for key, v in {"loss": float(loss), **m}.items():
            sums[key] = sums.get(key, 0.0) + v * k
        n += k
    model.train()
    return {k: v / n for k, v in sums.items()}


def save_checkpoint_dir(model: TinyVLA, ds: DemoDataset, out_dir: Path, storage_dtype: str) -> None:
    """A loadable checkpoint dir carrying the dataset's full statistics file."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, storage_dtype)
    ds.save_statistics(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def train_target(cfg: TargetTrainConfig, ds: DemoDataset | None = None) -> dict:
    """Run (or resume) behaviour cloning; returns a summary dict (also written to OUT/summary.json)."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = VLATextTokenizer.build()
    t_load = time.perf_counter()
    stride = bin_stride(cfg.translation_bin_stride)
    if ds is None:
        stats = load_norm_stats(Path(cfg.init_from) / STATS_FILE, DATASET_KEY) if cfg.keep_init_stats else None
        ds = load_demos(cfg.data, tok, cfg.max_episodes, stats=stats, aux=cfg.aux_weight > 0,
                        chunk_horizon=cfg.chunk_horizon, bin_stride=stride)
    if ds.bin_stride != stride:
        raise ValueError(f"the dataset's labels have bin stride {ds.bin_stride}, translation_bin_stride "
                         f"{cfg.translation_bin_stride} needs {stride}")
    load_s = time.perf_counter() - t_load
    train_idx, val_idx = ds.split(cfg.val_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_target(cfg.preset, tok, ds, stride).train()
    if cfg.init_from:
        init = TinyVLA.from_pretrained(cfg.init_from)
        # a checkpoint without keypoints can seed a keypoint model: only modules it lacks start fresh
        # ... and a raw-proprio checkpoint a TCP-feature model: the proprio input layer starts fresh
        own = model.state_dict()
        src = {k: v for k, v in init.state_dict().items() if k not in own or v.shape == own[k].shape}
        reshaped = [k for k in init.state_dict() if k not in src]
        # (the named token's input layer also changes size with named_relative)
        if any(not k.startswith(("proprio_proj.", "named_proj.")) for k in reshaped):
            raise ValueError(f"{cfg.init_from} does not match preset {cfg.preset!r}: shapes of {reshaped[:5]} differ")
        result = model.load_state_dict(src, strict=False)
        # the named-keypoint modules are new too
        fresh = [k for k in result.missing_keys if ".keypoints." not in k and k not in reshaped
                 and not k.startswith(("keypoint_select.", "named_proj."))]
        if fresh or result.unexpected_keys:
            raise ValueError(f"{cfg.init_from} does not match preset {cfg.preset!r}: missing {fresh[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
        note = f" ({len(result.missing_keys)} tensors start fresh)" if result.missing_keys else ""
        print(f"initialised from {cfg.init_from}{note}", flush=True)
        if init.config.action_bin_stride != model.config.action_bin_stride:
            print(f"note: {cfg.init_from} was trained on bin stride {init.config.action_bin_stride or 'none'}, "
                  f"this run uses {model.config.action_bin_stride or 'none'} (--translation-bin-stride)", flush=True)
    if cfg.fresh_keypoints and model.vision_encoder is not None and model.vision_encoder.keypoints is not None:
        model.vision_encoder.keypoints = SpatialSoftmaxKeypoints(model.config.vision_keypoints, model.config.d_vision)
        print("keypoint stem re-initialised", flush=True)
    if cfg.reset_keypoint_identity and model.vision_encoder is not None and model.vision_encoder.keypoints is not None:
        with torch.no_grad():
            model.vision_encoder.keypoints.identity.normal_(0.0, IDENTITY_STD)
        print(f"keypoint identities re-drawn at std {IDENTITY_STD}", flush=True)
    mc = model.config
    heads = (AuxHeads(mc.n_patches, mc.d_vision, mc.d_model, n_keypoints=mc.vision_keypoints,
                      colour_keypoints=cfg.colour_keypoints, cells=mc.image_size // KEYPOINT_STRIDE,
                      named_weight=cfg.named_aux_weight, goal_weight=cfg.keypoint_goal_weight)
             if ds.aux is not None and cfg.aux_weight > 0 else None)
    stem = model.vision_encoder.keypoints if cfg.freeze_keypoint_stem else None  # the config checked it exists
    frozen = [*stem.stem.parameters(), stem.log_temperature] if stem is not None else []
    frozen_ids = {id(p) for p in frozen}
    named = ([(n, p) for n, p in model.named_parameters() if id(p) not in frozen_ids]
             + ([(f"aux.{n}", p) for n, p in heads.named_parameters()] if heads else []))
    decay = [p for n, p in named if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    step, elapsed_before, epoch = 0, 0.0, 0
    rng = np.random.default_rng(cfg.seed)
    state_path = out / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["config"]["preset"] != cfg.preset:
            raise ValueError(f"{state_path}: was trained with preset {state['config']['preset']!r}, not {cfg.preset!r}")
        was = state["config"].get("translation_bin_stride", 1)
        if was != cfg.translation_bin_stride:
            raise ValueError(f"{state_path}: was trained with translation_bin_stride {was}, not "
                             f"{cfg.translation_bin_stride} (two label sets in one run)")
        model.load_state_dict(state["model"])
        if heads is not None and state.get("aux_heads") is not None:
            heads.load_state_dict(state["aux_heads"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed_before, epoch = state["step"], state["elapsed_s"], state["epoch"]
        rng = np.random.default_rng([cfg.seed, epoch, step])
        torch.manual_seed(cfg.seed + step)
        print(f"resumed from {state_path} at step {step} ({elapsed_before / 60:.1f} min trained)", flush=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    keypoint_pretraining: dict[str, float] = {}
    if step == 0 and cfg.keypoint_pretrain_steps > 0:
        keypoint_pretraining = pretrain_keypoints(model, heads, ds, train_idx, val_idx, cfg)
    for p in frozen:
        p.requires_grad_(False)
    print(f"target: preset {cfg.preset}, {count_parameters(model) / 1e6:.2f} M params; "
          f"{ds.n_episodes} episodes, {len(train_idx)} train / {len(val_idx)} val steps (loaded in {load_s:.0f} s)",
          flush=True)
    budget_s = cfg.time_budget_min * 60.0
    t0 = time.perf_counter()
    log = (out / LOG_FILE).open("a")
    bar = tqdm(total=cfg.steps, initial=step, desc="target", unit="step", disable=not cfg.progress)
    best_val = float("inf")
    last: dict[str, float] = {}
    batches = iter(())
    done = False

    def save_state() -> None:
        torch.save({"model": model.state_dict(), "aux_heads": heads.state_dict() if heads is not None else None,
                    "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                    "elapsed_s": elapsed_before + time.perf_counter() - t0, "config": asdict(cfg)},
                   str(state_path) + ".tmp")
        Path(str(state_path) + ".tmp").replace(state_path)
        save_checkpoint_dir(model, ds, out / "latest", "float32")

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
        loss, m = train_forward(model, heads, b, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.grad_clip)
        opt.step()
        step += 1
        last = {"loss": float(loss.detach()), **m}
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.3f}", act=f"{m['action_acc']:.2f}", bin=f"{m['bin_err']:.1f}", ep=epoch)
        done = step >= cfg.steps or (budget_s > 0 and elapsed >= budget_s)
        record = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 1),
                  **{f"train_{k}": round(v, 4) for k, v in last.items()}}
        if step % cfg.eval_every == 0 or done:
            val = evaluate(model, ds, val_idx, cfg, heads)
            record.update({f"val_{k}": round(v, 4) for k, v in val.items()})
            if val and val["loss"] < best_val:
                best_val = val["loss"]
            bar.write(f"step {step}: train loss {last['loss']:.3f} | val " +
                      " ".join(f"{k} {v:.3f}" for k, v in val.items()))
        log.write(json.dumps(record) + "\n")
        log.flush()
        if step % cfg.ckpt_every == 0 or done:
            save_state()
    bar.close()
    log.close()
    model.eval()
    save_checkpoint_dir(model, ds, out / "final", cfg.storage_dtype)
    final_val = evaluate(model, ds, val_idx, cfg, heads)
    summary = {
        "preset": cfg.preset, "params": count_parameters(model), "steps": step, "epochs": epoch,
        "train_minutes": round((elapsed_before + time.perf_counter() - t0) / 60.0, 1),
        "episodes": ds.n_episodes, "train_steps": int(len(train_idx)), "val_steps": int(len(val_idx)),
        "last_train": last, "val": final_val, "seed": cfg.seed, "final_dir": str(out / "final"),
        "keypoint_pretraining": keypoint_pretraining,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TargetTrainConfig(data=["x"], out="x")
    p.add_argument("--data", nargs="+", required=True, help="dataset directories written by collect")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, final/)")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS), help="model size")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--action-weight", type=float, default=d.action_weight)
    p.add_argument("--action-label-sigma", type=float, default=d.action_label_sigma, help="[bins]")
    p.add_argument("--translation-bin-stride", type=int, default=d.translation_bin_stride,
                   help="train x, y, z on every s-th action bin only (a coarser resolution; 1 = every bin)")
    p.add_argument("--action-reg-weight", type=float, default=d.action_reg_weight,
                   help="weight of the expected-bin L1 on action tokens (0 = off)")
    p.add_argument("--jitter", type=float, default=d.jitter, help="image colour jitter amplitude")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--time-budget-min", type=float, default=d.time_budget_min, help="stop after this many minutes (0 = none)")
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--aux-weight", type=float, default=d.aux_weight, help="auxiliary position losses (0 = off)")
    p.add_argument("--init-from", default="", help="start from this checkpoint dir's weights")
    p.add_argument("--keep-init-stats", action="store_true",
                   help="tokenise actions with --init-from's action statistics (bins keep their meaning)")
    p.add_argument("--chunk-horizon", type=int, default=d.chunk_horizon,
                   help="actions per decision (H > 1: action-chunk model on collect --chunk-horizon data)")
    p.add_argument("--fresh-keypoints", action="store_true", help="re-initialise the keypoint stem after --init-from")
    p.add_argument("--keypoint-pretrain-steps", type=int, default=d.keypoint_pretrain_steps,
                   help="fit the keypoint stem to object positions first (keypoint presets)")
    p.add_argument("--keypoint-pretrain-lr", type=float, default=d.keypoint_pretrain_lr,
                   help="peak learning rate of keypoint pretraining (warmup, then cosine)")
    p.add_argument("--keypoint-goal-weight", type=float, default=d.keypoint_goal_weight,
                   help="weight of the push target's keypoint in the colour-keypoint loss")
    p.add_argument("--freeze-keypoint-stem", action="store_true",
                   help="keep the keypoint stem as keypoint pretraining left it while the decoder trains")
    p.add_argument("--colour-keypoints", action="store_true",
                   help="pull keypoint c onto the object of colour c in the image")
    p.add_argument("--named-aux-weight", type=float, default=d.named_aux_weight,
                   help="extra weight on the decoder's named-object estimate (absolute and relative to the TCP)")
    p.add_argument("--reset-keypoint-identity", action="store_true",
                   help="re-draw the keypoint identity embeddings after --init-from")
    add_bf16_arguments(p)
    p.add_argument("--no-progress", action="store_true")


def config_from_args(a: argparse.Namespace) -> TargetTrainConfig:
    return TargetTrainConfig(
        data=list(a.data), out=a.out, preset=a.preset, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
        warmup_steps=a.warmup_steps, action_weight=a.action_weight, action_label_sigma=a.action_label_sigma,
        action_reg_weight=a.action_reg_weight, translation_bin_stride=a.translation_bin_stride,
        jitter=a.jitter, val_fraction=a.val_fraction, eval_every=a.eval_every, ckpt_every=a.ckpt_every,
        time_budget_min=a.time_budget_min, max_episodes=a.max_episodes, seed=a.seed, threads=a.threads,
        bf16=bf16_from_args(a), aux_weight=a.aux_weight, init_from=a.init_from, progress=not a.no_progress,
        keypoint_pretrain_steps=a.keypoint_pretrain_steps, fresh_keypoints=a.fresh_keypoints,
        colour_keypoints=a.colour_keypoints, named_aux_weight=a.named_aux_weight,
        reset_keypoint_identity=a.reset_keypoint_identity, keep_init_stats=a.keep_init_stats,
        chunk_horizon=a.chunk_horizon, keypoint_pretrain_lr=a.keypoint_pretrain_lr,
        keypoint_goal_weight=a.keypoint_goal_weight, freeze_keypoint_stem=a.freeze_keypoint_stem,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(train_target(cfg), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
