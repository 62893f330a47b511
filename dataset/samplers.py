"""Index samplers over the cached training pool, exactly resumable.

Every sampler splits its stream into passes; pass ``p`` is drawn from its own
``numpy.random.default_rng([seed, stream_id, p])``, so the whole state is (pass, position) plus, for CRD,
a batch counter. Batches are always exactly ``batch_size`` rows: they stream across pass boundaries.
All returned index tensors live on the sampler's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core.device import to_device
from core.errors import UserError

STREAM_PLAIN = 1
STREAM_TUPLE = 2
STREAM_CRD = 3
STREAM_CLASS_BALANCED = 4

_SEED_MOD = 2**63
# TupleSampler's draw: random rows with a repeated image are rejected while at least this share of rows is kept, for at
# most this many rounds; otherwise rows are drawn without rejection, in chunks of at most this many random keys
MIN_REJECTION_ACCEPTANCE = 0.5
REJECTION_ROUNDS = 20
DRAW_CHUNK_ELEMENTS = 1 << 22


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Steps of one pseudo-epoch, the same for every method: ``ceil(n_train / batch_size)``."""
    return max(1, math.ceil(n_train / batch_size))


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).astype(np.int64, copy=False).reshape(-1)


class _PassSampler:
    """Streams rows of per-pass index arrays; subclasses define ``_make_pass``."""

    KIND = "base"
    STREAM = 0

    def __init__(self, n_items: int, batch_size: int, seed: int, device: torch.device | str) -> None:
        if batch_size < 1:
            raise ValueError(f"the batch size must be at least 1, got {batch_size}")
        if n_items < 1:
            raise ValueError(f"the sampler needs at least one training item, got {n_items}")
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.pass_idx = 0
        self.position = 0
        self._pass: torch.Tensor | None = None

    # -- passes ------------------------------------------------------------------------------
    def _rng(self, pass_idx: int) -> np.random.Generator:
        return np.random.default_rng([self.seed % _SEED_MOD, self.STREAM, pass_idx])

    def _make_pass(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _current(self) -> torch.Tensor:
        if self._pass is None:
            rows = np.ascontiguousarray(self._make_pass(self._rng(self.pass_idx)), dtype=np.int64)
            if rows.shape[0] == 0:
                raise RuntimeError(f"{type(self).__name__} produced an empty pass")
            self._pass = to_device(torch.from_numpy(rows), self.device)  # non-blocking on CUDA: no stream sync per pass
        return self._pass

    def _take(self, count: int) -> torch.Tensor:
        parts = []
        while count > 0:
            current = self._current()
            available = current.shape[0] - self.position
            if available <= 0:
                self.pass_idx += 1
                self.position = 0
                self._pass = None
                continue
            k = min(available, count)
            parts.append(current[self.position: self.position + k])
            self.position += k
            count -= k
        return parts[0].clone() if len(parts) == 1 else torch.cat(parts)  # never hand out a view of the pass

    # -- state -------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"kind": self.KIND, "seed": self.seed, "batch_size": self.batch_size, "n_items": self.n_items}

    def state_dict(self) -> dict[str, Any]:
        """Small, ``torch.load(weights_only=True)``-safe state: configuration plus (pass, position)."""
        return {**self._config(), "pass_idx": int(self.pass_idx), "position": int(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the sampler that produced ``state`` stopped."""
        for key, value in self._config().items():
            saved = state.get(key)
            if isinstance(saved, tuple):
                saved = list(saved)
            if saved != value:
                raise UserError(
                    f"the saved sampler state has {key}={saved!r} but this run has {key}={value!r}; "
                    "resume with the same flags as the interrupted run, or start a new run"
                )
        self.pass_idx = int(state["pass_idx"])
        self.position = int(state["position"])
        self._pass = None


class PlainSampler(_PassSampler):
    """Single items, each pass a fresh permutation: ``{'idx': [B]}`` (KD, DIST, white-box methods)."""

    KIND = "plain"
    STREAM = STREAM_PLAIN

    def _make_pass(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.n_items)

    def next_batch(self) -> dict[str, torch.Tensor]:
        return {"idx": self._take(self.batch_size)}


def _count_tuples(image_ids: np.ndarray, group_sizes: Sequence[int], unordered: bool) -> int:
    """Exact number of distinct tuples whose items all come from distinct images.

    Choosing k distinct images weighted by their number of items is the elementary symmetric polynomial
    e_k of the per-image item counts; the k slots are then arranged in k! orders, of which prod(g!) are the
    same tuple when groups are unordered. When every image has the same number v of items (the teacher cache:
    ``--teacher_views`` per image), e_k = C(m, k) v^k, computed directly (the polynomial costs k^2 big-number steps).
    """
    k = int(sum(group_sizes))
    _, per_image = np.unique(image_ids, return_counts=True)
    weights, multiplicity = np.unique(per_image, return_counts=True)
    if weights.shape[0] == 1:
        e_k = math.comb(int(multiplicity[0]), k) * int(weights[0]) ** k
    else:
        poly = [1] + [0] * k  # coefficients of prod_i (1 + w_i x), truncated at x^k
        for w, c in zip(weights.tolist(), multiplicity.tolist()):
            factor = [math.comb(c, j) * w**j for j in range(k + 1)]
            poly = [sum(poly[i] * factor[j - i] for i in range(j + 1)) for j in range(k + 1)]
        e_k = poly[k]
    count = math.factorial(k) * e_k
    if unordered:
        for g in group_sizes:
            count //= math.factorial(g)
    return count


def _enumerate_tuples(image_ids: np.ndarray, group_sizes: Sequence[int], unordered: bool) -> np.ndarray:
    """All distinct tuples in canonical form (items ascending within a group when unordered), built slot by slot."""
    n_items = image_ids.shape[0]
    items = np.arange(n_items, dtype=np.int64)
    rows = np.zeros((1, 0), dtype=np.int64)
    for g in group_sizes:
        for j in range(g):
            parent = np.repeat(np.arange(rows.shape[0]), n_items)
            new = np.tile(items, rows.shape[0])
            keep = np.ones(new.shape[0], dtype=bool)
            if unordered and j > 0:
                keep &= new > rows[parent, -1]
            new_images = image_ids[new]
            for col in range(rows.shape[1]):
                keep &= image_ids[rows[parent, col]] != new_images
            rows = np.concatenate([rows[parent[keep]], new[keep, None]], axis=1)
    return rows


def _canonical(rows: np.ndarray, group_sizes: Sequence[int]) -> np.ndarray:
    start = 0
    for g in group_sizes:
        if g > 1:
            rows[:, start: start + g] = np.sort(rows[:, start: start + g], axis=1)
        start += g
    return rows


def _first_unique(rows: np.ndarray, n_items: int) -> np.ndarray:
    """Rows without repeats, each kept at its first occurrence, in the original order."""
    k = rows.shape[1]
    if n_items ** k < 2**62:
        key = np.zeros(rows.shape[0], dtype=np.int64)
        for col in range(k):
            key = key * n_items + rows[:, col]
        _, first = np.unique(key, return_index=True)
    else:
        _, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)]


class TupleSampler(_PassSampler):
    """Tuples of items from distinct images: ``{'groups': [B, sum(group_sizes)]}``, columns group by group.

    CKD uses ``group_sizes=(P, N)``; mixup and cutmix ``(1, 1)`` (ordered pairs), mixup3 ``(1, 1, 1)``.
    A pass holds ``max_samples`` distinct tuples (all of them when fewer exist), shuffled. Tuples are
    distinct after sorting the items inside each group when ``unordered_within_group``.
    """

    KIND = "tuple"
    STREAM = STREAM_TUPLE

    def __init__(
        self,
        image_ids: Any,
        group_sizes: tuple[int, ...],
        max_samples: int,
        batch_size: int,
        seed: int,
        device: torch.device | str,
        unordered_within_group: bool = True,
    ) -> None:
        ids = _as_numpy(image_ids)
        super().__init__(ids.shape[0], batch_size, seed, device)
        self.group_sizes = tuple(int(g) for g in group_sizes)
        if not self.group_sizes or min(self.group_sizes) < 1:
            raise ValueError(f"every tuple group needs at least one item, got group sizes {group_sizes}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        self.max_samples = int(max_samples)
        self.unordered = bool(unordered_within_group)
        self.k = sum(self.group_sizes)
        n_images = int(np.unique(ids).shape[0])
        if n_images < self.k:
            raise ValueError(f"tuples of {self.k} distinct images need at least {self.k} images, got {n_images}")
        self._ids = ids
        self._total = _count_tuples(ids, self.group_sizes, self.unordered)
        if self._total <= 2 * self.max_samples:
            self._mode = "all" if self._total <= self.max_samples else "subsample"
            self._all: np.ndarray | None = _enumerate_tuples(ids, self.group_sizes, self.unordered)
            assert self._all.shape[0] == self._total
        else:
            self._mode = "draw"
            self._all = None
        # the chance that k random items come from k distinct images (the rejection draw keeps that share of its rows)
        self._p_distinct = _count_tuples(ids, self.group_sizes, False) / self.n_items ** self.k
        images, inverse = np.unique(ids, return_inverse=True)
        per_image = np.bincount(inverse)
        self._images = images
        self._items_per_image = per_image
        self._image_items = np.zeros((images.shape[0], int(per_image.max())), dtype=np.int64)
        by_image = np.argsort(inverse, kind="stable")  # items grouped by image, each image's items in their order
        first = np.cumsum(per_image) - per_image
        self._image_items[inverse[by_image], np.arange(by_image.shape[0]) - first[inverse[by_image]]] = by_image

    def num_distinct_tuples(self) -> int:
        """The exact number of distinct tuples that exist (a Python int)."""
        return self._total

    def pass_length(self) -> int:
        """Tuples per pass: ``min(max_samples, num_distinct_tuples())``."""
        return min(self.max_samples, self._total)

    def _draw_rows(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` uniformly random rows of ``k`` items from ``k`` distinct images, without rejection: the images of
        a row are the ``k`` smallest of ``m`` random keys (in key order: a uniformly random ordered choice), drawn in
        chunks of bounded size; then one of each image's items, uniformly (every image has the same number of items
        in the teacher cache; with uneven numbers a row is uniform over its images, not over item tuples)."""
        m, k = self._images.shape[0], self.k
        chunk = max(1, DRAW_CHUNK_ELEMENTS // m)
        parts = []
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            keys = rng.random((n, m))
            chosen = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (n, 1))
            order = np.argsort(np.take_along_axis(keys, chosen, axis=1), axis=1)
            parts.append(np.take_along_axis(chosen, order, axis=1))
        image_rows = np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)
        pick = (rng.random(image_rows.shape) * self._items_per_image[image_rows]).astype(np.int64)
        return self._image_items[image_rows, pick]

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        """``max_samples`` distinct tuples (there are more than twice as many, so a fresh row repeats an earlier one
        with probability below 1/2). Rows of ``k`` items are drawn at random and the ones with a repeated image
        dropped while that keeps most of them (the draw of the published runs, bit for bit); a tuple of many images
        out of few, where almost every random row repeats an image, is drawn without rejection instead
        (:meth:`_draw_rows`), and so is whatever the first ``REJECTION_ROUNDS`` rounds left missing: every pass ends in
        bounded time."""
        collected = np.zeros((0, self.k), dtype=np.int64)
        acceptance = 1.0
        rounds = 0
        while collected.shape[0] < self.max_samples:
            missing = self.max_samples - collected.shape[0]
            rounds += 1
            if self._p_distinct >= MIN_REJECTION_ACCEPTANCE and rounds <= REJECTION_ROUNDS:
                count = min(int(missing / max(acceptance, 1e-3) * 1.2) + 64, 4_000_000)
                rows = rng.integers(0, self.n_items, size=(count, self.k), dtype=np.int64)
                images = np.sort(self._ids[rows], axis=1)
                distinct = np.all(images[:, 1:] != images[:, :-1], axis=1) if self.k > 1 else np.ones(count, dtype=bool)
                rows = rows[distinct]
            else:
                count = int(missing * 1.2) + 64
                rows = self._draw_rows(rng, count)
            if self.unordered:
                rows = _canonical(rows, self.group_sizes)
            before = collected.shape[0]
            collected = _first_unique(np.concatenate([collected, rows]), self.n_items)
            acceptance = max((collected.shape[0] - before) / count, 1e-6)
        return collected[: self.max_samples]

    def _make_pass(self, rng: np.random.Generator) -> np.ndarray:
        if self._mode == "all":
            return self._all[rng.permutation(self._total)]
        if self._mode == "subsample":
            return self._all[rng.choice(self._total, size=self.max_samples, replace=False)]
        rows = self._draw(rng)
        return rows[rng.permutation(rows.shape[0])]

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "group_sizes": list(self.group_sizes), "max_samples": self.max_samples,
                "unordered": self.unordered}

    def next_batch(self) -> dict[str, torch.Tensor]:
        return {"groups": self._take(self.batch_size)}


class _ClassIndex:
    """Items sorted by class, with each item's class block (start, size), on the device."""

    def __init__(self, labels: Any, device: torch.device) -> None:
        labels_np = _as_numpy(labels)
        if labels_np.size and labels_np.min() < 0:
            raise ValueError("class labels must not be negative")
        order = np.argsort(labels_np, kind="stable")
        classes, starts, counts = np.unique(labels_np[order], return_index=True, return_counts=True)
        self.labels_np = labels_np
        self.classes = classes
        self.class_items = [order[s: s + c] for s, c in zip(starts, counts)]
        block_start = np.zeros(int(labels_np.max()) + 1 if labels_np.size else 1, dtype=np.int64)
        block_size = np.zeros_like(block_start)
        block_start[classes] = starts
        block_size[classes] = counts
        self.sorted_items = torch.from_numpy(order.astype(np.int64)).to(device)
        self.labels = torch.from_numpy(labels_np).to(device)
        self.block_start = torch.from_numpy(block_start).to(device)
        self.block_size = torch.from_numpy(block_size).to(device)


class CRDSampler(_PassSampler):
    """CRD batches: ``{'idx': [B], 'contrast_idx': [B, nce_k + 1]}``.

    Column 0 of ``contrast_idx`` is the positive (``exact``: the item itself; ``relax``: a random item of the
    same class); columns 1.. are ``nce_k`` negatives drawn with replacement from items of other classes.
    The negatives of batch ``t`` come from a device generator seeded with (seed, t), so they resume exactly.
    """

    KIND = "crd"
    STREAM = STREAM_CRD

    def __init__(self, labels: Any, batch_size: int, nce_k: int, mode: str, seed: int, device: torch.device | str) -> None:
        index = _ClassIndex(labels, torch.device(device))
        super().__init__(index.labels_np.shape[0], batch_size, seed, device)
        if mode not in ("exact", "relax"):
            raise ValueError(f"the CRD positive mode must be 'exact' or 'relax', got '{mode}'")
        if nce_k < 1:
            raise ValueError(f"the number of CRD negatives must be at least 1, got {nce_k}")
        if len(index.classes) < 2:
            raise ValueError("CRD draws negatives from other classes, but every item has the same class")
        self.nce_k = int(nce_k)
        self.mode = mode
        self.batch_count = 0
        self._index = index
        self._generator = torch.Generator(device=self.device)

    def _make_pass(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.n_items)

    def _batch_seed(self) -> int:
        seq = np.random.SeedSequence([self.seed % _SEED_MOD, self.STREAM, 1_000_003, self.batch_count])
        return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

    def next_batch(self) -> dict[str, torch.Tensor]:
        idx = self._take(self.batch_size)
        self._generator.manual_seed(self._batch_seed())
        self.batch_count += 1
        ix = self._index
        label = ix.labels[idx]
        start = ix.block_start[label][:, None]
        size = ix.block_size[label][:, None]
        draws = torch.randint(0, 2**62, (idx.shape[0], self.nce_k + 1), generator=self._generator, device=self.device)
        others = draws[:, 1:] % (self.n_items - size)
        others = others + (others >= start) * size  # skip over the anchor's class block
        negatives = ix.sorted_items[others]
        if self.mode == "exact":
            positive = idx[:, None]
        else:
            positive = ix.sorted_items[start + draws[:, :1] % size]
        return {"idx": idx, "contrast_idx": torch.cat([positive, negatives], dim=1)}

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "nce_k": self.nce_k, "mode": self.mode}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "batch_count": int(self.batch_count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.batch_count = int(state["batch_count"])


class ClassBalancedSampler(_PassSampler):
    """RKD batches: ``{'idx': [B]}`` built from up to ``per_class`` items of each class, classes in random order.

    A pass is ``ceil(n / B)`` batches; each class is walked through its own shuffled item list. When
    ``per_class`` items of every class cannot fill a batch, the cap rises to ``ceil(B / classes)`` (and
    further rounds top up if classes are too small), so every batch is full.
    """

    KIND = "class_balanced"
    STREAM = STREAM_CLASS_BALANCED

    def __init__(self, labels: Any, batch_size: int, seed: int, device: torch.device | str, per_class: int = 5) -> None:
        index = _ClassIndex(labels, torch.device(device))
        super().__init__(index.labels_np.shape[0], batch_size, seed, device)
        if per_class < 1:
            raise ValueError(f"items per class must be at least 1, got {per_class}")
        self.per_class = int(per_class)
        self.cap = max(self.per_class, math.ceil(self.batch_size / len(index.classes)))
        self._class_items = index.class_items

    def _make_pass(self, rng: np.random.Generator) -> np.ndarray:
        lists = [rng.permutation(items) for items in self._class_items]
        cursor = [0] * len(lists)
        n_batches = steps_per_epoch(self.n_items, self.batch_size)
        out = np.empty((n_batches, self.batch_size), dtype=np.int64)
        for b in range(n_batches):
            filled = 0
            while filled < self.batch_size:
                for c in rng.permutation(len(lists)).tolist():
                    items = lists[c]
                    take = min(self.cap, items.shape[0], self.batch_size - filled)
                    out[b, filled: filled + take] = items[(cursor[c] + np.arange(take)) % items.shape[0]]
                    cursor[c] = (cursor[c] + take) % items.shape[0]
                    filled += take
                    if filled == self.batch_size:
                        break
        return out

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "per_class": self.per_class}

    def next_batch(self) -> dict[str, torch.Tensor]:
        return {"idx": self._take(1)[0]}
