"""What every model runtime provides, and the checks a runtime passes before it serves.

A runtime (:mod:`nsfw_core.inference.litert`, :mod:`nsfw_core.inference.tfgraph`) turns a verified model
into a :class:`Forward`: a callable from (N, S, S, 3) float32 to (N, classes)
probabilities that also says how it runs, and gives the images' embeddings (the pooled features the
classification head reads) from the same pass (:meth:`Forward.with_embeddings`).  :func:`starting` names
the model in any error raised while one is opened; :func:`warm_up` runs one inference and checks it.
:mod:`nsfw_core.inference.model` and the LiteRT compile command both use them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol

import numpy as np

from nsfw_core.base.errors import ModelError
from nsfw_core.base.labels import CLASS_NAMES


class Forward(Protocol):
    """One runtime's forward pass over a loaded network. Thread-safe."""

    @property
    def runtime(self) -> str:
        """The runtime's name, one of :data:`~nsfw_core.base.settings.RUNTIMES`."""
        ...

    @property
    def batches(self) -> bool:
        """True when one pass over N images costs less per image than N passes."""
        ...

    @property
    def threads(self) -> int:
        """Threads of one forward pass."""
        ...

    @property
    def lanes(self) -> int:
        """Parallel interpreters that share out a batch's images (0: none)."""
        ...

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32, N >= 1 -> (N, classes) probabilities."""
        ...

    def with_embeddings(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) float32, N >= 1 -> ((N, classes) probabilities, (N, D) float32 embeddings), one pass."""
        ...


@contextlib.contextmanager
def starting(name: str) -> Iterator[None]:
    """Errors raised while model ``name`` is opened and warmed up, as :class:`ModelError` naming it."""
    try:
        yield
    except ModelError as exc:
        raise ModelError(f"model {name}: {exc}") from exc
    except Exception as exc:  # TensorFlow raises many types for a broken graph
        raise ModelError(f"model {name} failed to run: {exc}") from exc


def warm_up(name: str, forward: Forward, input_size: int) -> None:
    """Run one inference so the first request does not pay for set-up; checks both outputs."""
    probs, features = forward.with_embeddings(np.zeros((1, input_size, input_size, 3), dtype=np.float32))
    if probs.shape != (1, len(CLASS_NAMES)) or not np.isfinite(probs).all() or abs(float(probs.sum()) - 1) > 1e-3:
        raise ModelError(f"model {name} failed its warm-up inference: {probs}")
    if features.ndim != 2 or features.shape[0] != 1 or features.shape[1] <= len(CLASS_NAMES) \
            or not np.isfinite(features).all():
        raise ModelError(f"model {name} gave no usable embedding in its warm-up inference (shape {features.shape})")
