"""What the training CPU can do fast.

bfloat16 autocast is several times faster than float32 on CPUs that compute bfloat16 natively
(AVX512-BF16, AMX) and tens of times slower on those that do not (AVX2 laptops and many cloud
cores emulate it), so the trainers use it only where it is native unless told otherwise.
"""
from __future__ import annotations

import argparse
from pathlib import Path

#: /proc/cpuinfo flags of native bfloat16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU (``/proc/cpuinfo``, or the given text) lists a native bfloat16 flag."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[-1].split()}
    return any(f in flags for f in BF16_FLAGS)


def add_bf16_arguments(p: argparse.ArgumentParser) -> None:
    """The trainers' ``--bf16 auto|on|off`` (and the older ``--no-bf16``); read with ``bf16_from_args``."""
    p.add_argument("--bf16", default="auto", choices=("auto", "on", "off"),
                   help="bfloat16 autocast: auto = only on CPUs with native bfloat16 (AVX512-BF16/AMX; elsewhere it "
                        "is emulated and far slower than float32)")
    p.add_argument("--no-bf16", action="store_true", help="same as --bf16 off")


def bf16_from_args(a: argparse.Namespace) -> bool:
    """Whether to autocast, from the arguments ``add_bf16_arguments`` declared."""
    return resolve_bf16("off" if a.no_bf16 else a.bf16)


def resolve_bf16(choice: str) -> bool:
    """``--bf16`` choice -> whether to autocast: "on", "off", or "auto" (native only)."""
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be auto, on or off, got {choice!r}")
    return native_bf16() if choice == "auto" else choice == "on"
