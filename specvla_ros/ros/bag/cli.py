"""`specvla_bag record|play|info`: rosbag2 tools shaped like `ros2 bag`.

    specvla_bag info BAG [--json]
    specvla_bag play BAG [-r RATE] [-l] [--start-offset S] [--topics T ...]
                         [--remap FROM:=TO ...] [--qos TOPIC:=PRESET ...] [--clock [HZ]]
    specvla_bag record [-o OUT] [-s mcap|sqlite3] (TOPIC ... | --node-io | -a)
                       [--duration S] [--max-messages N] [--use-sim-time]
    specvla_bag regress INPUT_BAG --golden GOLDEN [--update] [--report R.json] [--models M]

Errors (missing or corrupt bags, bad options) print one line on stderr and
exit with status 1; argparse usage errors exit with 2.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from specvla_ros.ros.bag.io import NODE_IO_TOPICS, BagError, bag_info, format_info
from specvla_ros.ros.bag.player import BagPlayer, PlayConfig
from specvla_ros.ros.bag.qos import parse_mapping, use_shm_profile
from specvla_ros.ros.bag.recorder import BagRecorder, RecordConfig

PROG = "specvla_bag"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Record, play and inspect rosbag2 bags (MCAP or sqlite3).")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="topics, types, counts, duration, storage and size of a bag")
    info.add_argument("bag", help="bag directory (or a single .mcap/.db3 file)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")

    play = sub.add_parser("play", help="publish a bag's messages")
    play.add_argument("bag")
    play.add_argument("-r", "--rate", type=float, default=1.0, help="speed factor (default 1.0: original timing)")
    play.add_argument("-l", "--loop", action="store_true", help="play again and again until interrupted")
    play.add_argument("--loops", type=int, default=1, help="play this many times (default 1)")
    play.add_argument("--start-offset", type=float, default=0.0, help="skip this many seconds of the bag [s]")
    play.add_argument("--topics", nargs="+", default=[], help="play only these topics")
    play.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="publish FROM on TO")
    play.add_argument(
        "--qos",
        nargs="+",
        default=[],
        metavar="TOPIC:=PRESET",
        help="QoS per topic: sensor_data, reliable, latched or system_default "
        "(defaults: sensor_data for images, latched for */instruction, else reliable)",
    )
    play.add_argument(
        "--clock", nargs="?", type=float, const=40.0, default=0.0, metavar="HZ",
        help="publish /clock from the bag's time (default 40 Hz when given) for use_sim_time nodes",
    )
    play.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                      help="wait until every topic has N subscribers before playing")
    play.add_argument("--subscriber-timeout", type=float, default=10.0, help="max wait for subscribers [s]")
    play.add_argument("--max-bandwidth", type=float, default=200.0,
                      help="pace publishing to at most this many MB/s (0 = unpaced; default 200)")
    play.add_argument("--no-shm", action="store_true", help="do not load the shipped Fast DDS shared-memory profile")

    rec = sub.add_parser("record", help="record topics into a new bag")
    rec.add_argument("topics", nargs="*", help="topics to record")
    rec.add_argument("-o", "--output", default=None, help="bag directory to create (default rosbag2_<date>)")
    rec.add_argument("-s", "--storage", choices=("mcap", "sqlite3"), default="mcap")
    rec.add_argument("-a", "--all", action="store_true", help="record every topic")
    rec.add_argument("--node-io", action="store_true", help="record the policy node's inputs and outputs")
    rec.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    rec.add_argument("--max-messages", type=int, default=0, help="stop after this many messages (0 = no limit)")
    rec.add_argument("--use-sim-time", action="store_true", help="stamp messages with /clock time")
    rec.add_argument("--qos", nargs="+", default=[], metavar="TOPIC:=PRESET", help="subscription QoS per topic")
    rec.add_argument("--no-shm", action="store_true", help="do not load the shipped Fast DDS shared-memory profile")

    from specvla_ros.ros.bag.regression import add_arguments

    reg = sub.add_parser("regress", help="replay an input bag through the policy node and compare with a golden bag "
                         "(exit 1 on differences, 2 on errors)")
    add_arguments(reg)
    return parser


def _one_line_warnings(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                       file: object = None, line: str | None = None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _cmd_info(args: argparse.Namespace) -> int:
    summary = bag_info(args.bag)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_info(summary))
    return 0


def _start_ros(no_shm: bool, node_name: str, use_sim_time: bool = False) -> tuple[Any, Any]:
    """(context, node) in a private rclpy context (the CLI can run inside other programs' processes)."""
    if not no_shm:
        use_shm_profile()
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    # We handle Ctrl-C ourselves so the bag is always closed properly. Our own
    # argv is not handed to rclpy: it would read `--remap a:=b` as a ROS remap rule.
    rclpy.init(args=[PROG], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(
        node_name, context=context, parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)]
    )
    return context, node


