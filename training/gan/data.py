"""Training samples of the chapter-4 GAN stages: (sketch, ground truth, deformed reference, tags).

Per sample (collated into batches by :func:`training.batches.collate`):

* ``sketch`` (3, h, w) in [-1, 1], lines +1, and ``color`` (3, h, w) in [-1, 1]: the jointly resized and cropped
  pair of :func:`training.augment.augment_triplet` (one bucket per step, sides multiples of 32);
* ``reference`` (3, s, s) in **[0, 1]** (what :class:`~colorize.families.gan.networks.ReferenceTagEncoder`
  takes; it normalises inside), ``s`` = ``GANConfig.reference_size``: the uncropped ground truth deformed by
  H of thesis Eq. 4.7 (:func:`training.augment.make_reference`: the reference flip, TPS warp and colour jitter
  the stage's ``augment`` section switches on; thesis §3.1, Fig. 4.2);
* ``tags`` (C,) float 0/1 over the model's tags (:meth:`training.tags.Vocabulary.multi_hot`); all zero for an
  image the tags file does not list.

Tags: the tagger stage needs them — the tags file (``data.tags``, default ``root/tags.json``) and its
vocabulary (``data.vocabulary``, default ``root/vocabulary.json``), else a one-line
:class:`~training.errors.TrainingDataError` before any model is built; it trains on the tagged images only
(an image the tags file does not list would teach "no tag at all"). Stages 1 and 2 do not read tags; when the data
folder has a tags file their samples carry the vectors over the model's tag names, else zeros.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from training.augment import augment_triplet
from training.batches import ItemSpec, TripletDataset
from training.config import AugmentConfig, DataConfig, ObjectiveConfig
from training.data import Record, TripletSource, warn
from training.errors import TrainingDataError
from training.objective import STREAM_AUGMENT, keyed_generator
from training.tags import VOCABULARY_FILE, Vocabulary, load_vocabulary, read_tags_file, tags_for

TAGS_FILE = "tags.json"


def tags_path(cfg: DataConfig) -> Path:
    return Path(cfg.tags) if cfg.tags else Path(cfg.root) / TAGS_FILE


def vocabulary_path(cfg: DataConfig) -> Path:
    return Path(cfg.vocabulary) if cfg.vocabulary else Path(cfg.root) / VOCABULARY_FILE


@dataclass(frozen=True)
class TagTable:
    """The tags of every record as head indices over ``names`` (index order = the tag head's); the 0/1 vector
    of a sample is built when it is drawn, so a 6000-tag vocabulary costs no N x C table."""

    names: tuple[str, ...]
    indices: tuple[tuple[int, ...], ...]  # per record, the heads of its tags (unique)

    def vector(self, record: int) -> Tensor:
        """(C,) float 0/1 over ``names``."""
        out = torch.zeros(len(self.names))
        out[list(self.indices[record])] = 1.0
        return out

    def counts(self) -> Tensor:
        """(C,) how many of the records carry each tag (the focal loss's α, Eq. 4.2)."""
        out = torch.zeros(len(self.names))
        for heads in self.indices:
            out[list(heads)] += 1.0
        return out


def read_record_tags(cfg: DataConfig) -> tuple[dict[str, list[str]], Vocabulary]:
    """The tags file and vocabulary the tagger stage needs (one-line data errors naming the fix)."""
    path = tags_path(cfg)
    if not path.is_file():
        raise TrainingDataError(f"the gan_tagger stage needs image tags, and {path} does not exist: put a tags file "
                                "(JSON image name -> tags, or CSV name,tags) there or point data.tags at one, then "
                                "write its vocabulary with python -m training.prepare --tags FILE --out ROOT")
    tags = read_tags_file(path)
    return tags, load_vocabulary(vocabulary_path(cfg))


def tagged_records(records: list[Record], tags: dict[str, list[str]], where: Path) -> list[Record]:
    """The records the tags file lists (a warning counts the others; an error when none is listed)."""
    kept = [rec for rec in records if tags_for(tags, rec.name) is not None]
    if not kept:
        raise TrainingDataError(f"no image of the data folder is listed in the tags file {where} (e.g. "
                                f"{records[0].name}); name the images as the tags file does")
    if len(kept) < len(records):
        warn(f"{len(records) - len(kept)} of {len(records)} images are not in the tags file {where} and are left "
             "out of the tagger's training")
    return kept


def tag_table(records: list[Record], tags: dict[str, list[str]] | None, names: tuple[str, ...]) -> TagTable:
    """Every record's tags over ``names`` (none without ``tags`` or for an unlisted image; tags outside ``names``
    are ignored, as :meth:`training.tags.Vocabulary.multi_hot` does)."""
    vocab = Vocabulary(names, (0,) * len(names), 0)
    rows = []
    for rec in records:
        found = (vocab.index(t) for t in (tags_for(tags, rec.name) or [] if tags else []))
        rows.append(tuple(sorted({i for i in found if i is not None})))
    return TagTable(names, tuple(rows))


def optional_tags(cfg: DataConfig) -> dict[str, list[str]] | None:
    """The data folder's tags file when it has one (stages 1 and 2 carry the vectors but do not need them)."""
    path = tags_path(cfg)
    return read_tags_file(path) if path.is_file() else None


class GANDataset(TripletDataset):
    """The samples of the module docstring, one per :class:`~training.batches.ItemSpec` (unreadable records are
    passed over as in :class:`~training.batches.TripletDataset`)."""

    def __init__(self, source: TripletSource, augment: AugmentConfig, reference_size: int, table: TagTable,
                 seed: int, max_bad: int | None = None) -> None:
        no_noise: Any = None  # GAN samples draw no diffusion noise
        super().__init__(source, replace(augment, reference_size=reference_size), ObjectiveConfig(), no_noise, seed,
                         masks=False, max_bad=max_bad)
        self.table = table

    def make_sample(self, spec: ItemSpec, index: int, parts: list[Tensor]) -> dict[str, Any]:
        color, sketch = parts[0], parts[1]
        sample = augment_triplet(color, sketch, spec.bucket, self.augment,
                                 keyed_generator(self.seed, STREAM_AUGMENT, spec.step, spec.slot))
        return {"sketch": sample["sketch"], "color": sample["color"],
                "reference": ((sample["reference"] + 1) / 2).clamp(0, 1), "tags": self.table.vector(index)}


__all__ = ["GANDataset", "TAGS_FILE", "TagTable", "optional_tags", "read_record_tags", "tag_table", "tagged_records",
           "tags_path", "vocabulary_path"]
