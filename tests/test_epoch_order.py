"""How fix's loop reads the training split: a DataLoader over a map-style dataset is shuffled by index, loading only the
rows of each batch (memory holds a batch, not the split), in the same batches as the shuffle buffer gives when the
split fits it; other data pass through the bounded buffer, whose size bounds how far a sample can move."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from biasaudit.data.adapter import Adapter
from biasaudit.data.modality import Modality
from biasaudit.training.epoch_batches import SAMPLE_INDEX, epoch_shape, shuffled_batches
from biasaudit.training.sample_access import indexed_split
from biasaudit.training.train_config import TrainConfig

ROWS = 50


class Rows(Dataset):
    """ROWS dict samples; counts the samples read."""

    def __init__(self) -> None:
        self.read = 0

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, i: int) -> dict:
        self.read += 1
        return {"x": torch.tensor([float(i)]), "label": torch.tensor(i % 2)}


class Streamed(IterableDataset):
    def __iter__(self):
        for i in range(ROWS):
            yield {"x": torch.tensor([float(i)]), "label": torch.tensor(i % 2)}


class RowsAdapter(Adapter):
    modalities = (Modality("x", kind="features", key="x"),)
    num_classes = 2

    def __init__(self, source: str) -> None:
        self.source, self.rows = source, Rows()

    def data(self, split, *, batch_size):
        if self.source == "map":
            return DataLoader(self.rows, batch_size=batch_size)
        if self.source == "iterable":
            return DataLoader(Streamed(), batch_size=batch_size)

        def generated():  # the same rows as plain dict batches, from a generator: nothing to index
            for start in range(0, ROWS, batch_size):
                stop = min(start + batch_size, ROWS)
                yield {"x": torch.arange(start, stop, dtype=torch.float32)[:, None], "label": torch.arange(start, stop) % 2}

        return generated()


def orders(adapter: Adapter, config: TrainConfig) -> list[list[int]]:
    return [b[SAMPLE_INDEX].tolist() for b in shuffled_batches(adapter, config=config, epoch=1, index=True)]


def test_a_map_style_loader_is_read_by_index_and_gives_the_buffer_s_batches():
    config = TrainConfig(epochs=1, batch_size=8, seed=5, holdout=0.2)
    indexed, generated = RowsAdapter("map"), RowsAdapter("generated")
    assert indexed_split(indexed, "train") is not None and indexed_split(generated, "train") is None
    assert orders(indexed, config) == orders(generated, config), "the two paths must train on the same batches"
    for batch in shuffled_batches(indexed, config=config, epoch=0, index=True):
        assert batch["x"][:, 0].long().tolist() == batch[SAMPLE_INDEX].tolist()  # each row is the sample it names
    assert epoch_shape(indexed, config=config) == epoch_shape(generated, config=config)


def test_reading_by_index_loads_one_batch_at_a_time_not_the_split():
    adapter = RowsAdapter("map")
    batches = shuffled_batches(adapter, config=TrainConfig(epochs=1, batch_size=8), epoch=0)
    next(batches)
    assert adapter.rows.read == 8, f"{adapter.rows.read} samples read for the first batch of 8"


def test_data_without_index_pass_through_a_buffer_of_the_given_size():
    config = TrainConfig(epochs=1, batch_size=5, seed=1, shuffle_buffer=10)
    seen = orders(RowsAdapter("iterable"), config)
    assert sorted(i for b in seen for i in b) == list(range(ROWS))
    # Buffers of 10 samples: the first two batches come from samples 0-9, the next two from 10-19, ...
    for k, batch in enumerate(seen):
        assert {i // 10 for i in batch} == {k // 2}, f"batch {k} mixes samples beyond one buffer: {batch}"
    whole = orders(RowsAdapter("iterable"), TrainConfig(epochs=1, batch_size=5, seed=1))
    assert np.std([np.mean(b) for b in whole]) > 0 and whole != seen
