"""Cosine diversity, Vendi score and the ShapesWorld feature extractor: known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alignbench.metrics.diversity import cosine_diversity, vendi_score
from alignbench.metrics.features import cosine_distance_matrix, feature_extractor, pooled_pixels


def test_vendi_of_identical_vectors_is_one_and_of_orthogonal_vectors_is_n():
    assert vendi_score(torch.ones(5, 3) * torch.tensor([1.0, -2.0, 0.5])) == pytest.approx(1.0)
    assert vendi_score(torch.eye(6)[:4] * 3.0) == pytest.approx(4.0)
    # two identical pairs of orthogonal vectors: effective number 2
    assert vendi_score(torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])) == pytest.approx(2.0)


def test_cosine_diversity_known_answers():
    assert cosine_diversity(torch.ones(4, 7)) == pytest.approx(0.0, abs=1e-12)
    assert cosine_diversity(torch.eye(3)) == pytest.approx(1.0)
    assert cosine_diversity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert cosine_diversity(x) == pytest.approx(1 - 1 / math.sqrt(2))
    d = cosine_distance_matrix(x)
    assert d[0, 1] == pytest.approx(1 - 1 / math.sqrt(2)) and d[0, 0] == 0
    with pytest.raises(ValueError, match="at least 2"):
        cosine_diversity(torch.ones(1, 3))


def test_shapes_features_separate_random_layouts_from_jittered_copies_of_one_layout():
    from alignbench.world.prompts import geneval_splits
    from alignbench.world.sample import scene_for_record
    from alignbench.world.scene import WorldConfig, render

    world = WorldConfig()
    rec = geneval_splits()[1][0]
    rng = np.random.default_rng(0)
    random_layouts = np.stack([render(scene_for_record(rec, "geneval", rng, world), world) for _ in range(8)])
    one = render(scene_for_record(rec, "geneval", np.random.default_rng(1), world), world)
    jittered = np.stack([np.clip(one.astype(int) + rng.integers(-6, 7, one.shape), 0, 255).astype(np.uint8)
                         for _ in range(8)])
    extract = feature_extractor("shapes")
    f_rand, f_jit = extract(random_layouts), extract(jittered)
    assert f_rand.shape == (8, 768)
    assert cosine_diversity(extract(np.stack([one] * 4))) == pytest.approx(0.0, abs=1e-12)
    div_rand, div_jit = cosine_diversity(f_rand), cosine_diversity(f_jit)
    assert div_rand > 10 * div_jit and div_rand > 0.2, (div_rand, div_jit)
    assert vendi_score(f_rand) > 2 * vendi_score(f_jit)
    # float [N, 3, H, W] input in [0, 1] gives the same features
    torch.testing.assert_close(pooled_pixels(torch.from_numpy(one[None]).permute(0, 3, 1, 2).float() / 255),
                               extract(one[None]))
    with pytest.raises(ValueError, match="no feature extractor"):
        feature_extractor("cartoon")