def _cmd_play(args: argparse.Namespace) -> int:
    config = PlayConfig(
        rate=args.rate,
        start_offset_s=args.start_offset,
        topics=tuple(args.topics),
        remap=parse_mapping(args.remap, "remap"),
        qos=parse_mapping(args.qos, "QoS override"),
        clock_hz=args.clock,
        wait_for_subscribers=args.wait_for_subscribers,
        subscriber_timeout_s=args.subscriber_timeout,
        max_bytes_per_s=args.max_bandwidth * 1e6,
        loops=args.loops,
        loop_forever=args.loop,
    )
    bag_info(args.bag)  # fail on a bad bag before ROS starts
    context, node = _start_ros(args.no_shm, "specvla_bag_player")
    player = None
    try:
        player = BagPlayer(node, args.bag, config)
        try:
            stats = player.play()
        except KeyboardInterrupt:
            player.stop()
            stats = player.stats
        timing = stats.timing_summary()
        print(
            f"played {stats.total} messages in {stats.wall_time_s:.2f} s ({stats.loops_done} loop(s)); "
            f"lateness median {timing['median_ms']:.2f} ms, p95 {timing['p95_ms']:.2f} ms, max {timing['max_ms']:.2f} ms"
        )
        for topic, count in sorted(stats.published.items()):
            print(f"  {topic}: {count}")
        return 0
    finally:
        if player is not None:
            player.destroy()
        node.destroy_node()
        context.try_shutdown()


def _cmd_record(args: argparse.Namespace) -> int:
    topics = tuple(args.topics) + (NODE_IO_TOPICS if args.node_io else ())
    output = Path(args.output or time.strftime("rosbag2_%Y_%m_%d-%H_%M_%S"))
    config = RecordConfig(
        output=output,
        storage=args.storage,
        topics=tuple(dict.fromkeys(topics)),
        all_topics=args.all,
        max_messages=args.max_messages,
        qos=parse_mapping(args.qos, "QoS override"),
    )
    if args.duration < 0:
        raise ValueError(f"duration must be >= 0, got {args.duration}")
    context, node = _start_ros(args.no_shm, "specvla_bag_recorder", use_sim_time=args.use_sim_time)
    from rclpy.executors import SingleThreadedExecutor

    stop = threading.Event()

    def _request_stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    # Explicit handlers that only set a flag: a recorder started in the background by a
    # shell inherits an ignored SIGINT, and Ctrl-C / kill must still close the bag, at
    # whatever point they arrive.
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    recorder = None
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    try:
        recorder = BagRecorder(node, config)
        print(f"recording to {output} ({args.storage}); Ctrl-C to stop", file=sys.stderr)
        while not (stop.is_set() or recorder.done.is_set()) and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
    finally:
        if recorder is not None:
            recorder.close()
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for topic, count in sorted(recorder.counts.items()):
        print(f"  {topic}: {count}")
    missing = sorted(set(config.topics) - set(recorder.counts) - set(recorder.skipped))
    if missing:
        print(f"{PROG}: warning: never saw: {', '.join(missing)}", file=sys.stderr)
    print(f"wrote {output}")
    return 0


def _cmd_regress(args: argparse.Namespace) -> int:
    from specvla_ros.ros.bag.regression import run_cli

    return run_cli(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    previous_showwarning, warnings.showwarning = warnings.showwarning, _one_line_warnings
    handlers = {"info": _cmd_info, "play": _cmd_play, "record": _cmd_record, "regress": _cmd_regress}
    try:
        return handlers[args.command](args)
    except (BagError, ValueError, FileNotFoundError, TimeoutError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        # regress keeps 1 for "outputs differ"
        return 2 if args.command == "regress" else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `specvla_bag info BAG | head`: the reader left, nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — keeps the interpreter's final flush quiet
        return 0
    finally:
        warnings.showwarning = previous_showwarning


if __name__ == "__main__":
    sys.exit(main())
