"""Demonstration episodes -> per-step training examples for the tiny VLA.

Reads one or more directories written by ``specvla_ros.train.collect``
(``episode_XXXXX.npz`` + ``dataset_statistics.json``) and builds, for every
recorded step t of every episode:

    image (H,W,3) uint8, proprio (8,) float32, instruction,
    target ids = narration ids + [EON] + 7 action token ids (right-padded with [PAD])

With ``chunk_horizon`` H > 1 the action part is the step's action chunk: the
expert's next H actions from that state (``action_chunks`` in the episode file,
written by ``collect --chunk-horizon``), H x 7 tokens.

Action tokens use ``ActionTokenizer`` with the dataset's q01/q99 statistics
(key ``sim_panda``); the same statistics are written into the trained target
checkpoint so de-normalisation at deployment matches training.

Everything lives in memory as numpy arrays (a 600-episode set is ~0.5 GB of
images); batches are gathered by index, optionally with light colour jitter.
"""
from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specvla_ros.core.models.checkpoint_io import STATS_FILE
from specvla_ros.core.models.action_tokenizer import ActionNormStats, ActionTokenizer, load_norm_stats, save_norm_stats
from specvla_ros.core.models.proprio_features import TCP_CENTRE, TCP_SCALE
from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
from specvla_ros.core.types import ACTION_DIM, MAX_CHUNK_HORIZON

DATASET_KEY = "sim_panda"
#: label value ignored by the losses (torch's cross_entropy default)
IGNORE = -100


