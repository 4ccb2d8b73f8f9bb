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
from training.config import AugmentConfig, ObjectiveConfig
from training.data import TripletSource
from training.objective import (
    STREAM_AUGMENT,
    STREAM_BUCKET,
    STREAM_NOISE,
    STREAM_ORDER,
    STREAM_THRESHOLD,
    NoiseSpec,
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

    def bucket(self, step: int) -> tuple[int, int]:
        return choose_bucket(self.buckets, keyed_generator(self.seed, STREAM_BUCKET, step))

    def item(self, step: int, slot: int, bucket: tuple[int, int]) -> ItemSpec:
        epoch, offset = divmod(step * self.global_batch + slot, self.num_items)
        return ItemSpec(int(self.permutation(epoch)[offset]), step, slot, bucket)

    def micro_batch(self, step: int, micro: int, rank: int) -> list[ItemSpec]:
        bucket = self.bucket(step)
        first = micro * self.world_size * self.batch_size + rank * self.batch_size
        return [self.item(step, first + i, bucket) for i in range(self.batch_size)]


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
    ``th_r`` to the sample."""

    def __init__(
        self, source: TripletSource, augment: AugmentConfig, objective: ObjectiveConfig, noise: NoiseSpec, seed: int,
        masks: bool = False,
    ) -> None:
        self.source, self.augment, self.objective, self.noise, self.seed = source, augment, objective, noise, seed
        self.masks = masks
        if masks:
            missing = [r.name for r in source.records if r.mask is None]
            if missing:
                raise ValueError(f"{len(missing)} record(s) have no mask (e.g. {missing[0]!r}); this stage needs "
                                 "foreground masks in mask/ (write them with `python -m training.prepare --masks`)")

    def __len__(self) -> int:
        return len(self.source.records)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """Colour (3, H, W) and sketch (3, H, W), both in [0, 1]."""
        rec = self.source.records[index]
        return pil_to_tensor(self.source.open(rec.color))[0], pil_to_tensor(self.source.open(rec.sketch))[0]

    def load_mask(self, index: int) -> Tensor:
        """The record's foreground mask (1, H, W) in [0, 1] (first channel of the stored image)."""
        return pil_to_tensor(self.source.open(self.source.records[index].mask))[0][:1]

    def __getitem__(self, spec: ItemSpec) -> dict[str, Any]:
        color, sketch = self.load(spec.index)
        mask = self.load_mask(spec.index) if self.masks else None
        sample = augment_triplet(color, sketch, spec.bucket, self.augment,
                                 keyed_generator(self.seed, STREAM_AUGMENT, spec.step, spec.slot), mask)
        g = keyed_generator(self.seed, STREAM_NOISE, spec.step, spec.slot)
        sample.update(draw_sample_noise(g, self.noise, spec.bucket, self.objective))
        if self.masks:
            sample.update(draw_thresholds(keyed_generator(self.seed, STREAM_THRESHOLD, spec.step, spec.slot),
                                          self.objective))
        sample["slot"] = torch.tensor(spec.slot)
        sample["index"] = torch.tensor(spec.index)
        return sample


def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
