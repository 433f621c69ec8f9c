"""What reads an image's embedding at request time: an adapter's head and an example set's similarity.

Every model gives, from the forward pass that gives its five probabilities, the pooled features its
classification head reads (:meth:`~nsfw_core.inference.model.Model.predict_with_embeddings`): 1792 values
for MobileNetV2Mid, 1280 for MobileNetV2, 2048 for InceptionV3.  Two things use them, both with numpy
only (nothing here imports scikit-learn, and nothing is ever unpickled: a head is numbers in JSON):

* :class:`AdapterHead`, an operator's adapter: a logistic regression over the embedding and the five
  base probabilities, trained on their own labelled and reviewed images
  (:mod:`nsfw_core.calibration.adapters`).  Its probability is the image's adult score when the adapter
  is in force; the safe score is one minus it.  The standardisation learnt in training is folded into
  the weights, so applying it is one dot product: about 2 microseconds an image.
* :class:`ExampleSet`, an admin's few example images of something to block (or allow): an image whose
  embedding lies within the set's similarity threshold of one example gets the set's verdict.
  Similarity is the cosine of the embeddings after subtracting a centre (the mean embedding of the
  background set the threshold was chosen against): the raw features are non-negative (ReLU6), so their
  plain cosines are all high and say little.

Both are read from the database by :mod:`nsfw_core.state.adapters`; whatever is stored there is checked
here (sizes, finite numbers, the model's embedding size) before it can judge a request.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from nsfw_core.base.labels import ADULT, CLASS_NAMES, SAFE

HEAD_FORMAT = "nsfw-adapter-head/1"
SET_FORMAT = "nsfw-example-set/1"
FEATURES = "embedding+probabilities"  # what the head reads: the D embedding values, then the five probabilities
MAX_DIM = 8192  # no model has a larger embedding; a stored head or set claiming one is refused
MAX_EXAMPLES = 1000  # examples in one set
SET_VERDICTS = (ADULT, SAFE)  # "block" and "allow"


def _b64(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def _unb64(text: Any, dtype: str, count: int, what: str) -> np.ndarray:
    if not isinstance(text, str):
        raise ValueError(f"{what} is not base64 text")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ValueError(f"{what} is not base64: {exc}") from None
    values = np.frombuffer(raw, dtype=dtype)
    if values.size != count:
        raise ValueError(f"{what} holds {values.size} numbers, expected {count}")
    if not np.isfinite(values).all():
        raise ValueError(f"{what} holds a number that is not finite")
    return values.astype(np.float64)


def _dim(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_DIM:
        raise ValueError(f"{what} must be an integer in 1..{MAX_DIM}")
    return value


def _finite(value: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ValueError(f"{what} must be a finite number in [{lo:g}, {hi:g}]")
    return float(value)


def _load(text: str | bytes, fmt: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise ValueError(f"{what} is not a {fmt} document")
    return doc


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large |z|."""
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))
    return out


