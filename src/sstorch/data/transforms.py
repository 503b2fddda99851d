"""The training (augmenting) and evaluation transforms of each dataset."""

from __future__ import annotations

from torchvision.transforms import v2

from sstorch.data.imagefolder import _pil_to_float
from sstorch.data.registry import Transform, canonical_name

__all__ = ["eval_transform", "train_transform"]


def train_transform(name: str, augment: bool = True) -> Transform | None:
    """The training transform: the dataset's usual augmentation, or the eval one if off.

    CIFAR: random 32-crop with 4-pixel zero padding + horizontal flip; SVHN: the crop only
    (digits are not mirror-symmetric); ImageNet: RandomResizedCrop(224) + flip; digit datasets
    (MNIST, Fashion-MNIST, digits): none.
    """
    name = canonical_name(name)
    if not augment:
        return eval_transform(name)
    if name in ("cifar10", "cifar100"):
        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    if name == "svhn":
        return v2.RandomCrop(32, padding=4)
    if name == "imagenet":
        return v2.Compose([
            v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
            _pil_to_float,
        ])
    return None


def eval_transform(name: str) -> Transform | None:
    """The evaluation transform: none, except ImageNet's Resize(256) + CenterCrop(224)."""
    if canonical_name(name) == "imagenet":
        return v2.Compose([
            v2.Resize(256, antialias=True), v2.CenterCrop(224),
            _pil_to_float,
        ])
    return None
