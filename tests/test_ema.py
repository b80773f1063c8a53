"""EMA known answers."""

from __future__ import annotations

import pytest
import torch

from alignbench.training.ema import EMA


def test_ema_updates_every_k_steps_with_the_known_value_and_swaps_back():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([p], decay=0.9, every=2)
    with torch.no_grad():
        p.fill_(1.0)
    assert ema.step() is False and torch.all(ema.shadow[0] == 0)
    assert ema.step() is True
    assert torch.allclose(ema.shadow[0], torch.full((2,), 0.1))
    with torch.no_grad():
        p.fill_(3.0)
    ema.step(), ema.step()
    assert torch.allclose(ema.shadow[0], torch.full((2,), 0.9 * 0.1 + 0.1 * 3.0))
    with ema.swapped():
        assert torch.allclose(p, torch.full((2,), 0.39))
    assert torch.all(p == 3.0)
    other = EMA([p], decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.steps == 4 and other.decay == 0.9 and torch.equal(other.shadow[0], ema.shadow[0])
    with pytest.raises(ValueError, match="decay"):
        EMA([p], decay=1.0)
