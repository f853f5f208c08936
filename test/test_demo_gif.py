"""make demo's GIF plays at the robot's speed and says how many frames it holds."""
from __future__ import annotations

import numpy as np
from PIL import Image

from specvla_ros.apps.demo import format_table, write_gif
from specvla_ros.apps.graph_runner import EpisodeLog


def _durations(path) -> list[int]:
    with Image.open(path) as gif:
        out = []
        for i in range(gif.n_frames):
            gif.seek(i)
            out.append(gif.info["duration"])
        return out


def test_a_stall_keeps_its_length_and_the_counts_are_true(tmp_path) -> None:
    moving = [np.full((8, 8, 3), 40 * (i % 5), np.uint8) for i in range(10)]
    stalled = [np.zeros((8, 8, 3), np.uint8)] * 6  # the arm holds still for 6 camera frames
    text = write_gif(moving + stalled, tmp_path / "d.gif", camera_rate=10.0)
    durations = _durations(tmp_path / "d.gif")
    assert sum(durations) == 1600  # 16 frames at 10 Hz, merged or not
    assert durations[-1] == 600  # the stall is one stored frame that lasts 0.6 s
    assert "16 frames of 100 ms" in text and f"{len(durations)} stored" in text


def test_long_runs_are_thinned_with_longer_frames(tmp_path) -> None:
    frames = [np.full((4, 4, 3), i % 251, np.uint8) for i in range(900)]
    text = write_gif(frames, tmp_path / "d.gif", camera_rate=10.0, max_frames=300)
    assert sum(_durations(tmp_path / "d.gif")) == 90_000  # still 90 s of robot time
    assert "300 frames of 300 ms, 1 in 3 camera frames" in text


def test_the_table_says_why_an_episode_failed() -> None:
    ok = EpisodeLog("reach", 1, "reach the red cube", success=True, steps=12)
    failed = EpisodeLog("push", 2, "push the blue block to the target", success=False, steps=60,
                        progress="blue block 4.1 cm from the target centre (needs < 3.5)")
    rows = format_table([ok, failed]).splitlines()
    assert "| yes |" in rows[2]
    assert "| no: blue block 4.1 cm from the target centre (needs < 3.5) |" in rows[3]
