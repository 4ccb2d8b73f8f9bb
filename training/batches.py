"""Which sample goes where: a deterministic, resumable batch plan and the map-style triplet dataset.

Sample ``slot`` ``s`` of global step ``k`` is stream position ``p = k·G + s`` (``G`` = global batch =
``batch_size × world_size × grad_accum``): epoch ``p // N`` (a fresh permutation per epoch), item
``perm[p % N]``. Process ``r`` takes slots ``m·W·b + r·b … + b`` of micro-batch ``m``. Every random draw of a
sample (augmentation, timestep, noises, drops) comes from generators keyed by (seed, step, slot), so

* resuming at step ``k`` needs nothing but ``k`` (the data position) — no iterator state to save;
* one process with batch ``G`` sees exactly the samples that ``W`` processes with batch ``G/W`` see together.

One aspect bucket per global step (all processes agree, as the official loader's per-batch seeds).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from colorize.preprocess import pil_to_tensor
from training.augment import augment_triplet, choose_bucket
from training.bad_samples import FAILED_KEY, REPORT_KEY, BadSample, read_failure
from training.config import AugmentConfig, ObjectiveConfig
from training.data import READ_ERRORS, TripletSource, check_masks, describe_ref
from training.objective import (
    STREAM_AUGMENT,
    STREAM_BUCKET,
    STREAM_CONDITION,
    STREAM_NOISE,
    STREAM_ORDER,
    STREAM_THRESHOLD,
    NoiseSpec,
    draw_condition_drops,
    draw_sample_noise,
    draw_thresholds,
    keyed_generator,
)


@dataclass(frozen=True)
class ItemSpec:
    """One sample to produce: dataset index, global step, slot in the global batch, crop size (h, w)."""

    index: int
    step: int
    slot: int
    bucket: tuple[int, int]


class BatchPlan:
    """Pure function of (step, micro-batch, rank) → the items to load."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        grad_accum: int,
        world_size: int,
        seed: int,
        buckets: tuple[tuple[int, int], ...],
    ) -> None:
        if num_items < 1:
            raise ValueError("empty dataset")
        self.num_items, self.batch_size, self.grad_accum, self.world_size = num_items, batch_size, grad_accum, world_size
        self.seed, self.buckets = seed, buckets
        self.global_batch = batch_size * grad_accum * world_size
        self._perms: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = torch.randperm(self.num_items, generator=keyed_generator(self.seed, STREAM_ORDER, epoch))
        return self._perms[epoch]

    def position(self, step: int) -> dict[str, int]:
        """The data position at the start of ``step`` (epoch and offset inside it)."""
        epoch, offset = divmod(step * self.global_batch, self.num_items)
        return {"step": step, "epoch": epoch, "offset": offset, "global_batch": self.global_batch}

    def epoch_of(self, step: int) -> float:
        """The data epoch at the start of ``step`` (fractional)."""
        return step * self.global_batch / self.num_items

    def bucket(self, step: int) -> tuple[int, int]:
        return choose_bucket(self.buckets, keyed_generator(self.seed, STREAM_BUCKET, step))

    def item(self, step: int, slot: int, bucket: tuple[int, int]) -> ItemSpec:
        epoch, offset = divmod(step * self.global_batch + slot, self.num_items)
        return ItemSpec(int(self.permutation(epoch)[offset]), step, slot, bucket)

    def micro_batch(self, step: int, micro: int, rank: int) -> list[ItemSpec]:
        bucket = self.bucket(step)
        first = micro * self.world_size * self.batch_size + rank * self.batch_size
        return [self.item(step, first + i, bucket) for i in range(self.batch_size)]


LANDSCAPE, PORTRAIT, SQUARE = "landscape", "portrait", "square"


def aspect_class(ratio: float) -> str:
    """``ratio`` = width / height → landscape (w > h), portrait (h > w) or square."""
    return LANDSCAPE if ratio > 1 else PORTRAIT if ratio < 1 else SQUARE


def fits(bucket: tuple[int, int], kind: str, min_ratio: float) -> bool:
    """Whether a bucket suits a batch of ``kind`` whose most square image has long/short ratio ``min_ratio``
    (official ``validate_crop_size``, ``data/collate.py``): square buckets always, others when their long side is
    at most ``int(min_ratio · short) − 2`` and their orientation is the batch's."""
    h, w = bucket
    if h == w:
        return True
    if (kind == PORTRAIT) != (h > w) or kind == SQUARE:
        return False
    long, short = max(h, w), min(h, w)
    return long <= int(min_ratio * short) - 2


