"""Closed-loop evaluation on the real simulator with real (random-weight) models."""
import json

import numpy as np
import pytest

from specvla_ros.apps import closed_loop_eval as ev


def test_config_validation():
    with pytest.raises(ValueError, match="tasks"):
        ev.EvalConfig(tasks=("fly",))
    with pytest.raises(ValueError, match="modes"):
        ev.EvalConfig(modes=("fastest",))
    with pytest.raises(ValueError, match="episodes"):
        ev.EvalConfig(episodes=0)
    with pytest.raises(ValueError, match="dtype"):
        ev.EvalConfig(dtype="int8")


def test_dtype_reaches_the_policy_and_the_node(tiny_checkpoints):
    """--dtype bfloat16 loads the models in bfloat16, in-process and as the node's parameter."""
    import torch

    from specvla_ros.core.policy import Policy

    target, draft, _ = tiny_checkpoints
    cfg = ev.EvalConfig(target_dir=str(target), draft_dir=str(draft), device="cpu", dtype="bfloat16")
    assert Policy(ev._policy_config(cfg, "spec_exact")).target.dtype == torch.bfloat16
    assert ev._node_overrides(cfg, "spec_exact")["dtype"] == "bfloat16"


def test_short_eval_runs_every_mode_and_exact_equals_baseline(tiny_checkpoints, tmp_path):
    target, draft, _ = tiny_checkpoints
    cfg = ev.EvalConfig(tasks=("reach",), episodes=1, max_steps=3, target_dir=str(target), draft_dir=str(draft),
                        device="cpu")
    summaries, results = ev.evaluate(cfg, progress=False)
    assert [s.mode for s in summaries] == list(ev.ALL_MODES)
    for s in summaries:
        assert s.episodes == 1
        assert 0.0 <= s.success_pct <= 100.0 and 0.0 <= s.unsafe_action_pct <= 100.0
        assert s.latency_p95_ms >= s.latency_p50_ms > 0
        assert s.mean_accepted_length >= 1.0
    by_mode = {r.mode: r for r in results}
    assert all(r.steps >= 1 for r in results)
    # greedy speculative decoding is lossless: the same episode issues the same actions
    assert by_mode["spec_exact"].actions == by_mode["baseline"].actions
    assert ev.exact_matches_baseline(results) == 1.0
    base = next(s for s in summaries if s.mode == "baseline")
    assert base.speedup == pytest.approx(1.0)
    table = ev.format_table(summaries)
    assert table.count("\n") == len(summaries) + 1 and "spec_relaxed" in table


def test_cli_writes_json_table_and_plot(tiny_checkpoints, tmp_path, capsys):
    target, draft, _ = tiny_checkpoints
    rc = ev.main(["--tasks", "push", "--episodes", "1", "--max-steps", "2", "--modes", "baseline,spec_exact",
                  "--target", str(target), "--draft", str(draft), "--device", "cpu", "--out", str(tmp_path),
                  "--json", "--quiet"])
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert {s["mode"] for s in payload["summaries"]} == {"baseline", "spec_exact"}
    assert (tmp_path / "plot.png").stat().st_size > 1000
    assert "| baseline |" in (tmp_path / "table.md").read_text()


def test_cli_rejects_bad_arguments(capsys):
    assert ev.main(["--tasks", "dance"]) == 2
    assert "tasks" in capsys.readouterr().err


def test_ros_backend_runs_the_node_in_the_loop(tiny_checkpoints, tmp_path, monkeypatch):
    """specvla_sim + specvla_node as processes, driven over their topics and reset service."""
    monkeypatch.setenv("ROS_DOMAIN_ID", "89")
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    target, draft, _ = tiny_checkpoints
    with pytest.raises(ValueError, match="unchecked"):
        ev.EvalConfig(backend="ros")  # baseline_nogate cannot run through the node
    cfg = ev.EvalConfig(tasks=("reach",), episodes=1, max_steps=3, modes=("spec_exact",), target_dir=str(target),
                        draft_dir=str(draft), device="cpu", backend="ros")
    summaries, results = ev.evaluate(cfg, progress=False, out_dir=tmp_path)
    (r,) = results
    assert r.steps == 3 and r.decisions >= 3  # one verdict per control step at least
    # the arm's joints measured once per step (the start and 3 steps): its jerk is known
    assert r.points_executed == 3 and np.isfinite(r.jerk_rms) and r.jerk_rms >= 0.0
    assert len(r.latencies_s) >= 1 and r.target_passes >= 1
    assert summaries[0].mean_accepted_length >= 1.0
