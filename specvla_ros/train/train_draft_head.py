"""Train an EAGLE-style draft head against any target VLA from recorded episodes.

The target (any checkpoint ``load_vla`` reads: the shipped tiny VLA, OpenVLA, ...)
stays frozen; only the head learns. For every recorded frame the target runs
its prefix and the token sequence to imitate, and the head is trained, EAGLE
style, on the target's own last hidden states:

    head input at position j: fc([embed(x_j), h_{j-1}])  ->  predicted h_j
    loss = feature_weight * SmoothL1(predicted h_j, h_j)               (every position)
         + token_weight  * CE(lm_head(predicted h_j), softmax(lm_head(h_j)))   (generated positions)

The token term distils the target's next-token distribution, which is what
greedy verification accepts. Tokens to imitate (``--tokens``): "greedy"
(default) = the target's own greedy output for the frame (self-distillation:
the head sees the same hidden states it will see when drafting; the only
choice for bags, which hold observations but no actions); "demo" = the
recorded narration + EON + the expert's action tokens (simulator datasets;
cheaper, but a target that does not reproduce the expert shifts the features).

Data (``--data``, repeatable): a directory of ``episode_XXXXX.npz`` (images
(T,H,W,3) uint8, proprio (T,8), actions (T,7), narrations (T,), instruction),
or a rosbag2 bag (camera, instruction and joint-state topics; each camera frame
is paired with the newest instruction and joint state at or before it).

Output (``--out``): the drafter checkpoint ``load_drafter`` reads (config.json,
model.safetensors, the target's tokenizer when it is the project's own), written
every ``--checkpoint-every`` steps and at the end, plus ``train_state.pt``
(optimizer, step, RNG) so a rerun with the same ``--out`` resumes.

    python -m specvla_ros.train.train_draft_head --target specvla_ros/data/models/target \\
        --data data/demos --out runs/eagle --steps 2000
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specvla_ros.core.types import PANDA_FINGER_JOINT_NAMES, PANDA_JOINT_NAMES, Observation
from specvla_ros.ros import topics

LOG = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
TOKEN_MODES = ("demo", "greedy")
DEFAULT_TOPICS = {"camera": topics.IMAGE, "instruction": topics.INSTRUCTION, "joints": topics.JOINT_STATES}


@dataclass
class DraftHeadTrainConfig:
    """What to train and how (units: steps are optimizer updates)."""

    target: Path
    data: list[Path]
    out: Path
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    feature_weight: float = 1.0
    token_weight: float = 1.0
    tokens: str = "greedy"  # self-distillation: the head learns what the target emits (docs/training.md)
    max_narration_tokens: int = 12
    max_samples: int = 0  # 0 = every frame
    eval_frames: int = 0  # frames held out (the last ones) to measure acceptance after training
    frame_stride: int = 1  # use every n-th frame of an episode
    checkpoint_every: int = 200
    resume: bool = True
    cache_features: bool = True  # keep the frozen target's features in memory after the first epoch
    device: str = "auto"
    dtype: str | None = None
    seed: int = 0
    progress: bool = True
    camera_topic: str = DEFAULT_TOPICS["camera"]
    instruction_topic: str = DEFAULT_TOPICS["instruction"]
    joints_topic: str = DEFAULT_TOPICS["joints"]

    def __post_init__(self) -> None:
        self.target, self.out = Path(self.target), Path(self.out)
        self.data = [Path(d) for d in self.data]
        if not self.data:
            raise ValueError("data must name at least one episode directory or bag")
        for name in ("steps", "batch_size", "checkpoint_every", "frame_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "max_samples", "max_narration_tokens", "eval_frames"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.feature_weight < 0 or self.token_weight < 0 or self.feature_weight + self.token_weight == 0:
            raise ValueError(f"feature_weight ({self.feature_weight}) and token_weight ({self.token_weight}) must be "
                             ">= 0 and not both 0")
        if self.tokens not in TOKEN_MODES:
            raise ValueError(f"tokens must be one of {TOKEN_MODES}, got {self.tokens!r}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")


# --- data ------------------------------------------------------------------------------

@dataclass
class Frame:
    """One recorded control step; ``narration``/``action`` are None when the source has no labels (bags)."""

    image: np.ndarray
    instruction: str
    proprio: np.ndarray
    narration: str | None = None
    action: np.ndarray | None = None


def load_episode_dir(path: Path, stride: int = 1) -> list[Frame]:
    """Frames of every ``episode_*.npz`` in ``path`` (ValueError naming a broken file)."""
    files = sorted(path.glob("episode_*.npz"))
    if not files:
        raise ValueError(f"{path}: no episode_*.npz files")
    frames: list[Frame] = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as ep:
                images, proprio, actions = ep["images"], ep["proprio"], ep["actions"]
                narrations, instruction = ep["narrations"], str(ep["instruction"])
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ValueError(f"{f}: not a readable episode ({exc})") from exc
        n = len(images)
        if not (len(proprio) == len(actions) == len(narrations) == n) or images.ndim != 4:
            raise ValueError(f"{f}: images/proprio/actions/narrations lengths differ or images are not (T,H,W,3)")
        for t in range(0, n, stride):
            frames.append(Frame(images[t], instruction, proprio[t].astype(np.float32), str(narrations[t]),
                                actions[t].astype(np.float64)))
    return frames


def _image_from_msg(msg) -> np.ndarray:  # noqa: ANN001 - rosbags message
    enc = msg.encoding.lower()
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(enc)
    if channels is None:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (need rgb8/bgr8/rgba8/bgra8)")
    data = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width * channels]
    img = data.reshape(msg.height, msg.width, channels)[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1] if enc.startswith("bgr") else img)


def _proprio_from_joint_state(msg) -> list[float] | None:  # noqa: ANN001
    """7 Panda joints + gripper opening (sum of the fingers); None if an arm joint is absent."""
    pos = dict(zip(msg.name, np.asarray(msg.position, dtype=np.float64).tolist()))
    if not all(j in pos for j in PANDA_JOINT_NAMES):
        return None
    return [pos[j] for j in PANDA_JOINT_NAMES] + [sum(pos.get(j, 0.0) for j in PANDA_FINGER_JOINT_NAMES)]


def load_bag(path: Path, camera: str, instruction: str, joints: str, stride: int = 1) -> list[Frame]:
    """Frames of a rosbag2 bag: each camera image with the newest instruction and joint state before it."""
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    frames: list[Frame] = []
    try:
        with Reader(path) as reader:
            topics = {c.topic for c in reader.connections}
            missing = [t for t in (camera, instruction, joints) if t not in topics]
            if missing:
                raise ValueError(f"{path}: bag lacks topic(s) {missing}; it has {sorted(topics)}")
            conns = [c for c in reader.connections if c.topic in (camera, instruction, joints)]
            text: str | None = None
            proprio: list[float] | None = None
            n_images = 0
            for conn, _stamp, raw in reader.messages(connections=conns):
                msg = store.deserialize_cdr(raw, conn.msgtype)
                if conn.topic == instruction:
                    text = str(msg.data)
                elif conn.topic == joints:
                    proprio = _proprio_from_joint_state(msg) or proprio
                elif text is not None and proprio is not None:
                    if n_images % stride == 0:
                        frames.append(Frame(_image_from_msg(msg), text, np.array(proprio, dtype=np.float32)))
                    n_images += 1
    except (ReaderError, OSError, KeyError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read bag ({exc})") from exc
    if not frames:
        raise ValueError(f"{path}: no camera frame has an instruction and a Panda joint state before it")
    return frames


def load_frames(cfg: DraftHeadTrainConfig) -> list[Frame]:
    frames: list[Frame] = []
    for src in cfg.data:
        if src.is_dir() and any(src.glob("episode_*.npz")):
            frames += load_episode_dir(src, cfg.frame_stride)
        elif src.exists():
            frames += load_bag(src, cfg.camera_topic, cfg.instruction_topic, cfg.joints_topic, cfg.frame_stride)
        else:
            raise ValueError(f"{src}: no such episode directory or bag")
    if cfg.max_samples:
        frames = frames[: cfg.max_samples]
    return frames


# --- target features -------------------------------------------------------------------

@dataclass
class Features:
    """Teacher-forcing inputs of one frame (CPU tensors).

    embeds, hidden: (S, d) target input embeddings and last hidden states of prefix + tokens;
    gen_start: index of the last prefix position (its logits predict the first generated token).
    """

    embeds: torch.Tensor
    hidden: torch.Tensor
    gen_start: int


def demo_token_ids(target, frame: Frame, max_narration: int) -> list[int]:  # noqa: ANN001 - any VLAModel
    """Recorded narration (if the target narrates) + EON + the expert action's 7 tokens."""
    if frame.action is None:
        raise ValueError("this frame has no recorded action (bags): use --tokens greedy")
    tok = target.text_tokenizer
    allowed = set(tok.text_token_ids()) if hasattr(tok, "text_token_ids") else None
    narration = [] if allowed is not None and not allowed else tok.encode(frame.narration or "")
    if allowed:
        narration = [i for i in narration if i in allowed]
    return [*narration[:max_narration], tok.eon_token_id, *target.action_tokenizer.encode(frame.action).tolist()]