class AspectBatchPlan(BatchPlan):
    """The official aspect-ratio batching (``data/sampler.py`` ``AspectRatioSampler`` and ``data/collate.py`` at
    commit ``ec78784``), as a pure function of the step.

    Records are grouped by orientation (landscape, portrait, square: width / height of each image). In every
    epoch, each group is sorted by aspect ratio (ties in a random order), shuffled within blocks of 8 global
    batches (similar ratios stay together), cut into global batches (the rest of a group waits for the next
    epoch, as the official drops it), and the batches of all groups are shuffled together. A step's bucket: for
    a square batch one of the square buckets at random, otherwise the bucket of the batch's orientation (or a
    square one) whose long/short ratio is closest to the batch's most square image among those that fit it
    (:func:`fits`). Every epoch has the same number of steps, so step → (epoch, batch) needs no history."""

    def __init__(self, aspects: list[float], batch_size: int, grad_accum: int, world_size: int, seed: int,
                 buckets: tuple[tuple[int, int], ...]) -> None:
        super().__init__(len(aspects), batch_size, grad_accum, world_size, seed, buckets)
        self.aspects = [float(a) for a in aspects]
        groups: dict[str, list[int]] = {LANDSCAPE: [], PORTRAIT: [], SQUARE: []}
        for i, a in enumerate(self.aspects):
            groups[aspect_class(a)].append(i)
        self.groups = {k: v for k, v in groups.items() if v}
        self.batches_per_epoch = sum(len(v) // self.global_batch for v in self.groups.values())
        if self.batches_per_epoch == 0:
            sizes = ", ".join(f"{len(v)} {k}" for k, v in self.groups.items())
            raise ValueError(f"no orientation group has a whole global batch of {self.global_batch} images ({sizes}); "
                             "lower run.batch_size or turn augment.aspect_buckets off")
        for kind, members in self.groups.items():
            if len(members) >= self.global_batch and not any(fits(b, kind, 1.0) for b in buckets):
                raise ValueError(f"augment.buckets has no bucket for the {kind} images: add a square bucket, "
                                 "e.g. [1024, 1024]")
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            if len(self._epochs) > 2:
                self._epochs.clear()
            gen = keyed_generator(self.seed, STREAM_ORDER, epoch)
            out: list[list[int]] = []
            block = 8 * self.global_batch
            for members in self.groups.values():
                ties = torch.rand(len(members), generator=gen).tolist()
                order = [m for _, _, m in sorted(zip((self.aspects[m] for m in members), ties, members))]
                for start in range(0, len(order), block):
                    part = order[start:start + block]
                    perm = torch.randperm(len(part), generator=gen).tolist()
                    order[start:start + block] = [part[j] for j in perm]
                n = len(order) // self.global_batch
                out.extend(order[i * self.global_batch:(i + 1) * self.global_batch] for i in range(n))
            perm = torch.randperm(len(out), generator=gen).tolist()
            self._epochs[epoch] = [out[j] for j in perm]
        return self._epochs[epoch]

    def step_items(self, step: int) -> list[int]:
        epoch, b = divmod(step, self.batches_per_epoch)
        return self.epoch_batches(epoch)[b]

    def position(self, step: int) -> dict[str, int]:
        epoch, b = divmod(step, self.batches_per_epoch)
        return {"step": step, "epoch": epoch, "offset": b * self.global_batch, "global_batch": self.global_batch}

    def epoch_of(self, step: int) -> float:
        return step / self.batches_per_epoch

    def bucket(self, step: int) -> tuple[int, int]:
        items = self.step_items(step)
        kind = aspect_class(self.aspects[items[0]])
        gen = keyed_generator(self.seed, STREAM_BUCKET, step)
        if kind == SQUARE:
            squares = [b for b in self.buckets if b[0] == b[1]]
            return tuple(squares[int(torch.randint(len(squares), (), generator=gen))])  # type: ignore[return-value]
        ratios = [max(self.aspects[i], 1 / self.aspects[i]) for i in items]
        least = min(ratios)
        valid = [b for b in self.buckets if fits(b, kind, least)]
        return tuple(min(valid, key=lambda b: abs(max(b) / min(b) - least)))  # type: ignore[return-value]

    def item(self, step: int, slot: int, bucket: tuple[int, int]) -> ItemSpec:
        return ItemSpec(self.step_items(step)[slot], step, slot, bucket)


class PlanSampler:
    """Batch sampler for ``DataLoader``: micro-batches of this rank for steps ``start .. stop-1``."""

    def __init__(self, plan: BatchPlan, rank: int, start: int, stop: int) -> None:
        self.plan, self.rank, self.start, self.stop = plan, rank, start, stop

    def __iter__(self) -> Iterator[list[ItemSpec]]:
        for step in range(self.start, self.stop):
            for micro in range(self.plan.grad_accum):
                yield self.plan.micro_batch(step, micro, self.rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.plan.grad_accum


class TripletDataset(Dataset):
    """Loads and augments one triplet per :class:`ItemSpec`, and draws its diffusion noise.

    ``masks=True`` (v1.5/v2 stages) also loads each record's foreground mask (``mask/`` folder or zip shards;
    every record must have one) and adds ``mask``, ``reference_mask`` and the per-sample thresholds ``th_s``,
    ``th_r`` to the sample.

    A record that cannot be read is replaced by the next readable one in dataset order (:mod:`training.bad_samples`);
    the sample then reports the records passed over under ``REPORT_KEY``. ``known_bad`` (index → report) are
    passed over without reading; once more than ``max_bad`` are known an item holds no sample, only
    ``FAILED_KEY`` and all known reports (the trainer then stops with the list)."""

    def __init__(
        self, source: TripletSource, augment: AugmentConfig, objective: ObjectiveConfig, noise: NoiseSpec, seed: int,
        masks: bool = False, max_bad: int | None = None,
    ) -> None:
        self.source, self.augment, self.objective, self.noise, self.seed = source, augment, objective, noise, seed
        self.masks = masks
        if masks:
            check_masks(source.records)
        self.max_bad = len(source.records) - 1 if max_bad is None else max_bad
        self.known_bad: dict[int, BadSample] = {}
        self._index_of_key: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.source.records)

    def mark_bad(self, reports: list[BadSample]) -> None:
        """Pass over these records from now on without reading them (reports of records not here are ignored)."""
        if not reports:
            return
        if self._index_of_key is None:
            self._index_of_key = {rec.key: i for i, rec in enumerate(self.source.records)}
        for bad in reports:
            index = self._index_of_key.get(bad.key)
            if index is not None:
                self.known_bad[index] = bad

    def read_record(self, index: int) -> tuple[list[Tensor], BadSample | None]:
        """The record's parts (colour, sketch[, mask]) in [0, 1], or no parts and the report of the part that
        could not be read."""
        rec = self.source.records[index]
        parts = []
        for ref in (rec.color, rec.sketch, rec.mask) if self.masks else (rec.color, rec.sketch):
            try:
                parts.append(pil_to_tensor(self.source.open(ref))[0])
            except READ_ERRORS as e:
                return [], BadSample(rec.key, describe_ref(ref), read_failure(e))
        return parts, None

    def first_readable(self, index: int) -> tuple[int | None, list[Tensor], list[BadSample]]:
        """``(index loaded, its parts, the unreadable records passed over)``: the record at ``index`` or the next
        readable one in dataset order; ``(None, [], all known bad)`` once more than ``max_bad`` are known."""
        passed: list[BadSample] = []
        n = len(self)
        for j in ((index + k) % n for k in range(n)):
            bad = self.known_bad.get(j)
            if bad is None:
                parts, bad = self.read_record(j)
                if bad is None:
                    return j, parts, passed
                self.known_bad[j] = bad
            passed.append(bad)
            if len(self.known_bad) > self.max_bad:
                break
        return None, [], list(self.known_bad.values())

    def __getitem__(self, spec: ItemSpec) -> dict[str, Any]:
        index, parts, passed = self.first_readable(spec.index)
        if index is None:
            return {REPORT_KEY: tuple(passed), FAILED_KEY: True}
        sample = self.make_sample(spec, index, parts)
        sample["slot"] = torch.tensor(spec.slot)
        sample["index"] = torch.tensor(index)
        if passed:
            sample[REPORT_KEY] = tuple(passed)
        return sample

    def make_sample(self, spec: ItemSpec, index: int, parts: list[Tensor]) -> dict[str, Any]:
        """The training sample of record ``index`` (its parts read by :meth:`read_record`): the augmented
        triplet and its diffusion noise, drops, thresholds and score."""
        color, sketch = parts[0], parts[1]
        mask = parts[2][:1] if self.masks else None
        sample = augment_triplet(color, sketch, spec.bucket, self.augment,
                                 keyed_generator(self.seed, STREAM_AUGMENT, spec.step, spec.slot), mask)
        g = keyed_generator(self.seed, STREAM_NOISE, spec.step, spec.slot)
        sample.update(draw_sample_noise(g, self.noise, spec.bucket, self.objective))
        if self.masks:
            sample.update(draw_thresholds(keyed_generator(self.seed, STREAM_THRESHOLD, spec.step, spec.slot),
                                          self.objective))
        sample.update(draw_condition_drops(keyed_generator(self.seed, STREAM_CONDITION, spec.step, spec.slot),
                                           self.objective))
        score = self.source.records[index].score
        sample["score"] = torch.tensor(self.objective.default_score if score is None else score, dtype=torch.float32)
        return sample


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked samples; the items' unreadable-record reports, if any, as one list under ``REPORT_KEY``; only the
    reports and ``FAILED_KEY`` when an item gave up."""
    reports = [bad for it in items for bad in it.get(REPORT_KEY, ())]
    if any(it.get(FAILED_KEY) for it in items):
        return {REPORT_KEY: reports, FAILED_KEY: True}
    batch: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != REPORT_KEY}
    if reports:
        batch[REPORT_KEY] = reports
    return batch