@dataclass
class DemoDataset:
    """All steps of a set of episodes, flattened.

    images (N,H,W,3) uint8; proprio (N,8) float32; actions (N,7) float32 robot units;
    instr_idx (N,) int into ``instructions``; target_ids (N,T) int64 padded with
    ``pad_id``; n_text (N,) narration length + 1 (EON) -> action tokens start there;
    episode (N,) int episode index; task (N,) str; seeds (E,) layout seed per episode.
    """

    images: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    instr_idx: np.ndarray
    instructions: list[str]
    target_ids: np.ndarray
    n_text: np.ndarray
    episode: np.ndarray
    task: np.ndarray
    seeds: np.ndarray
    stats: ActionNormStats
    pad_id: int
    raw_statistics: dict
    aux: "AuxTargets | None" = None
    horizon: int = 1  # actions per example (action chunk length H)
    chunks: np.ndarray | None = None  # (N,H,7) float32 robot units when horizon > 1
    bin_stride: tuple[int, ...] = ()  # the action labels' bin stride per dimension (ActionTokenizer)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(self.seeds.shape[0])

    def split(self, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) step indices, split by whole episodes (no leakage between frames)."""
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        rng = np.random.default_rng(seed)
        order = rng.permutation(self.n_episodes)
        n_val = int(round(val_fraction * self.n_episodes))
        if val_fraction > 0 and n_val == 0 and self.n_episodes > 1:
            n_val = 1
        val_eps = np.zeros(self.n_episodes, dtype=bool)
        val_eps[order[:n_val]] = True
        is_val = val_eps[self.episode]
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)

    def action_positions(self) -> np.ndarray:
        """(N, 7H) column index in target_ids of each action token."""
        return self.n_text[:, None] + np.arange(ACTION_DIM * self.horizon)[None, :]

    def save_statistics(self, out_dir: str | Path) -> None:
        """Write the statistics the model was trained with as ``dataset_statistics.json``."""
        Path(out_dir, STATS_FILE).write_text(json.dumps(self.raw_statistics, indent=2))


#: What reading an episode file can raise when the file is broken (e.g. a collector killed mid-write):
#: readers skip such files with a message instead of failing the whole dataset.
UNREADABLE_EPISODE = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def episode_files(data_dirs: list[str | Path] | str | Path) -> list[Path]:
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    files: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise ValueError(f"dataset directory {d} does not exist")
        found = sorted(d.glob("episode_*.npz"))
        if not found:
            raise ValueError(f"{d} holds no episode_*.npz files")
        files.extend(found)
    return files


def _statistics(data_dirs: list[Path], actions: np.ndarray) -> tuple[ActionNormStats, dict]:
    """One directory: its own statistics file. Several: q01/q99 recomputed over all actions."""
    if len(data_dirs) == 1 and (data_dirs[0] / STATS_FILE).is_file():
        path = data_dirs[0] / STATS_FILE
        return load_norm_stats(path, DATASET_KEY), json.loads(path.read_text())
    stats = ActionNormStats.from_actions(actions)
    payload = {DATASET_KEY: {"action": stats.to_json_dict(actions), "num_transitions": int(len(actions)),
                             "sources": [str(d) for d in data_dirs]}}
    return stats, payload


def load_demos(
    data_dirs: list[str | Path] | str | Path,
    tokenizer: VLATextTokenizer,
    max_episodes: int | None = None,
    image_size: int | None = None,
    stats: ActionNormStats | None = None,
    aux: bool = False,
    chunk_horizon: int = 1,
    bin_stride: tuple[int, ...] = (),
) -> DemoDataset:
    """Load episodes (successful or policy-driven ones) and tokenise their targets.

    image_size: resize frames to this square size when they differ (None: keep).
    stats: tokenise actions with these statistics (a trained target's) instead of the dataset's.
    aux: also build privileged position targets (``AuxTargets``) for auxiliary losses.
    chunk_horizon: H > 1 tokenises each step's first H expert actions of ``action_chunks`` (files
        without chunk labels, or with shorter chunks, raise ValueError).
    bin_stride: tokenise each action dimension onto every s-th bin only (ActionTokenizer).
    """
    if not 1 <= chunk_horizon <= MAX_CHUNK_HORIZON:
        raise ValueError(f"chunk_horizon must be in [1, {MAX_CHUNK_HORIZON}], got {chunk_horizon}")
    dirs = [Path(d) for d in ([data_dirs] if isinstance(data_dirs, (str, Path)) else data_dirs)]
    files = episode_files(dirs)
    if max_episodes is not None:
        if max_episodes < 1:
            raise ValueError(f"max_episodes must be >= 1, got {max_episodes}")
        files = files[:max_episodes]
    images, proprio, actions, narrations, instr, episode, task, seeds = [], [], [], [], [], [], [], []
    chunks: list[np.ndarray] = []
    skipped: list[str] = []
    for f in files:
        try:
            z = dict(np.load(f))
        except UNREADABLE_EPISODE as exc:
            skipped.append(f"{f.name} ({exc})")
            continue
        # a failed expert episode teaches nothing; a failed policy-driven (DAgger) one holds the
        # expert's labels for the states the policy reaches, which is the point of collecting it
        if not bool(z["success"]) and not bool(z.get("policy_driven", False)):
            continue
        if chunk_horizon > 1:
            labels = z.get("action_chunks")
            if labels is None or labels.ndim != 3 or labels.shape[1] < chunk_horizon:
                got = "none" if labels is None else f"shape {labels.shape}"
                raise ValueError(f"{f}: chunk_horizon {chunk_horizon} needs action_chunks (T, >= {chunk_horizon}, 7) "
                                 f"(collect --chunk-horizon), got {got}")
            chunks.append(labels[:, :chunk_horizon].astype(np.float32))
        imgs = z["images"]
        if image_size is not None and imgs.shape[1:3] != (image_size, image_size):
            imgs = _resize(imgs, image_size)
        n = imgs.shape[0]
        ep_idx = len(seeds)
        images.append(imgs)
        proprio.append(z["proprio"].astype(np.float32))
        actions.append(z["actions"].astype(np.float32))
        narrations.extend(str(s) for s in z["narrations"])
        instr.extend([str(z["instruction"])] * n)
        episode.append(np.full(n, ep_idx, dtype=np.int64))
        task.extend([str(z["task"])] * n)
        seeds.append(int(z["seed"]))
    if skipped:
        logging.getLogger(__name__).warning("skipped %d unreadable episode files: %s", len(skipped), skipped[:3])
    if not seeds:
        raise ValueError(f"no successful episodes in {[str(d) for d in dirs]}")
    acts = np.concatenate(actions)
    if stats is None:
        stats, raw = _statistics(dirs, acts)
    else:
        raw = {DATASET_KEY: {"action": stats.to_json_dict(), "num_transitions": int(len(acts))}}
    at = ActionTokenizer(tokenizer.vocab_size, stats, tokenizer.n_action_tokens, bin_stride)
    instructions = sorted(set(instr))
    lookup = {s: i for i, s in enumerate(instructions)}
    text_cache: dict[str, list[int]] = {}
    texts = []
    for s in narrations:
        if s not in text_cache:
            text_cache[s] = [*tokenizer.encode(s), tokenizer.eon_token_id]
        texts.append(text_cache[s])
    n_act = ACTION_DIM * chunk_horizon
    t_max = max(len(t) for t in texts) + n_act
    target = np.full((len(texts), t_max), tokenizer.pad_token_id, dtype=np.int64)
    n_text = np.zeros(len(texts), dtype=np.int64)
    chunk_arr = np.concatenate(chunks) if chunks else None
    act_ids = (at.encode(chunk_arr.reshape(-1, ACTION_DIM)).reshape(len(texts), n_act) if chunk_arr is not None
               else at.encode(acts))
    for i, t in enumerate(texts):
        target[i, : len(t)] = t
        target[i, len(t) : len(t) + n_act] = act_ids[i]
        n_text[i] = len(t)
    ds = DemoDataset(
        images=np.concatenate(images), proprio=np.concatenate(proprio), actions=acts,
        instr_idx=np.array([lookup[s] for s in instr], dtype=np.int64), instructions=instructions,
        target_ids=target, n_text=n_text, episode=np.concatenate(episode), task=np.array(task),
        seeds=np.array(seeds, dtype=np.int64), stats=stats, pad_id=tokenizer.pad_token_id, raw_statistics=raw,
        horizon=chunk_horizon, chunks=chunk_arr, bin_stride=at.bin_stride,
    )
    if aux:
        ds.aux = build_aux_targets(ds, narrations)
    return ds


#: Phrases said while the named object still rests where the layout put it (before contact).
_PRE_CONTACT = ("moving to", "lowering to", "closing the gripper", "opening the gripper")
# [m] object area (sim.tasks.WORKSPACE_X/Y) -> about [-1, 1], the same scaling as the TCP's
_X_CENTRE, _X_HALF, _Y_HALF = TCP_CENTRE[0], TCP_SCALE[0], TCP_SCALE[1]


AUX_FIELDS = ("objects", "named", "valid", "tcp", "objects_px", "goal_px", "has_goal", "tcp_px")


@dataclass
class AuxTargets:
    """Privileged positions for auxiliary losses (training only; the model never sees them as input).

    objects (N,4,3): per colour of ``sim.language.COLOR_NAMES``: (present, x, y), x/y scaled to ~[-1, 1];
    named (N,2): the instruction's object (x, y), same scaling; valid (N,) bool: the positions hold
    (the object has not been touched yet); tcp (N,3): TCP position from forward kinematics, scaled;
    objects_px (N,4,2): each colour's object centre in the camera image, (x right, y down) in [-1, 1];
    goal_px (N,2): the push target's centre in the image, has_goal (N,) bool: the episode has one;
    tcp_px (N,2): the TCP in the image.
    """

    objects: np.ndarray
    named: np.ndarray
    valid: np.ndarray
    tcp: np.ndarray
    objects_px: np.ndarray
    goal_px: np.ndarray
    has_goal: np.ndarray
    tcp_px: np.ndarray


def build_aux_targets(ds: DemoDataset, narrations: list[str]) -> AuxTargets:
    """Object positions from each episode's seeded layout (``sim.tasks.sample_layout``), TCP by FK."""
    from specvla_ros.core.safety.kinematics import ArmKinematics
    from specvla_ros.sim.language import COLOR_NAMES
    from specvla_ros.sim.scene import TABLE_TOP_Z, project_to_image
    from specvla_ros.sim.tasks import sample_layout

    n = len(ds)
    objects = np.zeros((n, len(COLOR_NAMES), 3), dtype=np.float32)
    named = np.zeros((n, 2), dtype=np.float32)
    tcp = np.zeros((n, 3), dtype=np.float32)
    objects_px = np.zeros((n, len(COLOR_NAMES), 2), dtype=np.float32)
    goal_px = np.zeros((n, 2), dtype=np.float32)
    has_goal = np.zeros(n, dtype=bool)
    tcp_px = np.zeros((n, 2), dtype=np.float32)
    valid = np.array([s.startswith(_PRE_CONTACT) for s in narrations], dtype=bool)
    scale = lambda xy: ((xy[0] - _X_CENTRE) / _X_HALF, xy[1] / _Y_HALF)  # noqa: E731
    layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for e in range(ds.n_episodes):
        rows = np.flatnonzero(ds.episode == e)
        layout = sample_layout(str(ds.task[rows[0]]), int(ds.seeds[e]))
        obj = np.zeros((len(COLOR_NAMES), 3), dtype=np.float32)
        px = np.zeros((len(COLOR_NAMES), 2), dtype=np.float32)
        for o in layout.objects:
            obj[COLOR_NAMES.index(o.color)] = (1.0, *scale(o.xy))
            px[COLOR_NAMES.index(o.color)] = project_to_image(np.array([o.xy[0], o.xy[1], o.rest_z]))
        objects_px[rows] = px
        if layout.goal_xy is not None:
            goal_px[rows] = project_to_image(np.array([*layout.goal_xy, TABLE_TOP_Z]))
            has_goal[rows] = True
        layouts[e] = (obj, np.array(scale(layout.target.xy), dtype=np.float32))
        objects[rows] = obj
        named[rows] = layouts[e][1]
    kin = ArmKinematics.from_urdf()
    for i in range(n):
        pos, _ = kin.fk(ds.proprio[i, :7].astype(np.float64))
        tcp[i] = (pos - np.array(TCP_CENTRE)) / np.array(TCP_SCALE)  # as the panda_tcp proprio features
        tcp_px[i] = project_to_image(pos)
    return AuxTargets(objects=objects, named=named, valid=valid, tcp=tcp, objects_px=objects_px, goal_px=goal_px,
                      has_goal=has_goal, tcp_px=tcp_px)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass
