"""The main job (`make demo`): the simulated Panda driven by specvla_node.

Starts the same graph as ``launch/sim.launch.py`` (``specvla_sim`` + ``specvla_node``
with the shipped models and ``config/specvla.yaml``) as processes; an observer
node resets the simulator for a few episodes, watches the topics a user would
watch, prints a table and writes a GIF of the camera view with the narration
overlaid.

    python -m specvla_ros.bench.demo --episodes 3 --out out/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from specvla_ros.bench.graph_runner import EpisodeLog, SimGraph

TASK_CYCLE = ("reach", "push", "pick")
DEMO_SEED_BASE = 2_000_000  # layouts not used for training


def format_table(logs: list[EpisodeLog]) -> str:
    rows = ["| # | task | instruction | success | collision | steps | decision p50 ms | accepted length | halts |",
            "|---|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(logs, 1):
        p50 = f"{np.median(e.decision_ms):.1f}" if e.decision_ms else "-"
        acc = f"{e.emitted / e.target_passes:.2f}" if e.target_passes else "-"
        halts = ", ".join(f"{k} x{v}" for k, v in sorted(e.halts.items())) or "none"
        rows.append(f"| {i} | {e.task} | {e.instruction} | {'yes' if e.success else 'no'} | "
                    f"{'yes' if e.collision else 'no'} | {e.steps} | {p50} | {acc} | {halts} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="specvla_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=3, help="episodes, cycling reach/push/pick")
    p.add_argument("--out", default="out/demo", help="directory for demo.gif and table.md")
    p.add_argument("--mode", default="greedy", choices=("greedy", "relaxed", "sample"), help="decode accept rule")
    p.add_argument("--target", default=None, help="target checkpoint dir (default: the shipped model)")
    p.add_argument("--draft", default=None, help="draft checkpoint dir (default: shipped; '' = no speculation)")
    p.add_argument("--episode-timeout", type=float, default=240.0, help="wall seconds per episode at most")
    args = p.parse_args(argv)
    if args.episodes < 1:
        print("specvla_demo: --episodes must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    node: dict = {"decode": {"mode": args.mode}}
    if args.target:
        node["target_dir"] = str(Path(args.target).resolve())
    if args.draft is not None:
        node["draft_dir"] = str(Path(args.draft).resolve()) if args.draft else ""
    logs: list[EpisodeLog] = []
    print("demo: starting specvla_sim + specvla_node; waiting for the node to load its models...", flush=True)
    try:
        with SimGraph(out, node=node, record_frames=True) as graph:
            for i in range(args.episodes):
                task = TASK_CYCLE[i % len(TASK_CYCLE)]
                seed = DEMO_SEED_BASE + i
                log = graph.run_episode(task, seed, args.episode_timeout)
                logs.append(log)
                print(f"demo: episode {i + 1}: {task} seed {seed}: {'success' if log.success else 'no success'}"
                      f" in {log.steps} steps; '{log.instruction}'", flush=True)
            frames = list(graph.frames)
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    table = format_table(logs)
    print(table)
    all_ms = [x for e in logs for x in e.decision_ms]
    passes = sum(e.target_passes for e in logs)
    summary = (f"success {sum(e.success for e in logs)}/{len(logs)}, collisions {sum(e.collision for e in logs)}, "
               f"decision latency p50 {np.median(all_ms) if all_ms else float('nan'):.1f} ms "
               f"p95 {np.percentile(all_ms, 95) if all_ms else float('nan'):.1f} ms, "
               f"accepted length {sum(e.emitted for e in logs) / passes if passes else float('nan'):.2f} tokens/pass")
    print(summary)
    (out / "table.md").write_text(table + "\n\n" + summary + "\n")
    if frames:
        import imageio.v2 as imageio

        frames = frames[:: max(1, len(frames) // 300)]
        imageio.mimsave(out / "demo.gif", frames, duration=0.2, loop=0)
        print(f"demo: wrote {out / 'demo.gif'} ({len(frames)} frames) and {out / 'table.md'}")
    return 0 if logs else 1


if __name__ == "__main__":
    sys.exit(main())
