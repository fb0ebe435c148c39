"""Entry point: ``densemtl {train,eval,predict,data,list,speed,bench,export}`` and ``densemtl --version``.

User mistakes (``DenseMTLError``) are printed as one line, ``densemtl: error: ...``, with exit
status 2; nothing is written or overwritten when a command refuses. An exception raised inside a
user's module (a plugin) is the plugin's: one line naming it, its file and line. With
``DENSEMTL_TRACEBACK=1`` in the environment every such line is preceded by the full traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from densemtl.errors import DenseMTLError


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with one line (no usage dump), and no abbreviated flags
    (``bench --seed 3`` must not silently mean ``--seeds 3``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        from densemtl.launch import leave_it_to_rank_0, speaks

        if not speaks():  # under torchrun, rank 0 alone: every rank parses the same flags
            leave_it_to_rank_0()
            raise SystemExit(2)
        sys.stderr.write(f"densemtl: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from densemtl import __version__
    from densemtl.cli import bench_cmd, data_cmd, export_cmd, inspect_cmd, list_cmd, speed_cmd, train_cmd
    from densemtl.plugins import add_import_flag

    parser = Parser(
        prog="densemtl",
        description="Multi-task dense scene understanding: segmentation, depth and normals, with task balancing.",
        epilog="Plugins: --import MODULE on the commands that build models, or the 'densemtl.plugins' entry-point "
        "group (docs/plugins.md).",
    )
    parser.add_argument("--version", action="version", version=f"densemtl {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    train_cmd.add_parser(sub)
    inspect_cmd.add_parsers(sub)
    data_cmd.add_parser(sub)
    list_cmd.add_parser(sub)
    speed_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    for name in PLUGIN_COMMANDS:
        add_import_flag(sub.choices[name])
    return parser


#: The flags that name a place a command writes (every command's, whichever it has).
OUTPUT_FLAGS = ("out", "json")

#: The commands that look up registered names, and so take ``--import MODULE`` (plugins).
PLUGIN_COMMANDS = ("train", "eval", "predict", "export", "bench", "speed", "list")


def help_imports(argv: Sequence[str]) -> list[str]:
    """The modules ``--import`` names on a command line that asks for ``--help`` (the help lists
    their architectures, methods, tasks and datasets, so they are imported first; the command line
    itself is the consent); [] when it does not ask for help."""
    if not any(a in ("-h", "--help") for a in argv):
        return []
    names: list[str] = []
    for i, a in enumerate(argv):
        if a == "--import" and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif a.startswith("--import="):
            names.append(a.partition("=")[2])
    return names


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    shown = help_imports(argv)
    if shown:
        from densemtl import plugins

        try:
            plugins.load_plugins(shown)
        except DenseMTLError as e:
            return report(e)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from densemtl import plugins

    try:
        from densemtl.cli.imports import consent
        from densemtl.paths import refuse_empty

        for key in OUTPUT_FLAGS:  # --out '' would be the current folder: refused before anything
            refuse_empty(getattr(args, key, None), f"--{key}")
        # the files' imports: only with --import / --trust-imports (refused in one line otherwise)
        plugins.load_plugins(consent(args))  # entry points, then those; before any lookup
        plugins.load_pending()  # a parent command's $DENSEMTL_IMPORTS (a bad one: one line)
        plugins.export_to_children()  # bench and speed workers import them too (densemtl.plugins.load_pending)
        from densemtl.report.progress import progress_every

        progress_every()  # a bad $DENSEMTL_PROGRESS_EVERY is refused before any work
        return int(args.func(args) or 0)
    except DenseMTLError as e:
        return report(e)
    except OSError as e:  # a write or read the commands did not anticipate: still one line, exit 1
        where = f"{e.filename}: " if e.filename else ""
        show_cause(e)
        sys.stderr.write(f"densemtl: error: {one_line(where + str(e.strerror or e))}\n")
        return 1
    except MemoryError as e:
        show_cause(e)
        sys.stderr.write("densemtl: error: out of memory; use a smaller --size or --batch-size\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("densemtl: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - out of memory on the accelerator, or a plugin's bug; else re-raised
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(e, torch.cuda.OutOfMemoryError):
            show_cause(e)
            sys.stderr.write("densemtl: error: out of GPU memory; use a smaller --size or --batch-size\n")
            return 1
        from densemtl.plugin_faults import plugin_fault

        fault = plugin_fault(e, plugins.loaded())  # raised inside a user's module: one line naming its file and line
        if fault is None:
            raise  # densemtl's own bug: its traceback
        return report(fault)
    finally:
        plugins.end_command()


def report(e: DenseMTLError) -> int:
    """Print ``e`` as one line (its traceback first with ``DENSEMTL_TRACEBACK=1``); its exit status."""
    from densemtl.launch import leave_it_to_rank_0, speaks

    if not speaks():  # before the ranks join, rank 0 speaks for all: they found the same mistake
        leave_it_to_rank_0()
    elif not getattr(e, "quiet", False):  # quiet: a copy, on another rank, of rank 0's error
        show_cause(e)
        sys.stderr.write(f"densemtl: error: {one_line(str(e))}\n")
    return e.exit_code


def show_cause(e: BaseException) -> None:
    """With ``DENSEMTL_TRACEBACK=1``: the full traceback behind the one line ``e`` prints: that of
    the user's code (a plugin) that raised, when ``e`` carries it as ``cause``, else ``e``'s own."""
    import os

    from densemtl.plugin_faults import TRACEBACK_ENV

    if os.environ.get(TRACEBACK_ENV, "").strip() in ("", "0"):
        return
    import traceback

    cause = getattr(e, "cause", None)
    shown = cause if isinstance(cause, BaseException) else e
    traceback.print_exception(type(shown), shown, shown.__traceback__, file=sys.stderr)


def one_line(message: str) -> str:
    """``message`` on one line: a line break inside it (a file name holding one) written as ``\\n``."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


if __name__ == "__main__":
    raise SystemExit(main())
