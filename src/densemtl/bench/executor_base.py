"""What every executor of a bench is (:class:`Executor`), and the import of a remote one's package.

The executors themselves are in :mod:`densemtl.bench.executors` (this machine) and
:mod:`densemtl.bench.remote` (Ray, Slurm); :func:`~densemtl.bench.executors.make_executor`
chooses one.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from densemtl.errors import ConfigError

if TYPE_CHECKING:  # not at run time: the CLI reads this module's names while it builds its parser
    from densemtl.bench.grid import Job

#: The package each remote executor needs, and the extra of densemtl that installs it.
NEEDS = {"ray": ("ray", "Ray", "ray"), "slurm": ("submitit", "submitit", "slurm")}
#: Minutes a Slurm job may run unless ``--slurm-time-min`` says otherwise.
SLURM_TIME_MIN = 24 * 60

OnDone = Callable[["Job", dict[str, Any], float], None]
Log = Callable[[str], None]


def require(executor: str) -> Any:
    """Import the package that ``executor`` needs; missing, a one-line :class:`ConfigError` that
    says how to install it."""
    module, name, extra = NEEDS[executor]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"densemtl bench --executor {executor} needs {name}: pip install 'densemtl[{extra}]'"
        ) from None


# -- executors ----------------------------------------------------------------------------------
class Executor(ABC):
    """Runs a bench's jobs; :meth:`run` is called inside ``with executor:``."""

    name = ""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self) -> str:
        """Where the jobs run, for the bench's first log line."""
        return self.name

    @abstractmethod
    def run(self, jobs: list[Job], on_done: OnDone, log: Log) -> None:
        """Run ``jobs``, calling ``on_done(job, summary, seconds)`` here as each finishes."""
