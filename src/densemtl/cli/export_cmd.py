"""``densemtl export``: a checkpoint's model weights as safetensors, for sharing.

The file holds tensors only (nothing in it can run code when loaded) and, as metadata, the
config, tasks, classes, size, architecture and epoch: ``densemtl eval`` and ``densemtl predict``
take it as ``--checkpoint``.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model weights as a .safetensors file")
    p.add_argument("--checkpoint", required=True, metavar="RUN_OR_FILE", help="checkpoint file or run directory")
    p.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write (never overwritten)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from densemtl.errors import ConfigError
    from densemtl.training.builders import model_from_state
    from densemtl.training.checkpoint import export_safetensors, load_checkpoint, resolve_checkpoint

    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} already exists; refusing to overwrite it (remove it or choose another path)")
    source = resolve_checkpoint(args.checkpoint)
    state = load_checkpoint(source)
    model_from_state(state, source)  # what eval and predict will do with the file: check it now
    export_safetensors(state, out)
    n = sum(v.numel() for v in state["model"].values())
    print(
        f"densemtl: wrote {out} ({state['config'].get('arch')}, {', '.join(state['tasks'])}, "
        f"epoch {state['epoch']}, {n / 1e6:.2f} M values) from {source}"
    )
    return 0
