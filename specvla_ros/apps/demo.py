"""The main job (`make demo`): the simulated Panda driven by specvla_node.

Starts the same graph as ``launch/sim.launch.py`` (``specvla_sim`` + ``specvla_node``
with the shipped models and ``config/specvla.yaml``) as processes; an observer
node resets the simulator for a few episodes, watches the topics a user would
watch, prints a table and writes a GIF of the camera view with the narration
overlaid.

    python -m specvla_ros.apps.demo --episodes 3 --out out/demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from specvla_ros.apps.graph_runner import EpisodeLog, SimGraph

TASK_CYCLE = ("reach", "push", "pick")
DEMO_SEED_BASE = 2_000_000  # layouts not used for training


def format_table(logs: list[EpisodeLog]) -> str:
    rows = ["| # | task | instruction | success | collision | steps | decision p50 ms | accepted length | halts |",
            "|---|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(logs, 1):
        p50 = f"{np.median(e.decision_ms):.1f}" if e.decision_ms else "-"
        acc = f"{e.emitted / e.target_passes:.2f}" if e.target_passes else "-"
        halts = ", ".join(f"{k} x{v}" for k, v in sorted(e.halts.items())) or "none"
        result = "yes" if e.success else f"no: {e.progress}" if e.progress else "no"
        rows.append(f"| {i} | {e.task} | {e.instruction} | {result} | "
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
                result = "success" if log.success else f"no success ({log.progress})"
                print(f"demo: episode {i + 1}: {task} seed {seed}: {result}"
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
        print(f"demo: wrote {write_gif(frames, out / 'demo.gif', _camera_rate())} and {out / 'table.md'}")
    return 0 if logs else 1


def _camera_rate() -> float:
    """The simulated camera's rate in sim time [Hz] (specvla_sim's parameter in the shipped YAML)."""
    from specvla_ros.ros.params import default_config_path, load_node_params

    return float(load_node_params(default_config_path(), "specvla_sim")["camera_rate"])


def write_gif(frames: list[np.ndarray], path: Path, camera_rate: float, max_frames: int = 300) -> str:
    """Frames as a GIF that plays at the robot's speed; returns what was written, with the true counts.

    Pillow stores identical neighbouring frames once with their durations added, so a stall
    still lasts as long as it did (the count after merging is reported too).
    """
    from PIL import Image

    step = max(1, -(-len(frames) // max_frames))
    kept = frames[::step]
    ms = int(round(1000.0 * step / camera_rate))
    images = [Image.fromarray(f) for f in kept]
    images[0].save(path, save_all=True, append_images=images[1:], duration=ms, loop=0, optimize=False)
    with Image.open(path) as gif:
        stored = gif.n_frames
    every = f", 1 in {step} camera frames" if step > 1 else ""
    return (f"{path} ({len(kept)} frames of {ms} ms{every}: {len(kept) * ms / 1000:.1f} s at robot speed; "
            f"{stored} stored after merging identical neighbours)")


if __name__ == "__main__":
    sys.exit(main())