def greedy_token_ids(target, frame: Frame, max_narration: int) -> list[int]:  # noqa: ANN001
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder

    dec = SpeculativeDecoder(target, None, DecodeConfig(mode="greedy", max_narration_tokens=max_narration))
    return dec.decode(Observation(frame.image, frame.instruction, frame.proprio)).token_ids


@torch.inference_mode()
def target_features(target, frame: Frame, token_ids: list[int]) -> Features:  # noqa: ANN001
    """Run the frozen target over prefix + ``token_ids`` -> Features."""
    vision = target.encode_vision(frame.image)
    prefix = target.prefix_embeds(vision, frame.instruction, frame.proprio)[0]
    cache, out = target.prefill(vision, frame.instruction, frame.proprio, return_all_hidden=True)
    ids = torch.tensor(token_ids, dtype=torch.long, device=target.device)
    gen = target.forward(ids, cache)
    embeds = torch.cat([prefix, target.embed_tokens(ids)], dim=0)
    hidden = torch.cat([out.hidden, gen.hidden], dim=0)
    return Features(embeds.float().cpu(), hidden.float().cpu(), prefix.shape[0] - 1)


def collate(batch: list[Features], device: torch.device, dtype: torch.dtype):
    """Left-pad to (B, S, d) -> embeds, hidden, valid (B,S) bool, token_mask (B,S) bool.

    token_mask marks positions whose next token is generated (gen_start .. S-2 of each sample).
    """
    s_max = max(f.embeds.shape[0] for f in batch)
    d = batch[0].embeds.shape[1]
    b = len(batch)
    embeds = torch.zeros(b, s_max, d)
    hidden = torch.zeros(b, s_max, d)
    valid = torch.zeros(b, s_max, dtype=torch.bool)
    token_mask = torch.zeros(b, s_max, dtype=torch.bool)
    for i, f in enumerate(batch):
        s = f.embeds.shape[0]
        off = s_max - s
        embeds[i, off:], hidden[i, off:] = f.embeds, f.hidden
        valid[i, off:] = True
        token_mask[i, off + f.gen_start: s_max - 1] = True
    to = dict(device=device)
    return embeds.to(dtype=dtype, **to), hidden.to(dtype=dtype, **to), valid.to(**to), token_mask.to(**to)


