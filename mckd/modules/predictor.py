"""A trained model on single numpy images of any size: class ids (and confidence) at the image's own size."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mckd.data.transforms import as_tv, eval_transform
from mckd.modules.inference import InferenceSettings, class_probs, per_sample_labels
from mckd.modules.segmentation import SegmentationModule


def pick_device(device: str | None = "auto") -> torch.device:
    """`auto` (or None): the GPU when there is one, else the CPU; anything else as torch spells it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Inference with the same transform, flip TTA and sliding window as validation, one image at a time.

    `flip`, `window` and `stride` default to the checkpoint's own validation settings (its `inference`).
    """

    def __init__(self, module: SegmentationModule, transform: Callable | None = None, flip: bool | None = None,
                 window: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                 device: str | torch.device | None = "auto"):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.module = module.eval().to(self.device)
        settings = InferenceSettings.resolve(module.inference, flip, window, stride)
        self.flip, self.window, self.stride = settings.flip, settings.window, settings.stride
        self.transform = transform or eval_transform(None)

    @classmethod
    def from_checkpoint(cls, path: str, **kwargs) -> Predictor:
        return cls(SegmentationModule.from_checkpoint(path), **kwargs)

    @property
    def class_names(self) -> list[str]:
        return self.module.class_names

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class ids HxW int32, confidence HxW float32) of an HxWx3 uint8 image, at its own size."""
        tensor = self.transform(as_tv(image)[0]).as_subclass(torch.Tensor)
        batch = {"id": ["image"], "size": torch.tensor([image.shape[:2]]), "input_size": torch.tensor([tensor.shape[-2:]])}
        probs = class_probs([self.module], tensor[None].to(self.device), self.flip, self.window, self.stride)
        item = per_sample_labels(probs, batch)[0]
        return item["label"].numpy(), item["confidence"].numpy()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.predict(image)[0]
