"""The training data stream, resumable at any batch.

detectron2's training loader draws its shuffling seed at start and lets each data-loader worker
augment with its own running random state: a run stopped and resumed sees other data (other
order, other crops and flips) than an uninterrupted one. Here the stream is a pure function of
``(seed, position)``:

* the order: detectron2's ``TrainingSampler`` stream (``shuffle(range(N)) + shuffle(range(N))
  + ...`` from ``seed``, rank ``r`` of ``W`` taking positions ``r, r + W, ...``), started at any
  position (``TrainStream.start``);
* the augmentation of the sample at global position ``p``: the mapper runs with Python's,
  NumPy's and torch's generators seeded from ``(seed, p)`` (``seeded_rng``), whichever worker
  process maps it;
* batches are consecutive positions (``batch_per_rank`` samples per process and step); the
  crops of semantic-segmentation training have one size, so detectron2's aspect-ratio grouping
  (which would make batches depend on earlier samples) is not used.

So the data of step ``i`` is the same whether the run was resumed or not: ``Trainer`` saves the
seed in its checkpoints and starts the stream at ``(iteration + 1) * batch_per_rank``.
"""

import itertools
import logging
from typing import Callable, List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detectron2.data import build_detection_train_loader
from detectron2.utils import comm

from ..utils.rng import seeded_rng

__all__ = ["TrainStream", "PositionedDataset", "ResumableTrainLoader", "build_resumable_loader"]

logger = logging.getLogger(__name__)


def _sample_seed(seed: int, global_position: int) -> int:
    """The seed of the augmentation of the sample at ``global_position`` of the stream."""
    entropy = [int(seed) % 2**63, int(global_position)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class TrainStream(Sampler):
    """Infinite ``(index, global position)`` stream of this rank, from position ``start``."""

    def __init__(self, size: int, seed: Optional[int] = None, shuffle: bool = True):
        if size <= 0:
            raise ValueError(f"TrainStream: the training set is empty (size {size})")
        self.size = int(size)
        self.shuffle = shuffle
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()
        #: position (in this rank's stream) of the first sample to produce
        self.start = 0

    def _indices(self):
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=g).tolist()
            else:
                yield from range(self.size)

    def __iter__(self):
        mine = itertools.islice(self._indices(), self.rank, None, self.world_size)
        for pos, index in enumerate(itertools.islice(mine, self.start, None), self.start):
            yield index, pos * self.world_size + self.rank


class PositionedDataset(Dataset):
    """``dataset[(index, global position)]``: ``mapper(dicts[index])`` with the generators
    seeded from ``(seed, position)``; ``seed`` is read from ``stream`` at call time."""

    def __init__(self, dicts: List[dict], mapper: Callable, stream: TrainStream):
        self.dicts = dicts
        self.mapper = mapper
        self.stream = stream

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, key):
        index, position = key
        with seeded_rng(_sample_seed(self.stream.seed, position)):
            return self.mapper(dict(self.dicts[index]))


class ResumableTrainLoader:
    """An iterable of batches (lists of mapped dicts) whose ``stream`` can be repositioned
    before iteration starts (``Trainer.load_state_dict``)."""

    def __init__(self, loader, stream: TrainStream, batch_per_rank: int):
        self.loader = loader
        self.stream = stream
        self.batch_per_rank = batch_per_rank

    def __iter__(self):
        return iter(self.loader)

    def state_dict(self) -> dict:
        return {
            "seed": self.stream.seed,
            "batch_per_rank": self.batch_per_rank,
            "world_size": self.stream.world_size,
        }

    def resume_at(self, step: int, state: Optional[dict]) -> None:
        """Continue the stream at training step ``step`` of the run that saved ``state``."""
        if not state:
            logger.warning(
                "The checkpoint has no data-stream state (written by an older version): the "
                "resumed run sees other data than an uninterrupted one would."
            )
            self.stream.start = step * self.batch_per_rank
            return
        same = (
            state["batch_per_rank"] == self.batch_per_rank
            and state["world_size"] == self.stream.world_size
        )
        if not same:
            logger.warning(
                f"Resuming with {self.stream.world_size} processes x {self.batch_per_rank} images "
                f"instead of {state['world_size']} x {state['batch_per_rank']}: the data order "
                "differs from an uninterrupted run from here on."
            )
        self.stream.seed = int(state["seed"])
        self.stream.start = step * self.batch_per_rank


def build_resumable_loader(cfg, dicts: List[dict], mapper: Callable) -> ResumableTrainLoader:
    """The training loader of ``dicts`` mapped by ``mapper``: ``SOLVER.IMS_PER_BATCH`` images per
    step over all processes, ``DATALOADER.NUM_WORKERS`` workers per process, the stream seeded by
    ``SEED`` (or, when ``SEED`` < 0, a seed shared by the processes)."""
    world = comm.get_world_size()
    batch = cfg.SOLVER.IMS_PER_BATCH // world
    stream = TrainStream(len(dicts), seed=cfg.SEED if cfg.SEED >= 0 else None)
    dataset = PositionedDataset(dicts, mapper, stream)
    loader = build_detection_train_loader(
        dataset=dataset,
        mapper=None,
        sampler=stream,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # the loader's own generator: creating its iterator leaves the global RNG alone
        seed=stream.seed,
    )
    return ResumableTrainLoader(loader, stream, batch)
