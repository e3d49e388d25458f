"""Imported first by the GPTQModel-environment scripts: GPTQModel imports torchvision for InternVL's
image transforms only, and PyPI's torchvision wheel needs CUDA's libtorch, absent from a CPU torch.
The environment has none; the libraries that probe for it (transformers, datasets) are imported
before an empty module stands in for that one import (nothing here uses images)."""
import sys
import types

import datasets  # noqa: F401  (they must see that torchvision is not installed)
import transformers  # noqa: F401

for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["torchvision.transforms.functional"].InterpolationMode = None
