r"""WGAN-GP pretraining (Gulrajani et al. 2017), with the one-sided penalty of the congested-transport view.

Critic loss, per batch of real :math:`y`, generated :math:`x` and interpolates
:math:`\hat x = t y + (1-t) x` (:math:`t \sim U[0,1]` per sample):

.. math::

    L_u = \mathbb E[u(x)] - \mathbb E[u(y)]
    + \lambda\,\mathbb E\bigl[\phi(\lVert\nabla u(\hat x)\rVert - 1)\bigr],
    \qquad \phi(s) = s_+^2 \ (\text{one-sided}) \ \text{or}\ s^2 \ (\text{two-sided}),

and generator loss :math:`L_G = -\mathbb E[u(G(z))]`, ``n_critic`` critic steps per generator step, Adam.
With the one-sided penalty the critic solves the dual of congested transport (see
:mod:`shiftlab.generative._congestion`); :math:`-L_u` without the penalty is the logged W1-style estimate.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from shiftlab.generative._engine import resolve_latent_dim, show_progress
from shiftlab.generative._samplers import Sampler
from shiftlab.report import Report, Table, atomic_write_bytes, jsonable

__all__ = ["PretrainResult", "gradient_penalty", "pretrain_wgan_gp"]

Penalty = Literal["one-sided", "two-sided"]


def gradient_penalty(critic: nn.Module, points: torch.Tensor, penalty: Penalty = "one-sided") -> torch.Tensor:
    r"""Gradient penalty at interpolates: the mean of :math:`\phi(\lVert\nabla u(\hat x)\rVert - 1)`.

    :math:`\phi(s) = s_+^2` (one-sided) or :math:`s^2` (two-sided).

    Differentiable in the critic's parameters (``create_graph=True``).

    Examples
    --------
    >>> lin = nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
    >>> float(gradient_penalty(lin, torch.zeros(4, 2)).detach())
    16.0
    """
    if penalty not in ("one-sided", "two-sided"):
        raise ValueError(f"penalty must be 'one-sided' or 'two-sided'; got {penalty!r}")
    pts = points.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(pts).sum(), pts, create_graph=True)
    excess = grad.reshape(grad.shape[0], -1).norm(dim=1) - 1.0
    return (excess.clamp_min(0.0) if penalty == "one-sided" else excess).square().mean()


@dataclass(frozen=True)
class PretrainResult(Report):
    """Trained copies of the generator and critic, the loss history and the checkpoints written.

    Attributes
    ----------
    history : tuple of dict
        Every ``log_every`` generator steps: ``step``, ``critic_loss``, ``generator_loss``, ``penalty``,
        ``w1_estimate`` (:math:`\\mathbb E u(y) - \\mathbb E u(x)`), all batch means.
    checkpoints : tuple of str
        Paths of the state-dict checkpoints (``torch.load(path, weights_only=True)``).
    """

    kind: ClassVar[str] = "wgan-gp-pretrain"

    steps: int
    penalty: str
    lam: float
    seconds: float
    history: tuple[dict[str, float], ...]
    checkpoints: tuple[str, ...]
    generator: nn.Module = dataclasses.field(repr=False, compare=False)
    critic: nn.Module = dataclasses.field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        skip = ("generator", "critic")
        return {
            "kind": self.kind,
            **{
                f.name: jsonable(getattr(self, f.name))
                for f in dataclasses.fields(self)
                if f.name not in skip
            },
        }

    def headline(self) -> str:
        last = self.history[-1]["w1_estimate"] if self.history else math.nan
        return f"WGAN-GP ({self.penalty}) {self.steps} steps in {self.seconds:.1f} s; critic gap {last:.3f}"

    def tables(self) -> Sequence[Table]:
        cols = ("step", "critic_loss", "generator_loss", "penalty", "w1_estimate")
        return (Table("Training history", cols, tuple(tuple(h[c] for c in cols) for h in self.history)),)


def _draw(source: Sampler | torch.Tensor, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source[torch.randint(0, source.shape[0], (n,), generator=gen)].to(device)
    return source.sample(n, gen).to(device)


def _save(path: Path, generator: nn.Module, critic: nn.Module, step: int) -> Path:
    buffer = io.BytesIO()
    torch.save({"generator": generator.state_dict(), "critic": critic.state_dict(), "step": step}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def pretrain_wgan_gp(
    generator: nn.Module,
    critic: nn.Module,
    sampler: Sampler | torch.Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    n_critic: int = 5,
    lam: float = 10.0,
    penalty: Penalty = "one-sided",
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.5, 0.9),
    seed: int = 0,
    latent_dim: int | None = None,
    device: str | torch.device | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    log_every: int = 50,
    quiet: bool | None = None,
) -> PretrainResult:
    """Train copies of ``generator`` and ``critic`` with WGAN-GP on draws from ``sampler``.

    Parameters
    ----------
    generator, critic
        Modules to copy and train (the originals are not modified).
    sampler
        Real data: an object with ``sample(n, generator)`` (e.g. a :class:`GaussianMixture`) or an
        ``(m, ...)`` tensor whose rows are drawn with replacement.
    steps
        Generator steps.
    batch_size, n_critic, lam, penalty, lr, betas
        Batch size, critic steps per generator step, penalty weight :math:`\\lambda`, penalty kind, Adam
        learning rate and betas for both networks.
    seed
        Seeds the latents, real draws and interpolation weights (the global torch RNG is not touched).
    latent_dim
        Needed when the generator has no ``latent_dim`` attribute.
    device
        Where to train (default: the generator's device).
    checkpoint_dir, checkpoint_every
        Write ``step_<k>.pt`` (generator and critic state dicts) atomically every ``checkpoint_every``
        steps and at the end.
    log_every
        History resolution in generator steps.
    quiet
        Hide the progress bar (``None``: shown only on an interactive terminal).

    Returns
    -------
    PretrainResult

    Examples
    --------
    >>> from shiftlab.generative import Critic, Generator, four_gaussians
    >>> gen, critic = Generator(hidden=(16,)), Critic(hidden=(16,))
    >>> res = pretrain_wgan_gp(gen, critic, four_gaussians(), steps=3, log_every=1)
    >>> len(res.history)
    3
    """
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("n_critic", n_critic),
        ("checkpoint_every", checkpoint_every),
        ("log_every", log_every),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0; got {lam!r}")
    if penalty not in ("one-sided", "two-sided"):
        raise ValueError(f"penalty must be 'one-sided' or 'two-sided'; got {penalty!r}")
    if not (isinstance(sampler, (torch.Tensor, Sampler))):
        raise TypeError("sampler must be a tensor of real points or have a sample(n, generator) method")
    k = resolve_latent_dim(generator, latent_dim)
    first = next(generator.parameters(), None)
    dev = (
        torch.device(device)
        if device is not None
        else (first.device if first is not None else torch.device("cpu"))
    )
    gen_net, critic_net = copy.deepcopy(generator).to(dev).train(), copy.deepcopy(critic).to(dev).train()
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=lr, betas=betas)
    opt_c = torch.optim.Adam(critic_net.parameters(), lr=lr, betas=betas)
    rng = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    checkpoints: list[str] = []
    out_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    progress = None
    if show_progress(quiet):
        from rich.progress import Progress

        progress = Progress(transient=True)
        progress.start()
        task = progress.add_task("WGAN-GP", total=steps)
    start = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            for _ in range(n_critic):
                real = _draw(sampler, batch_size, rng, dev)
                with torch.no_grad():
                    fake = gen_net(torch.randn(batch_size, k, generator=rng).to(dev))
                t = torch.rand(batch_size, *([1] * (real.ndim - 1)), generator=rng).to(dev)
                fake = fake.reshape(real.shape)
                gap = critic_net(real).mean() - critic_net(fake).mean()
                pen = gradient_penalty(critic_net, t * real + (1 - t) * fake, penalty)
                loss_c = -gap + lam * pen
                if not bool(torch.isfinite(loss_c.detach())):
                    raise FloatingPointError(f"critic loss became non-finite at step {step}; lower lr")
                opt_c.zero_grad(set_to_none=True)
                loss_c.backward()
                opt_c.step()
            loss_g = -critic_net(gen_net(torch.randn(batch_size, k, generator=rng).to(dev))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if step % log_every == 0 or step == steps:
                history.append(
                    {
                        "step": float(step),
                        "critic_loss": float(loss_c.detach()),
                        "generator_loss": float(loss_g.detach()),
                        "penalty": float(pen.detach()),
                        "w1_estimate": float(gap.detach()),
                    }
                )
            if out_dir is not None and (step % checkpoint_every == 0 or step == steps):
                checkpoints.append(str(_save(out_dir / f"step_{step}.pt", gen_net, critic_net, step)))
            if progress is not None:
                progress.update(task, advance=1)
    finally:
        if progress is not None:
            progress.stop()
    return PretrainResult(
        steps=steps,
        penalty=penalty,
        lam=float(lam),
        seconds=time.perf_counter() - start,
        history=tuple(history),
        checkpoints=tuple(checkpoints),
        generator=gen_net.eval(),
        critic=critic_net.eval(),
    )
