"""average_checkpoints: the weight average of one chain's runs is a loadable checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from specvla_ros.core.models.loading import load_vla
from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
from specvla_ros.core.models.testing import make_random_checkpoint
from specvla_ros.core.types import Observation
from specvla_ros.train.average_checkpoints import average_checkpoints, main


def test_average_is_the_mean_of_the_weights_and_decodes(tmp_path) -> None:
    a = make_random_checkpoint(tmp_path / "a", preset="test", seed=0)
    b = make_random_checkpoint(tmp_path / "b", preset="test", seed=1)  # same architecture, other weights
    out = average_checkpoints([a, b], tmp_path / "avg")
    wa, wb, wm = (load_file(str(d / "model.safetensors")) for d in (a, b, out))
    assert set(wm) == set(wa)
    moved = 0
    for k, t in wm.items():
        assert t.dtype == wa[k].dtype
        if t.is_floating_point():
            expect = (wa[k].float() + wb[k].float()) / 2
            torch.testing.assert_close(t.float(), expect, rtol=1e-2, atol=1e-3)
            moved += int(not torch.equal(wa[k], wb[k]))
    assert moved > 0
    assert json.loads((out / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    vla = load_vla(out, device="cpu")
    obs = Observation(np.zeros((128, 128, 3), np.uint8), "pick up the red cube", np.zeros(8, np.float32))
    res = SpeculativeDecoder(vla, None, DecodeConfig()).decode(obs)
    assert res.action_tokens.shape == (7,) and np.all(np.isfinite(res.action))


def test_refuses_what_cannot_be_averaged(tmp_path) -> None:
    a = make_random_checkpoint(tmp_path / "a", preset="test", seed=0)
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([a], tmp_path / "x")
    other = make_random_checkpoint(tmp_path / "o", preset="test_kp", seed=0)
    with pytest.raises(ValueError, match="config"):
        average_checkpoints([a, other], tmp_path / "x")
    with pytest.raises(SystemExit, match="not a checkpoint"):
        main([str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
