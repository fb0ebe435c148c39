"""What the distributed tests run in spawned gloo ranks (a module the spawned processes can import)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from densemtl.data.synthetic import synthetic
from densemtl.distributed import Comm
from densemtl.engine import Engine
from densemtl.models.base import MultiTaskModel
from densemtl.models.sync_bn import convert_sync_bn
from densemtl.training.builders import build_method

TASKS = ("seg", "depth", "normal")
SIZE = (16, 16)


class Small(MultiTaskModel):
    """A smooth conv trunk (the representation; batch norm optional) and a head per task: no max
    pooling or ReLU, whose ties would turn rounding differences into different routes."""

    def __init__(self, bn: bool) -> None:
        super().__init__({"seg": 7, "depth": 1, "normal": 3})
        norm: list[nn.Module] = [nn.BatchNorm2d(8)] if bn else []
        first = nn.Conv2d(3, 8, 3, padding=1, bias=not bn)  # a bias before batch norm has no gradient
        self.trunk = nn.Sequential(first, *norm, nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Conv2d(8, c, 1) for t, c in self.task_channels.items()})

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: head(rep) for t, head in self.heads.items()}


def global_batch(n: int = 8, seed: int = 0) -> dict[str, Tensor]:
    ds = synthetic("train", size=SIZE, n=n, seed=seed)
    samples = [ds[i] for i in range(n)]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def shard(batch: dict[str, Tensor], comm: Comm, sizes: list[int] | None = None) -> dict[str, Tensor]:
    """Rank ``comm.rank``'s contiguous part of ``batch`` (equal parts, or ``sizes``)."""
    n = len(batch["image"])
    parts = torch.arange(n).tensor_split(comm.world_size) if sizes is None else torch.arange(n).split(sizes)
    return {k: v[parts[comm.rank]] for k, v in batch.items()}


def train_steps(
    comm: Comm,
    method: str,
    mode: str | None,
    steps: int = 3,
    sizes: list[int] | None = None,
    bn: bool = False,
    lr: float = 0.05,
) -> dict[str, Any]:
    """``steps`` plain-SGD steps of :class:`Small` under ``method`` on one global batch, sharded
    (``sizes`` per rank, or equal parts); the parameters, the weights of each step, and the bytes
    this rank communicated. SGD, because its update is linear in the gradient (Adam's first steps
    are lr·sign(g), which turns rounding differences of near-zero gradients into 2·lr)."""
    torch.manual_seed(0)
    model: nn.Module = Small(bn)
    if bn and comm.active:
        model = convert_sync_bn(model, torch.device("cpu"))
    assert isinstance(model, MultiTaskModel)
    balancer = build_method(method, len(TASKS), 0, {})
    engine = Engine(model, balancer, TASKS, mode=mode, comm=comm)
    optimizer = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=lr)
    batch = shard(global_batch(), comm, sizes)
    weights = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        comm.set_batch(len(batch["image"]))
        result = engine.step(batch)
        optimizer.step()
        engine.after_step(batch)
        weights.append(result.weights.clone())
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "weights": torch.stack(weights) if weights else torch.zeros(0),
        "sent": comm.sent_bytes,
    }


def train_runs(comm: Comm, methods: list[str], root: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train each method for 2 tiny epochs with the :class:`~densemtl.training.trainer.Trainer`
    into ROOT/METHOD; rank 0's summaries (other ranks': what they return)."""
    import densemtl.training.trainer as trainer_module
    from densemtl.balancing import METHODS
    from densemtl.training.config import resolve_config

    out: dict[str, Any] = {}
    for method in methods:
        values = {
            "method": method, "method_args": METHODS.tiny(method), "size": (32, 32), "n_train": 8, "n_val": 4,
            "batch_size": 4, "epochs": 2, "arch_args": {"width": 0.125, "depth_stages": 3}, "diagnostics_every": 0,
            **(extra or {}),
        }  # fmt: skip
        cfg = resolve_config(values)
        with no_plots():
            out[method] = trainer_module.Trainer(cfg, f"{root}/{method}", progress=False, comm=comm).run()
    return out


def run_config(comm: Comm, values: dict[str, Any], out: str, resume: bool = False) -> dict[str, Any]:
    """One tiny run of ``values`` (over the tiny defaults) into ``out``, as ``densemtl train`` would."""
    import densemtl.training.trainer as trainer_module
    from densemtl.training.config import resolve_config, resume_config

    tiny = {"size": (32, 32), "n_train": 12, "n_val": 4, "batch_size": 4, "diagnostics_every": 0}
    tiny["arch_args"] = {"width": 0.125, "depth_stages": 3}
    cfg = resume_config(out, values) if resume else resolve_config({**tiny, **values})
    with no_plots():
        return trainer_module.Trainer(cfg, out, resume=resume, progress=False, comm=comm).run()


@contextlib.contextmanager
def no_plots() -> Iterator[None]:
    """No figures at the end of a run (they decide nothing here), restored afterwards: these
    functions also run in the test process itself."""
    import densemtl.training.trainer as trainer_module

    names = ("plot_run", "plot_diagnostics", "save_panel")
    saved = {name: getattr(trainer_module, name) for name in names}
    for name in names:
        setattr(trainer_module, name, lambda *a, **k: None)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(trainer_module, name, fn)


def diverge(comm: Comm) -> None:
    """Rank 1 nudges one parameter: :func:`check_in_sync` must stop every rank."""
    from types import SimpleNamespace

    from densemtl.training.ranks import check_in_sync

    torch.manual_seed(0)
    model = Small(bn=False)
    if comm.rank == 1:
        with torch.no_grad():
            model.heads["depth"].bias.add_(1e-7)
    member = SimpleNamespace(name="", model=model, method=build_method("famo", len(TASKS), 0, {}))
    check_in_sync(comm, [member], "the end of epoch 3")  # type: ignore[list-item]
