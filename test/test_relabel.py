"""relabel: old pick episodes get the expert's observable close -> lift labels, nothing else changes."""
from __future__ import annotations

import numpy as np

from specvla_ros.sim.expert import CLOSED_OPENING, MAX_STEP_M
from specvla_ros.train.collect import CollectConfig, collect
from specvla_ros.train.relabel import main, relabel_dir


def _age(path) -> tuple[dict, int]:  # noqa: ANN001
    """Turn a freshly collected pick episode into what the counter expert recorded: the first
    lift frame (fingers already shut) labelled "closing the gripper" with no motion."""
    with np.load(path) as f:
        ep = {k: f[k].copy() for k in f.files}
    i = int(np.flatnonzero(np.char.startswith(ep["narrations"], "lifting"))[0])
    ep["narrations"][i] = "closing the gripper"
    ep["actions"][i, :3] = 0.0
    np.savez_compressed(path, **ep)
    return ep, i


def test_relabel_restores_the_lift_frames_and_leaves_the_rest(tmp_path, capsys) -> None:
    out = tmp_path / "demos"
    collect(CollectConfig(out=out, episodes=2, tasks=("pick", "reach"), seed=300, image_size=(32, 32),
                          progress=False))
    pick, reach = out / "episode_00000.npz", out / "episode_00001.npz"
    with np.load(pick) as f:
        truth = {k: f[k].copy() for k in f.files}
    aged, i = _age(pick)
    assert aged["proprio"][i, 7] <= CLOSED_OPENING
    reach_before = reach.read_bytes()
    (out / "episode_00002.npz").write_bytes(b"")  # a collector killed mid-write
    assert relabel_dir(out) == (1, 1)
    with np.load(pick) as f:
        np.testing.assert_array_equal(f["images"], truth["images"])
        np.testing.assert_array_equal(f["narrations"], truth["narrations"])
        np.testing.assert_allclose(f["actions"][:, :3], truth["actions"][:, :3], atol=1e-6)
        np.testing.assert_array_equal(f["actions"][:, 3:], truth["actions"][:, 3:])
        assert f["actions"][i, 2] == np.float32(MAX_STEP_M)
    assert reach.read_bytes() == reach_before  # not a pick episode: untouched
    main([str(out)])  # idempotent: nothing left to change
    assert "0 frames in 0 pick episodes" in capsys.readouterr().out
