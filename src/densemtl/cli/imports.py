"""The plugin modules a command imports, read from the files it is given, and the user's consent.

A module that a *file* names (``imports:`` of ``--config`` and ``--grid``, of the run that
``train --resume`` continues, of a bench folder, of a checkpoint's config) is imported only when
the command line allows it: ``--import MODULE`` naming it, or ``--trust-imports``
(:func:`consent`); otherwise the command refuses in one line naming the file and the modules. The
files are read here, without building or importing anything; :mod:`densemtl.plugins` imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from densemtl.plugins import allowed, grant, refusal


def _unique(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def yaml_imports(path: str | Path) -> list[str]:
    """The ``imports`` of a config or grid file (``[]`` if it has none); a bad file: ConfigError."""
    from densemtl.training.config import load_yaml, parse_imports

    value = load_yaml(path).get("imports")
    return [] if value is None else parse_imports(value, f"{path}: imports")


def checkpoint_imports(path: str | Path) -> list[tuple[str, list[str]]]:
    """The imports recorded with a checkpoint (a run directory, a ``.pt`` or an exported
    ``.safetensors``), read without building or importing anything, as (the file, its modules):
    the run's ``config.yaml`` and the checkpoint file itself. A file that cannot be read is left
    out (the command that loads it then says what is wrong with it)."""
    from densemtl.training.checkpoint import resolve_checkpoint
    from densemtl.training.config import parse_imports

    p = Path(path)
    out: list[tuple[str, list[str]]] = []
    run = p if p.is_dir() else (p.parent.parent if p.parent.name == "checkpoints" else None)
    if run is not None and (run / "config.yaml").is_file():
        out.append((str(run / "config.yaml"), _quietly(lambda: yaml_imports(run / "config.yaml"))))
    try:
        file = resolve_checkpoint(p)
    except Exception:  # noqa: BLE001 - a missing or odd path: the loader says why
        return [(f, names) for f, names in out if names]
    reader = _safetensors_config if file.suffix == ".safetensors" else _pt_config
    out.append((str(file), _quietly(lambda: parse_imports(reader(file).get("imports") or [], f"{file}: imports"))))
    return [(f, names) for f, names in out if names]


def _quietly(read: Callable[[], list[str]]) -> list[str]:
    try:
        return read()
    except Exception:  # noqa: BLE001 - any unreadable file (SafetensorError, UnpicklingError, ...): the loader says why
        return []


def _safetensors_config(p: Path) -> dict[str, Any]:
    import json

    from safetensors import safe_open

    with safe_open(str(p), framework="pt", device="cpu") as f:
        return dict(json.loads((f.metadata() or {}).get("config", "{}")))


def _pt_config(p: Path) -> dict[str, Any]:
    import torch

    state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    return dict(state.get("config") or {}) if isinstance(state, dict) else {}


def file_imports(args: Any) -> list[tuple[str, list[str], str]]:
    """The modules each file a parsed command reads names, as (the file, its modules, why): the
    ``imports`` of ``--config`` and ``--grid``, of the run of ``train --resume``, of the bench
    continued in ``bench --out``, and of the checkpoint of ``eval``/``predict``/``export``."""
    found: list[tuple[str, list[str], str]] = []
    for attr in ("config", "grid"):
        path = getattr(args, attr, None)
        if isinstance(path, str) and Path(path).is_file():
            found.append((f"--{attr} {path}", yaml_imports(path), "its imports:"))
    out = getattr(args, "out", None)
    if getattr(args, "resume", False) and out and (Path(out) / "config.yaml").is_file():
        found.append((str(Path(out) / "config.yaml"), yaml_imports(Path(out) / "config.yaml"), "the run used them"))
    if getattr(args, "command", None) == "bench" and out and (Path(out) / "bench.yaml").is_file():
        found.append((str(Path(out) / "bench.yaml"), _bench_imports(Path(out) / "bench.yaml"), "the bench used them"))
    checkpoint = getattr(args, "checkpoint", None)
    if isinstance(checkpoint, str):
        found += [(f, names, "the run was trained with them") for f, names in checkpoint_imports(checkpoint)]
    return [(f, names, why) for f, names, why in found if names]


def _bench_imports(path: Path) -> list[str]:
    """The ``imports`` of a bench folder's ``bench.yaml`` (its shared ``base`` settings)."""
    from densemtl.training.config import load_yaml, parse_imports

    base = _quietly(lambda: [load_yaml(path).get("base")])  # type: ignore[list-item]
    value = base[0].get("imports") if base and isinstance(base[0], dict) else None
    return _quietly(lambda: parse_imports(value, f"{path}: imports")) if value else []


def command_imports(args: Any) -> list[str]:
    """Every module a parsed command imports: the files' ``imports`` (:func:`file_imports`), then
    ``--import``."""
    names = [n for _, mods, _ in file_imports(args) for n in mods]
    return _unique([*names, *(getattr(args, "imports", None) or [])])


def consent(args: Any) -> list[str]:
    """The modules a parsed command may import, in order (the files', then ``--import``'s); a module
    a file names that neither ``--import`` nor ``--trust-imports`` allows is refused in one line
    naming the file. From here until :func:`densemtl.plugins.end_command`, a config naming a module
    not allowed is refused too (:func:`densemtl.plugins.config_imports`), wherever it was read."""
    given = [str(n).strip() for n in (getattr(args, "imports", None) or [])]
    trust = bool(getattr(args, "trust_imports", False))
    names: list[str] = []
    for where, mods, why in file_imports(args):
        missing = [m for m in mods if m not in given and not allowed(m)]
        if missing and not trust:
            raise refusal(where, missing, why)
        names += mods
    grant([*names, *given], trust=trust)
    return _unique([*names, *given])
