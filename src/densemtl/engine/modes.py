"""Which ``--grad-mode`` a method runs in, read from its requirements alone.

Modes, cheapest first:
- ``loss``: loss weightings; one backward of the combined scalar.
- ``representation``: per-task gradients with respect to the shared representation.
- ``gramian``: G = J Jᵀ without assembling J, for methods of the form c(G) @ J.
- ``parameters``: the Jacobian J of the shared parameters, by T backward passes.

Each mode may also be named by the gradient source it computes (``Requirements.sources``):
``losses`` is ``loss``, and ``jacobian`` (J whole) and ``rows`` (J one row at a time) are
``parameters`` (:data:`MODE_ALIASES`), so ``--grad-mode jacobian`` is ``--grad-mode parameters``.
"""

from __future__ import annotations

from densemtl.balancing.base import MODE_OF, BalancingMethod
from densemtl.engine.strategies import STRATEGIES
from densemtl.errors import ConfigError

MODES: tuple[str, ...] = tuple(STRATEGIES)
#: a gradient source's name -> the mode that computes it, where the two names differ
MODE_ALIASES: dict[str, str] = {s: m for s, m in MODE_OF.items() if s != m}


def canonical_mode(mode: str) -> str:
    """The mode ``mode`` names (a mode, or the source it computes: ``jacobian`` -> ``parameters``)."""
    return MODE_ALIASES.get(mode, mode) if isinstance(mode, str) else mode


def valid_modes() -> str:
    """The modes with their source names, for messages: ``loss (losses), ..., parameters (jacobian, rows)``."""
    out = []
    for m in MODES:
        others = [a for a, n in MODE_ALIASES.items() if n == m]
        out.append(f"{m} ({', '.join(others)})" if others else m)
    return ", ".join(out)


def default_mode(method: BalancingMethod, has_representation: bool) -> str:
    """The method's most preferred source that the forward pass offers."""
    return method.requirements.default_mode(has_representation)


def check_mode(
    method: BalancingMethod,
    mode: str | None,
    *,
    has_representation: bool,
    owner: str = "the model",
    flag: str = "--grad-mode",
) -> str:
    """The mode to use: the method's default, or the one asked for if the method can use it.

    ``owner`` names what lacks a representation and ``flag`` how the caller spelt the choice
    (``--grad-mode`` on the command line, ``mode`` in Python), for the messages.
    """
    name = type(method).__name__
    req = method.requirements
    if mode is None:
        return default_mode(method, has_representation)
    said = f"{flag} {mode}" if flag.startswith("--") else f"{flag}={mode!r}"
    mode = canonical_mode(mode)
    if mode not in MODES:
        bad = f"{flag} {mode!r}" if flag.startswith("--") else said
        raise ConfigError(f"{bad} is not a mode; valid: {valid_modes()}")
    if req.uses_losses and mode != "loss":
        raise ConfigError(f"{said}: {name} is a loss weighting and uses mode 'loss'")
    if not req.uses_losses and mode == "loss":
        raise ConfigError(f"{said}: {name} needs per-task gradients; use representation or parameters")
    if mode == "representation" and req.coordinate_state:
        raise ConfigError(
            f"{said}: {name} keeps state for each shared parameter across steps and runs in parameters mode only"
        )
    if mode == "gramian" and not req.from_gramian:
        raise ConfigError(
            f"{said}: {name} needs the per-task gradients themselves, not only their "
            "Gramian; use parameters (or representation)"
        )
    if mode not in req.modes:
        raise ConfigError(f"{said}: {name} cannot use it; valid: {', '.join(req.modes)}")
    if mode == "representation" and not has_representation:
        raise ConfigError(f"{said}: {owner} has no single shared representation")
    return mode


def check_recompute_every(method: BalancingMethod, recompute_every: int) -> None:
    """``--recompute-every k`` reuses c(G) for k steps: only for methods whose update is c(G) @ J."""
    if recompute_every < 1:
        raise ConfigError(f"--recompute-every must be >= 1, got {recompute_every}")
    if recompute_every > 1 and not method.requirements.from_gramian:
        raise ConfigError(
            f"--recompute-every {recompute_every}: {type(method).__name__} is not of the form "
            "sum_t c_t g_t with c from the Gramian, so its weights cannot be reused"
        )