def head_for(target):  # noqa: ANN001, ANN201 - EagleHead
    """A fresh EAGLE head shaped like the target's decoder."""
    from specvla_ros.core.models.eagle_head import EagleConfig, EagleHead

    g = target.config
    cfg = EagleConfig(vocab_size=target.vocab_size, d_model=g.d_model, n_heads=g.n_heads, n_kv_heads=g.n_kv_heads,
                      intermediate_size=g.intermediate_size, rope_theta=float(g.rope_theta),
                      max_positions=g.max_positions)
    return EagleHead(cfg)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    return min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def losses(head, target, embeds, hidden, valid, token_mask,  # noqa: ANN001
           cfg: DraftHeadTrainConfig) -> dict[str, torch.Tensor]:
    """Feature regression + distillation of the target's next-token distribution (see module docstring)."""
    _, pred = head.forward_train(embeds, hidden, valid, nn.Identity())
    feat = F.smooth_l1_loss(pred[valid].float(), hidden[valid].float())
    head_logits = target.lm_head(pred[token_mask].to(target.dtype)).float()  # frozen LM head of the target
    with torch.no_grad():
        teacher = target.lm_head(hidden[token_mask].to(target.dtype)).float()
    # KL(teacher || head): cross-entropy minus the teacher's entropy, so 0 means "same distribution"
    log_p = torch.log_softmax(teacher, -1)
    tok = (log_p.exp() * (log_p - torch.log_softmax(head_logits, -1))).sum(-1).mean()
    agree = (head_logits.argmax(-1) == teacher.argmax(-1)).float().mean()
    return {"loss": cfg.feature_weight * feat + cfg.token_weight * tok, "feature": feat, "token": tok,
            "top1": agree}


# --- checkpoints -----------------------------------------------------------------------

