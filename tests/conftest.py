"""Fixtures shared by the test modules.

pytest puts ``tests/`` on ``sys.path``, so helper modules such as :mod:`digits_models` import by
name. ``one_thread`` and ``seeded`` are opt-in: a module that wants them says so with
``pytestmark = pytest.mark.usefixtures(...)``.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import digits_models


@pytest.fixture(scope="module")
def one_thread():
    """The module runs single-threaded and the setting is restored after it: the tensors are
    tiny, so intra-op threads only add overhead (and stall badly when the CPU is shared)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def seeded() -> None:
    """Every test starts from the same global RNG state (nn.Linear init, torch.randn)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """An undefended MLP trained clean on digits for 200 steps (≈ 92 % test accuracy), in eval
    mode with trainable parameters. Module-scoped: each module gets a fresh copy, and the global
    RNG is seeded with 0 when it is built, as the modules' tests were calibrated."""
    return digits_models.clean_mlp(steps=200)


@pytest.fixture(scope="module")
def test_set() -> tuple[Tensor, Tensor]:
    """The first 200 held-out digits."""
    return digits_models.held_out(200)