def score_rows(scores: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Class-score dicts -> an (N, 5) array in the model's class order."""
    return np.array([[float(s[c]) for c in CLASS_NAMES] for s in scores], dtype=np.float64).reshape(-1,
                                                                                                   len(CLASS_NAMES))


@dataclasses.dataclass(frozen=True)
class AdapterHead:
    """A linear head over ``[embedding (dim), probabilities (5)]``: adult score = sigmoid(x . weights + bias)."""

    dim: int
    weights: np.ndarray  # (dim + 5,) float64, the standardisation folded in
    bias: float

    def __post_init__(self) -> None:
        _dim(self.dim, "the head's embedding size")
        if self.weights.shape != (self.dim + len(CLASS_NAMES),) or not np.isfinite(self.weights).all():
            raise ValueError(f"the head needs {self.dim + len(CLASS_NAMES)} finite weights")
        _finite(self.bias, "the head's bias")

    def score(self, embedding: np.ndarray, scores: Mapping[str, float]) -> float:
        """One image's adult score under the adapter (0 to 1)."""
        return float(self.score_many(np.asarray(embedding)[None], score_rows([scores]))[0])

    def score_many(self, embeddings: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """(N, dim) embeddings and (N, 5) probabilities -> (N,) adult scores."""
        e = np.asarray(embeddings, dtype=np.float64)
        p = np.asarray(probs, dtype=np.float64)
        if e.ndim != 2 or e.shape[1] != self.dim or p.shape != (e.shape[0], len(CLASS_NAMES)):
            raise ValueError(f"expected ({len(e)}, {self.dim}) embeddings and ({len(e)}, 5) probabilities, got "
                             f"{e.shape} and {p.shape}")
        z = e @ self.weights[:self.dim] + p @ self.weights[self.dim:] + self.bias
        return sigmoid(z)

    def to_json(self) -> str:
        return json.dumps({"format": HEAD_FORMAT, "features": FEATURES, "dim": self.dim,
                           "weights": _b64(self.weights, "<f8"), "bias": self.bias}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, dim: int | None = None) -> AdapterHead:
        """A stored head, checked (ValueError says what is wrong); ``dim``: the model's embedding size."""
        doc = _load(text, HEAD_FORMAT, "the adapter head")
        if doc.get("features") != FEATURES:
            raise ValueError(f"the adapter head reads {doc.get('features')!r}, not {FEATURES!r}")
        size = _dim(doc.get("dim"), "the head's embedding size")
        if dim is not None and size != dim:
            raise ValueError(f"the adapter head reads {size} embedding values; the model gives {dim}")
        weights = _unb64(doc.get("weights"), "<f8", size + len(CLASS_NAMES), "the head's weights")
        return cls(size, weights, _finite(doc.get("bias"), "the head's bias"))


def unit_rows(vectors: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Rows minus ``center``, scaled to unit length (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float64) - center
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    out: np.ndarray = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    return out


@dataclasses.dataclass(frozen=True)
class ExampleSet:
    """Example images' embeddings with a verdict and the similarity at which an image gets it."""

    name: str
    verdict: str  # "adult" (block) or "safe" (allow)
    threshold: float  # cosine similarity, at or above which an image matches an example
    center: np.ndarray  # (dim,) subtracted before the cosine
    examples: np.ndarray  # (k, dim) unit rows, centred

    def __post_init__(self) -> None:
        if self.verdict not in SET_VERDICTS:
            raise ValueError(f"an example set's verdict is adult (block) or safe (allow), not {self.verdict!r}")
        _finite(self.threshold, "the similarity threshold", -1.0, 1.0)
        k = self.examples.shape[0] if self.examples.ndim == 2 else 0
        if not 0 < k <= MAX_EXAMPLES or self.examples.shape[1:] != self.center.shape:
            raise ValueError(f"an example set holds 1 to {MAX_EXAMPLES} examples of the centre's size")

    @property
    def dim(self) -> int:
        return int(self.center.shape[0])

    def similarity(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, dim) embeddings -> (N,) each one's highest similarity to an example."""
        sims: np.ndarray = (unit_rows(np.atleast_2d(embeddings), self.center) @ self.examples.T).max(axis=1)
        return sims

    def to_json(self) -> str:
        k, d = self.examples.shape
        return json.dumps({"format": SET_FORMAT, "dim": d, "count": k, "center": _b64(self.center, "<f4"),
                           "examples": _b64(self.examples, "<f4")}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, name: str, verdict: str, threshold: float,
                  dim: int | None = None) -> ExampleSet:
        """A stored set's vectors, checked (ValueError says what is wrong)."""
        doc = _load(text, SET_FORMAT, "the example set")
        size = _dim(doc.get("dim"), "the example set's embedding size")
        if dim is not None and size != dim:
            raise ValueError(f"the example set holds {size}-value embeddings; the model gives {dim}")
        count = doc.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_EXAMPLES:
            raise ValueError(f"an example set holds 1 to {MAX_EXAMPLES} examples")
        center = _unb64(doc.get("center"), "<f4", size, "the example set's centre")
        examples = _unb64(doc.get("examples"), "<f4", count * size, "the example set's vectors").reshape(count, size)
        return cls(name, verdict, threshold, center, unit_rows(examples, np.zeros(size)))


@dataclasses.dataclass(frozen=True)
class ExampleMatch:
    """The example set an image matched: its name and verdict, the similarity and the set's threshold."""

    name: str
    verdict: str
    similarity: float
    threshold: float
    set_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"set": self.name, "verdict": self.verdict, "similarity": round(self.similarity, 4),
                "threshold": round(self.threshold, 4)}


MATCH_CHUNK = 256  # frames compared at once: a long video job's 1,800 frames never all in float64 at once


def match_examples(sets: Sequence[tuple[int, ExampleSet]], frames: np.ndarray) -> ExampleMatch | None:
    """The example set that decides an image whose (k, dim) ``frames`` embeddings are given (one row for a
    still image), or None.

    A block set (verdict adult) matches when any frame is within its threshold; an allow set (safe) only
    when every frame is.  Block wins over allow; among sets of one kind, the highest margin over its
    threshold wins.
    """
    frames = np.atleast_2d(np.asarray(frames))  # float16 from a video job's frames: converted a chunk at a time
    if not frames.shape[0]:
        return None
    best: tuple[tuple[int, float], ExampleMatch] | None = None
    for set_id, ex in sets:
        if ex.dim != frames.shape[1]:
            continue
        sims = np.concatenate([ex.similarity(frames[i:i + MATCH_CHUNK]) for i in range(0, len(frames), MATCH_CHUNK)])
        sim = float(sims.max() if ex.verdict == ADULT else sims.min())
        if sim < ex.threshold:
            continue
        key = (0 if ex.verdict == ADULT else 1, -(sim - ex.threshold))
        if best is None or key < best[0]:
            best = (key, ExampleMatch(ex.name, ex.verdict, sim, ex.threshold, set_id))
    return None if best is None else best[1]


def encode_embedding(embedding: np.ndarray) -> str:
    """An embedding as the database keeps a queued item's: float16, base64 (3.5 KB for 1792 values)."""
    return base64.b64encode(np.asarray(embedding, dtype="<f2").tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray | None:
    """:func:`encode_embedding`'s inverse; None for anything that is not one."""
    try:
        values = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f2").astype(np.float32)
    except (ValueError, TypeError):
        return None
    return values if values.size and np.isfinite(values).all() else None


def embedding_bytes(embedding: np.ndarray) -> bytes:
    """An embedding as a video job's frame keeps it: float16, little-endian, raw (3,584 bytes for 1,792 values:
    :func:`encode_embedding`'s numbers without base64's third more)."""
    return np.asarray(embedding, dtype="<f2").tobytes()


def embedding_from_bytes(raw: bytes | memoryview | None) -> np.ndarray | None:
    """:func:`embedding_bytes`' inverse, kept float16 (half the memory of float32: a job's frames are read at
    once; every use computes in float64); None for anything that is not one."""
    if raw is None:
        return None
    data = bytes(raw)
    if not data or len(data) % 2:
        return None
    values = np.frombuffer(data, dtype="<f2")
    return values if np.isfinite(values).all() else None


def embedding_distance(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two images' embeddings are: one minus the cosine of the raw vectors (0: the same direction;
    the features are non-negative, so at most 1).  Vectors of different sizes (another model) are 1; a zero
    vector is 1 from everything.  What a look-alike must stay within (:data:`nsfw_core.classify`'s
    MATCH_EMBEDDING_DISTANCE)."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        return 1.0
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    if not norms > 0 or not math.isfinite(norms):
        return 1.0
    return float(min(1.0, max(0.0, 1.0 - float(x @ y) / norms)))