def save_draft(head, target, out: Path) -> None:  # noqa: ANN001
    """Write the drafter checkpoint ``load_drafter`` reads, atomically (tmp dir + rename)."""
    from safetensors.torch import save_file

    from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
    from specvla_ros.core.models.checkpoint_io import CONFIG_FILE, DRAFT_MODEL_TYPE, WEIGHTS_FILE

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(target.text_tokenizer, VLATextTokenizer):
        head.save_pretrained(tmp, target.text_tokenizer)
    else:  # e.g. OpenVLA's LLaMA tokenizer: load_drafter checks vocabulary size and width instead
        tmp.mkdir(parents=True)
        (tmp / CONFIG_FILE).write_text(json.dumps(asdict(head.config), indent=2))
        sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
        save_file(sd, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "model_type": DRAFT_MODEL_TYPE})
    out.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()


def _save_state(out: Path, step: int, opt: torch.optim.Optimizer, sched, rng: np.random.Generator,
                cfg: DraftHeadTrainConfig, history: list[dict]) -> None:
    state = {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
             "batch_rng": rng.bit_generator.state, "history": history,
             "config": {k: str(v) for k, v in asdict(cfg).items()}}
    tmp = out / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / STATE_FILE)


def _resume(cfg: DraftHeadTrainConfig, head, opt, sched,  # noqa: ANN001
            rng: np.random.Generator) -> tuple[int, list[dict]]:
    from specvla_ros.core.models.checkpoint_io import WEIGHTS_FILE, load_weights

    state_path = cfg.out / STATE_FILE
    if not (cfg.resume and state_path.is_file()):
        return 0, []
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{state_path}: cannot read the training state ({exc}); delete it to start over") from exc
    if Path(state["config"]["target"]) != cfg.target:
        raise ValueError(f"{state_path}: was trained against {state['config']['target']}, not {cfg.target}")
    load_weights(head, cfg.out / WEIGHTS_FILE)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["py_rng"])
    rng.bit_generator.state = state["batch_rng"]
    LOG.info("resuming from %s at step %d", cfg.out, state["step"])
    return int(state["step"]), list(state["history"])


# --- training loop ---------------------------------------------------------------------

