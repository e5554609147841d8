"""Shared fixtures of the shiftlab.generative tests: one small generator of the 2-D toy, trained once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch

from shiftlab.generative import (
    Critic,
    Generator,
    PerturbConfig,
    TargetPerturber,
    four_gaussians,
    pretrain_wgan_gp,
)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run single-threaded, restoring the previous setting afterwards.

    The tensors here are small (at most 1,000 x 1,000): intra-op threading only adds synchronisation, and
    on a shared 2-core runner it made logsumexp about 10x slower. Fixtures of wider scope enter this
    themselves, because they are built before any function-scoped fixture.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def single_thread() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """:func:`one_thread` for module-scoped fixtures, which cannot rely on the autouse one."""
    return one_thread


@pytest.fixture(scope="session")
def toy_generator() -> Generator:
    """A (64, 64) MLP generator of the four-Gaussian toy: one-sided WGAN-GP, then polished by Section 2.

    400 WGAN-GP steps leave about a quarter of the mass on bridges between the modes (measured: exact W2
    0.65 to the mixture on 1,000 quasi-random latents, 24% off-mode); 10 Section-2 steps towards a sample
    of the mixture itself bring that to 0.38 (15% off-mode), far cheaper than more adversarial training
    (1,000 WGAN-GP steps measured 0.55). The Section-2 tests start from this realistic, imperfect generator.
    """
    pytest.importorskip("ot")
    with one_thread():
        return _toy_generator()


def _toy_generator() -> Generator:
    base = four_gaussians()
    with torch.random.fork_rng():  # initial weights independent of which tests ran before
        torch.manual_seed(0)
        gen0, critic0 = Generator(hidden=(64, 64)), Critic(hidden=(64, 64))
    pre = pretrain_wgan_gp(gen0, critic0, base, steps=400, n_critic=3, batch_size=128, lr=2e-3, seed=0)
    sample = base.sample(3000, torch.Generator().manual_seed(11))
    polish = PerturbConfig(max_steps=10, n_particles=512, n_validation=512)
    gen = TargetPerturber(pre.generator, sample, polish).run().generator
    assert isinstance(gen, Generator)
    return gen