class Batch:
    """Tensors of one batch. images float (B,H,W,3) in [0,1]; labels (B,T) with IGNORE on padding."""

    images: torch.Tensor
    instructions: list[str]
    proprio: torch.Tensor
    target_ids: torch.Tensor
    labels: torch.Tensor
    is_action: torch.Tensor  # (B,T) bool
    index: np.ndarray  # dataset rows
    aux: dict[str, torch.Tensor] | None = None  # AuxTargets rows as tensors, when the dataset has them


def make_batch(ds: DemoDataset, idx: np.ndarray, rng: np.random.Generator | None = None,
               jitter: float = 0.0) -> Batch:
    """Gather rows ``idx``; with ``rng`` and jitter > 0, per-image brightness/contrast/colour jitter."""
    imgs = torch.from_numpy(ds.images[idx]).float() / 255.0
    if rng is not None and jitter > 0:
        b = len(idx)
        gain = 1.0 + rng.uniform(-jitter, jitter, size=(b, 1, 1, 1))
        colour = 1.0 + rng.uniform(-jitter / 2, jitter / 2, size=(b, 1, 1, 3))
        offset = rng.uniform(-jitter / 2, jitter / 2, size=(b, 1, 1, 1))
        imgs = (imgs * torch.from_numpy(gain * colour).float() + torch.from_numpy(offset).float()).clamp(0.0, 1.0)
    tgt = torch.from_numpy(ds.target_ids[idx])
    labels = tgt.clone()
    labels[tgt == ds.pad_id] = IGNORE
    cols = torch.arange(tgt.shape[1])[None, :]
    start = torch.from_numpy(ds.n_text[idx])[:, None]
    is_action = (cols >= start) & (cols < start + ACTION_DIM * ds.horizon)
    aux = None
    if ds.aux is not None:
        aux = {k: torch.from_numpy(getattr(ds.aux, k)[idx]) for k in AUX_FIELDS}
    return Batch(images=imgs, instructions=[ds.instructions[i] for i in ds.instr_idx[idx]],
                 proprio=torch.from_numpy(ds.proprio[idx]), target_ids=tgt, labels=labels,
                 is_action=is_action, index=np.asarray(idx), aux=aux)


def epoch_batches(indices: np.ndarray, batch_size: int, rng: np.random.Generator, drop_last: bool = True):
    """Shuffled batches of ``indices`` for one epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(indices)
    stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
    for s in range(0, stop, batch_size):
        yield order[s : s + batch_size]


def write_statistics_file(path: str | Path, stats: ActionNormStats) -> None:
    """Statistics in OpenVLA's layout under ``sim_panda`` (for tests and tools)."""
    save_norm_stats(path, {DATASET_KEY: stats})