def train(cfg: DraftHeadTrainConfig) -> dict:
    """Train (or resume) and return a summary dict (also written to ``out/train_summary.json``)."""
    from tqdm import tqdm

    from specvla_ros.core.models.loading import load_vla

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    target = load_vla(cfg.target, device=cfg.device, dtype=cfg.dtype)
    if isinstance(target, nn.Module):
        target.requires_grad_(False)
    frames = load_frames(cfg)
    if cfg.eval_frames and len(frames) <= cfg.eval_frames:
        raise ValueError(f"eval_frames {cfg.eval_frames} leaves no training frame out of {len(frames)}")
    held_out = frames[len(frames) - cfg.eval_frames:] if cfg.eval_frames else []
    frames = frames[: len(frames) - cfg.eval_frames]
    # the head trains in fp32 (AdamW on bf16 weights loses small updates); load_drafter casts it to the target's dtype
    head = head_for(target).to(device=target.device, dtype=torch.float32).train()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    rng = np.random.default_rng(cfg.seed)  # batch sampling; its state is checkpointed so a resume is exact
    step, history = _resume(cfg, head, opt, sched, rng)
    cfg.out.mkdir(parents=True, exist_ok=True)
    token_fn = demo_token_ids if cfg.tokens == "demo" else greedy_token_ids
    cache: dict[int, Features] = {}

    def features(i: int) -> Features:
        if i in cache:
            return cache[i]
        f = target_features(target, frames[i], token_fn(target, frames[i], cfg.max_narration_tokens))
        if cfg.cache_features:
            cache[i] = f
        return f

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="draft head", unit="step", disable=not cfg.progress)
    while step < cfg.steps:
        idx = rng.choice(len(frames), size=min(cfg.batch_size, len(frames)), replace=False)
        batch = collate([features(int(i)) for i in idx], target.device, torch.float32)
        out = losses(head, target, *batch, cfg)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        rec = {"step": step, **{k: float(v.detach()) for k, v in out.items()}}
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", top1=f"{rec['top1']:.2f}")
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_draft(head.eval(), target, cfg.out)
            head.train()
            _save_state(cfg.out, step, opt, sched, rng, cfg, history)
    bar.close()
    tail = history[-min(len(history), 20):] if history else []
    summary = {
        "steps": step, "frames": len(frames), "tokens": cfg.tokens, "train_time_s": time.perf_counter() - t0,
        "first_loss": history[0]["loss"] if history else float("nan"),
        "final_loss": float(np.mean([h["loss"] for h in tail])) if tail else float("nan"),
        "final_top1_agreement": float(np.mean([h["top1"] for h in tail])) if tail else float("nan"),
        "out": str(cfg.out),
    }
    if held_out:
        summary["eval"] = evaluate(target, head.eval(), held_out, cfg)
    (cfg.out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@torch.inference_mode()
def evaluate(target, head, frames: list[Frame], cfg: DraftHeadTrainConfig) -> dict:  # noqa: ANN001
    """Greedy speculative decoding with the trained head on held-out frames: acceptance, and a
    check that the output equals target-only greedy decoding (it must: exact mode is lossless)."""
    from specvla_ros.core.decoding.drafters import EagleDrafter
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder

    dcfg = DecodeConfig(mode="greedy", max_narration_tokens=cfg.max_narration_tokens)
    drafter = EagleDrafter(head.to(target.dtype), target, dcfg.draft_len, dcfg.max_draft_len)
    spec = SpeculativeDecoder(target, drafter, dcfg)
    base = SpeculativeDecoder(target, None, dcfg)
    drafted = accepted = emitted = passes = same = 0
    for f in frames:
        obs = Observation(f.image, f.instruction, f.proprio)
        res = spec.decode(obs)
        same += int(res.token_ids == base.decode(obs).token_ids)
        s = res.stats
        drafted, accepted = drafted + s.drafted, accepted + s.accepted
        emitted, passes = emitted + s.emitted, passes + s.target_passes
    head.float()
    return {"frames": len(frames), "acceptance_rate": accepted / drafted if drafted else 0.0,
            "mean_accepted_length": emitted / max(passes, 1), "target_passes_per_decision": passes / len(frames),
            "equal_to_target_greedy": same / len(frames)}


def parse_args(argv: list[str] | None = None) -> DraftHeadTrainConfig:
    p = argparse.ArgumentParser(prog="python -m specvla_ros.train.train_draft_head", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="target checkpoint dir (any model_type load_vla reads)")
    p.add_argument("--data", required=True, action="append", help="episode dir or rosbag2 bag (repeatable)")
    p.add_argument("--out", required=True, help="drafter checkpoint dir (resumed when it holds train_state.pt)")
    d = DraftHeadTrainConfig(target=Path("."), data=[Path(".")], out=Path("."))
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--feature-weight", type=float, default=d.feature_weight)
    p.add_argument("--token-weight", type=float, default=d.token_weight)
    p.add_argument("--tokens", choices=TOKEN_MODES, default=d.tokens,
                   help="greedy: the target's own output (self-distillation); demo: recorded narration + expert actions")
    p.add_argument("--max-narration-tokens", type=int, default=d.max_narration_tokens)
    p.add_argument("--max-samples", type=int, default=d.max_samples, help="0 = all frames")
    p.add_argument("--frame-stride", type=int, default=d.frame_stride)
    p.add_argument("--eval-frames", type=int, default=d.eval_frames,
                   help="hold out the last N frames and report speculative acceptance on them")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a training state")
    p.add_argument("--no-feature-cache", action="store_true", help="recompute target features every step")
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--camera-topic", default=d.camera_topic)
    p.add_argument("--instruction-topic", default=d.instruction_topic)
    p.add_argument("--joints-topic", default=d.joints_topic)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return DraftHeadTrainConfig(
        target=a.target, data=a.data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
        weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, feature_weight=a.feature_weight,
        token_weight=a.token_weight, tokens=a.tokens, max_narration_tokens=a.max_narration_tokens,
        max_samples=a.max_samples, eval_frames=a.eval_frames, frame_stride=a.frame_stride,
        checkpoint_every=a.checkpoint_every,
        resume=not a.no_resume, cache_features=not a.no_feature_cache, device=a.device, dtype=a.dtype, seed=a.seed,
        camera_topic=a.camera_topic, instruction_topic=a.instruction_topic, joints_topic=a.joints_topic,
        progress=not a.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from specvla_ros.core.models.interface import ModelLoadError

    try:
        cfg = parse_args(argv)
        summary = train(cfg)
    except (ValueError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DraftHeadTrainConfig", "Frame", "Features", "train", "main", "load_episode_dir", "load_bag",
           "target_features", "demo_token_ids", "greedy_token_ids", "save_draft", "head_for", "collate", "losses"]
