"""Relabel recorded pick episodes with the expert's observable close -> lift rule.

Until the expert ended its "close" phase on the gripper opening (``expert.CLOSED_OPENING``),
it closed for a fixed three steps. The fingers shut within the first one, so the later
"closing" frames show exactly what the first "lifting" frame shows, with a different label;
behaviour cloning learnt the majority (stay and close) and the policy never lifted. This
rewrites those frames in datasets recorded before the change to what the expert now does
there: lift straight up with the gripper closed. Images, proprio and every other frame
stay as they were.

    python -m specvla_ros.train.relabel DIR [DIR ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from specvla_ros.sim import language
from specvla_ros.sim.expert import CLOSED_OPENING, MAX_STEP_M
from specvla_ros.sim.tasks import sample_layout
from specvla_ros.train.dataset import UNREADABLE_EPISODE, episode_files

GRIPPER_INDEX = 7  # proprio: 7 joint positions, then the gripper opening [m]


def relabel_episode(episode: dict[str, np.ndarray]) -> int:
    """Rewrite the stale "closing" frames of one pick episode in place; returns how many changed."""
    if str(episode["task"]) != "pick":
        return 0
    narrations = episode["narrations"]
    stale = (narrations == language.CLOSE) & (episode["proprio"][:, GRIPPER_INDEX] <= CLOSED_OPENING)
    n = int(stale.sum())
    if n == 0:
        return 0
    target = sample_layout("pick", int(episode["seed"])).target
    lift = language.narration(language.LIFT, target.color, target.shape)
    if len(lift) > narrations.dtype.itemsize // 4:  # fixed-width unicode array: widen before writing
        narrations = narrations.astype(f"<U{len(lift)}")
    actions = episode["actions"]
    # the expert lifts from the grasp height straight up at full speed, fingers closed; its
    # orientation correction does not depend on the phase, so the recorded one stays
    actions[stale, 0:3] = (0.0, 0.0, MAX_STEP_M)
    actions[stale, 6] = 0.0
    narrations[stale] = lift
    episode["narrations"] = narrations
    episode["actions"] = actions
    return n


def relabel_dir(directory: Path) -> tuple[int, int]:
    """Relabel every episode file in a dataset directory -> (episodes changed, frames changed)."""
    episodes = frames = 0
    for path in episode_files(directory):
        try:
            with np.load(path, allow_pickle=False) as f:
                episode = {k: f[k].copy() for k in f.files}
        except UNREADABLE_EPISODE as exc:  # the training loader skips these too
            print(f"relabel: skipping unreadable {path}: {exc}")
            continue
        n = relabel_episode(episode)
        if n:
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **episode)
            tmp.replace(path)
            episodes += 1
            frames += n
    return episodes, frames


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="dataset directories written by collect")
    args = p.parse_args(argv)
    for d in args.dirs:
        try:
            episodes, frames = relabel_dir(d)
        except ValueError as exc:  # not a directory, or no episode files in it
            raise SystemExit(f"relabel: {exc}") from exc
        print(f"{d}: {frames} frames in {episodes} pick episodes relabelled close -> lift")


if __name__ == "__main__":
    main()
