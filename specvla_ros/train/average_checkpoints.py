"""Average the weights of target checkpoints fine-tuned from one another (a "model soup").

Runs of one chain share an architecture and start from each other's weights, so their
average is a model in the same basin; on our task suite the average of two consecutive
DAgger runs scored 80 % where each run alone scored 75 % (see the target's model card). Every tensor is averaged
in float32 and stored in the first checkpoint's dtype; the tokenizer, config and the
action normalisation statistics come from the last checkpoint (each run recomputes the
q01/q99 bounds from its data; consecutive runs differ by well under one bin).

    python -m specvla_ros.train.average_checkpoints --out DIR CKPT [CKPT ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def average_checkpoints(ckpts: list[Path], out: Path) -> Path:
    """Write the weight average of ``ckpts`` (same config) to ``out``; returns ``out``."""
    if len(ckpts) < 2:
        raise ValueError(f"need at least two checkpoints to average, got {len(ckpts)}")
    configs = []
    for c in ckpts:
        if not (c / WEIGHTS).is_file() or not (c / "config.json").is_file():
            raise ValueError(f"{c}: not a checkpoint directory (needs config.json and {WEIGHTS})")
        configs.append(json.loads((c / "config.json").read_text()))
    if any(cfg != configs[0] for cfg in configs[1:]):
        raise ValueError("checkpoints differ in config.json: only runs of one architecture can be averaged")
    states = [load_file(str(c / WEIGHTS)) for c in ckpts]
    keys = set(states[0])
    for c, s in zip(ckpts[1:], states[1:]):
        if set(s) != keys:
            raise ValueError(f"{c}: tensor names differ from {ckpts[0]}")
    averaged = {}
    for k, t in states[0].items():
        if t.is_floating_point():
            mean = torch.stack([s[k].float() for s in states]).mean(0)
            averaged[k] = mean.to(t.dtype).contiguous()
        elif any(not torch.equal(s[k], t) for s in states[1:]):
            raise ValueError(f"integer tensor {k!r} differs between checkpoints")
        else:
            averaged[k] = t
    with safe_open(str(ckpts[0] / WEIGHTS), "pt") as f:
        metadata = f.metadata() or {}
    out.mkdir(parents=True, exist_ok=True)
    for f in ckpts[-1].iterdir():
        if f.is_file() and f.name != WEIGHTS and f.suffix == ".json":
            shutil.copy2(f, out / f.name)
    save_file(averaged, str(out / WEIGHTS), metadata=metadata)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpts", nargs="+", type=Path, help="checkpoint directories of one chain")
    p.add_argument("--out", type=Path, required=True, help="directory for the averaged checkpoint")
    args = p.parse_args(argv)
    try:
        average_checkpoints(args.ckpts, args.out)
    except ValueError as exc:
        raise SystemExit(f"average_checkpoints: {exc}") from exc
    print(f"wrote {args.out} (average of {len(args.ckpts)} checkpoints)")


if __name__ == "__main__":
    main()
