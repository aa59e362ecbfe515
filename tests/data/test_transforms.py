"""Image transforms: the fused batch normalisation equals torchvision's per-image reference."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from data_pipelines.config import AugmentConfig
from data_pipelines.decode import MEAN_STD, build_image_transform


@pytest.mark.parametrize("normalization", ["imagenet", "clip"])
def test_matches_torchvision_reference(normalization):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    mean, std = MEAN_STD[normalization]
    reference = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                           T.ToTensor(), T.Normalize(mean, std)])(image)
    ours = build_image_transform(32, normalization)(image)
    assert ours.shape == (3, 32, 32)
    assert (ours - reference).abs().max() < 1e-5


def test_augmentation_only_in_training():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    augment = AugmentConfig(random_resized_crop=True, scale_min=0.3, hflip=True)
    plain = build_image_transform(32, "imagenet", augment, train=False)
    assert (plain(image) - plain(image)).abs().max() == 0
    train = build_image_transform(32, "imagenet", augment, train=True)
    assert any((train(image) - train(image)).abs().max() > 0 for _ in range(5))
