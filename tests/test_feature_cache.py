"""The feature cache of fix's loop (biasaudit/training/feature_cache.py): frozen encoders computed once, and training
with the cache giving the very same weights as training without it.

What a user would see go wrong without these: a `fix` whose weights change when the cache is on (a cut gradient, a
dropout draw that moved, a row rounded in a batch of another size), an encoder that still runs every epoch (no
speed-up), a cache directory refused only after an hour of work, a silent cache over randomly augmented data.

The training here mirrors loop.py's epoch loop step by step (seeded run, method.prepare, set_training_modes,
process_batches with the SAMPLE_INDEX column stripped, `with cache.serving(indices)` around method.gradients).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from biasaudit.errors import BiasAuditError, InputError
from biasaudit.training import rng_states
from biasaudit.training.driver import method_parameters
from biasaudit.training.epoch_batches import SAMPLE_INDEX, process_batches, shuffled_batches, without_index
from biasaudit.training.feature_cache import CacheSettings, FeatureCache, check_cache_settings
from biasaudit.training.feature_cache_store import laid_out, leaf_of
from biasaudit.training.methods import make_method
from biasaudit.training.model_modes import set_training_modes
from biasaudit.training.optimizers import make_optimizer
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.training_view import training_view

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from frozen_encoder import FrozenEncoderAdapter

sys.path.pop(0)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions on two busy cores: torch's thread pool waits far longer than it computes (60 ms against
    0.3 ms a call here). Runs with and without the cache are compared under the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_like_loop(adapter, method_name, config, settings=None, *, model=None):
    """loop.py's training, step for step, with the cache built after method.prepare: (model, cache, note)."""
    model = adapter.build_model() if model is None else model
    method = make_method(method_name)
    steps = 0
    with rng_states.seeded_run(config.seed):
        model.to(CPU)
        method.prepare(model, training_view(adapter, config), device=CPU)
        cache, note = (
            (None, "") if settings is None else FeatureCache.build(model, adapter, config=config, settings=settings, device=CPU)
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable + method_parameters(method), name="adam", lr=1e-2, weight_decay=0.0, momentum=0.0)
        for epoch in range(config.epochs):
            set_training_modes(model)
            for part in process_batches(adapter, config=config, epoch=epoch, index=True):
                indices, batch = part.batch[SAMPLE_INDEX], without_index(part.batch)
                optimizer.zero_grad(set_to_none=True)
                share = len(indices) / part.size  # one process: 1
                with cache.serving(indices) if cache is not None else contextlib.nullcontext():
                    method.gradients(model, adapter, batch, step=steps, total_steps=1000, device=CPU, share=share)
                optimizer.step()
                steps += 1
    return model, cache, note


class Streamed(FrozenEncoderAdapter):
    """The same data as a plain iterator of batches: not readable by index, so the loop shuffles it through its
    buffer (epoch_batches.process_batches), and the fill pass batches it the same way."""

    def data(self, split, *, batch_size):
        return iter(super().data(split, batch_size=batch_size))


@functools.cache
def uncached_weights(
    n, method_name, batch_size, holdout=0.0, shuffle_buffer=100_000, stem=False, frozen_text=False, streamed=False
):
    adapter = _adapter(n, stem=stem, streamed=streamed)
    config = TrainConfig(epochs=2, batch_size=batch_size, holdout=holdout, shuffle_buffer=shuffle_buffer)
    model = _model(adapter, frozen_text)
    return train_like_loop(adapter, method_name, config, model=model)[0].state_dict()


def _adapter(n, *, stem=False, streamed=False):
    return (Streamed if streamed else FrozenEncoderAdapter)(n, stem=stem)


def _model(adapter, frozen_text):
    model = adapter.build_model()
    if frozen_text:
        model.text.requires_grad_(False)
    return model


def assert_same_weights(expected, model):
    got = model.state_dict()
    assert list(got) == list(expected)
    changed = [name for name in got if not torch.equal(got[name], expected[name])]
    assert not changed, f"training with the cache changed {changed}"


class RowCounter:
    """Rows through the encoder's first convolution: what the encoder really computed (a served call runs none)."""

    def __init__(self, model):
        self.rows, self.calls = 0, []
        model.image.encoder[0].register_forward_hook(self)

    def __call__(self, module, args, output):
        self.rows += output.shape[0]
        self.calls.append(output.shape[0])


def test_encoder_runs_once_per_sample_to_fill_and_never_in_served_epochs_with_the_same_weights():
    adapter, config = _adapter(96), TrainConfig(epochs=2, batch_size=16)
    model = adapter.build_model()
    counter = RowCounter(model)
    original = model.image.encoder.forward
    with rng_states.seeded_run(0):
        before = torch.get_rng_state()
        cache, note = FeatureCache.build(model, adapter, config=config, settings=CacheSettings(), device=CPU)
        assert torch.equal(torch.get_rng_state(), before)  # the fill drew nothing: dropout after it draws as without
    # The 96 samples once, plus the probe's one forward of the first batch (16 rows).
    assert counter.rows == 96 + 16
    assert cache is not None
    assert note == "cached the outputs of frozen module 'image.encoder' for 96 training samples (12 KiB in memory)."
    counter.rows = 0
    model, cache, _ = train_like_loop(adapter, "ce", config, CacheSettings(), model=model)
    built = counter.rows - (96 + 16)  # train_like_loop built a second cache on the same model
    assert built == 0, f"the encoder computed {built} rows while every batch was served"
    assert cache.usage() == {"served": 12, "ran": 0}
    assert "forward" not in vars(model.image.encoder) and model.image.encoder.forward == original  # served only inside
    assert_same_weights(uncached_weights(96, "ce", 16), model)
    settings = cache.settings()
    assert settings["modules"] == ["image.encoder"] and settings["samples"] == 96 and settings["storage"] == "memory"
    assert settings["bytes"] == 96 * 32 * 4  # 32 float32 features a sample


@pytest.mark.parametrize("streamed", [False, True], ids=["by-index", "through-the-buffer"])
def test_balgrad_with_held_out_rows_and_shorter_last_batches_gives_the_same_weights(streamed):
    """BalGrad reruns the model for its unimodal logits (two calls per step); 100 samples, 10% held out, batches of 7
    (and, streamed, shuffle buffers of about 40) leave shorter last batches, whose samples change every epoch: there
    the encoder runs, since a matrix product may round a row differently in a batch of another size."""
    adapter = _adapter(100, streamed=streamed)
    config = TrainConfig(epochs=2, batch_size=7, holdout=0.1, shuffle_buffer=40)
    model = adapter.build_model()
    counter = RowCounter(model)
    build = FeatureCache.build
    with pytest.MonkeyPatch.context() as patch:  # where the build ends and training starts, in the encoder's calls
        patch.setattr(FeatureCache, "build", lambda *a, **k: (build(*a, **k), setattr(counter, "built", len(counter.calls)))[0])
        model, cache, note = train_like_loop(adapter, "balgrad", config, CacheSettings(), model=model)
    assert_same_weights(uncached_weights(100, "balgrad", 7, 0.1, 40, streamed=streamed), model)
    samples = cache.settings()["samples"]
    assert note.startswith(f"cached the outputs of frozen module 'image.encoder' for {samples} training samples")
    usage = cache.usage()
    assert usage["served"] > 0 and usage["ran"] > 0
    # The fill computed every sample in a batch of 7; in training the encoder ran only on the shorter batches.
    assert set(counter.calls[: counter.built]) == {7}
    trained = counter.calls[counter.built :]
    assert len(trained) == usage["ran"] and max(trained) < 7


def test_disk_cache_writes_memmap_files_under_the_directory_and_gives_the_same_weights(tmp_path):
    adapter, config = _adapter(96), TrainConfig(epochs=2, batch_size=16)
    directory = tmp_path / "cache" / "deeper"
    model, cache, note = train_like_loop(adapter, "ce", config, CacheSettings(directory=directory))
    assert_same_weights(uncached_weights(96, "ce", 16), model)
    files = [Path(f) for f in cache.settings()["files"]]
    assert len(files) == 1 and files[0].parent == directory and f"in memmap files under {directory}" in note
    name = files[0].name
    assert name.startswith("image.encoder-train-n96-") and name.endswith("-0.bin")  # module, split, count, hash, leaf
    stored = np.memmap(files[0], dtype=np.uint8, mode="r")
    assert stored.size == 96 * 32 * 4
    # The bytes are the encoder's own outputs: sample 5's row, read back as float32, is what the encoder gives.
    row = int(cache._slot[5])
    with torch.no_grad():
        model.eval()
        image = adapter._splits["train"][0][5:6]
        alone = model.image.encoder(image)
    np.testing.assert_allclose(stored.reshape(96, -1)[row].view(np.float32), alone[0].numpy(), rtol=1e-5, atol=1e-6)
    cache.close()
    assert not files[0].exists()


def test_a_frozen_module_fed_by_trainable_layers_is_left_out_and_the_rest_cached():
    """stem=True: a trainable 1x1 convolution before the frozen encoder (its gradient flows through the encoder);
    the text layer frozen too, which reads raw inputs and can be cached."""
    adapter, config = _adapter(96, stem=True), TrainConfig(epochs=2, batch_size=16)
    model, cache, note = train_like_loop(adapter, "ce", config, CacheSettings(), model=_model(adapter, True))
    assert cache.settings()["modules"] == ["text"]
    assert cache.settings()["excluded"] == {"image.encoder": "receives gradient from trainable parameters upstream"}
    assert "left out frozen module 'image.encoder', which receives gradient from trainable parameters upstream" in note
    assert model.image.stem.weight.grad is not None and model.image.stem.weight.grad.abs().sum() > 0  # not cut
    assert_same_weights(uncached_weights(96, "ce", 16, stem=True, frozen_text=True), model)
    with pytest.raises(
        InputError,
        match=r"^Frozen module 'image.encoder' receives gradient from trainable parameters upstream, so its outputs "
        r"cannot be cached",
    ):
        FeatureCache.build(_model(adapter, True), adapter, config=config, settings=CacheSettings(mode="on"), device=CPU)
    only_encoder = adapter.build_model()
    cache, note = FeatureCache.build(only_encoder, adapter, config=config, settings=CacheSettings(), device=CPU)
    assert cache is None
    assert note == "nothing cached: frozen module 'image.encoder' receives gradient from trainable parameters upstream."


class Augmenting(FrozenEncoderAdapter):
    deterministic_data = False  # as the base Adapter has it: random augmentations may run in data()


def test_data_not_declared_deterministic_is_refused_with_on_and_left_uncached_with_auto():
    adapter, config = Augmenting(24), TrainConfig(epochs=1, batch_size=8)
    with pytest.raises(
        InputError,
        match=r"^The feature cache needs deterministic training data, but adapter Augmenting does not declare "
        r"deterministic_data = True",
    ):
        FeatureCache.build(adapter.build_model(), adapter, config=config, settings=CacheSettings(mode="on"), device=CPU)
    cache, note = FeatureCache.build(adapter.build_model(), adapter, config=config, settings=CacheSettings(), device=CPU)
    assert cache is None and "does not declare deterministic_data = True" in note
    assert (
        FeatureCache.build(adapter.build_model(), adapter, config=config, settings=CacheSettings(mode="off"), device=CPU)[0]
        is None
    )


def test_a_cache_over_its_bound_is_not_built():
    adapter, config = _adapter(24), TrainConfig(epochs=1, batch_size=8)
    small = CacheSettings(max_bytes=24 * 32 * 4 - 1)  # one byte short of 24 samples x 32 float32 features
    cache, note = FeatureCache.build(adapter.build_model(), adapter, config=config, settings=small, device=CPU)
    assert cache is None
    assert note == (
        "nothing cached: the outputs of the frozen modules would take 3 KiB, 128 bytes a sample for 24 samples, more "
        "than the bound of 3.0 KiB (3071 bytes)."
    )
    with pytest.raises(
        InputError,
        match=r"^The feature cache would take 3 KiB, 128 bytes a sample for 24 samples, more than its bound of 100 bytes \(--cache-max-gb\);",
    ):
        FeatureCache.build(
            adapter.build_model(), adapter, config=config, settings=CacheSettings(mode="on", max_bytes=100), device=CPU
        )
    fits = CacheSettings(max_bytes=24 * 32 * 4)
    assert FeatureCache.build(adapter.build_model(), adapter, config=config, settings=fits, device=CPU)[0] is not None


def test_settings_refused_before_any_work_leave_nothing_behind(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match=r"Feature cache directory .*notes.txt exists and is not a directory"):
        check_cache_settings(CacheSettings(directory=a_file))
    # Below a file nothing can be created, whoever runs the test (root ignores permission bits).
    with pytest.raises(InputError, match=r"Feature cache directory .*notes.txt/cache lies below .*notes.txt, which is a file"):
        check_cache_settings(CacheSettings(directory=a_file / "cache"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match=r"cannot be written"):
            check_cache_settings(CacheSettings(directory=locked / "cache"))
        locked.chmod(0o700)
    with pytest.raises(InputError, match=r"^Feature cache mode 'always' is unknown. Available: auto, on, off.$"):
        check_cache_settings(CacheSettings(mode="always"))
    with pytest.raises(InputError, match=r"max_bytes is 0; expected a positive whole number of bytes"):
        check_cache_settings(CacheSettings(max_bytes=0))
    check_cache_settings(CacheSettings(directory=tmp_path / "new" / "cache"))
    expected = {"notes.txt"} if os.geteuid() == 0 else {"notes.txt", "locked"}
    assert {p.name for p in tmp_path.iterdir()} == expected  # no directory, no probe file was left


class _Pair(nn.Module):
    """A frozen module with a nested output: (features, {"raw": its input doubled})."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x), {"raw": 2 * x}


class _Small(nn.Module):
    def __init__(self, *, dropout_first: bool = False, nested: bool = True) -> None:
        super().__init__()
        self.first = nn.Dropout(0.5) if dropout_first else nn.Identity()
        self.frozen = _Pair() if nested else nn.Linear(4, 7)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(7, 2)

    def forward(self, x):
        out = self.frozen(self.first(x))
        features = torch.cat([out[0], out[1]["raw"]], dim=1) if isinstance(out, tuple) else out
        return self.head(features)


class SmallAdapter(FrozenEncoderAdapter):
    """The fixture's data, only the text tensor [B, 6] cut to 4 columns, for the small models above."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(20)
        self.model = model

    def build_model(self):
        return self.model

    def prepare(self, batch, *, device):
        return batch["text"][:, :4].to(device)

    def branches(self, model):
        return None


def test_nested_outputs_are_served_in_their_structure_and_upstream_dropout_is_caught():
    config = TrainConfig(epochs=1, batch_size=5)
    model = _Small()
    cache, note = FeatureCache.build(model, SmallAdapter(model), config=config, settings=CacheSettings(), device=CPU)
    assert cache is not None and cache.settings()["bytes"] == 20 * (3 + 4) * 4
    batch = next(shuffled_batches(SmallAdapter(model), config=config, epoch=0, index=True))
    x = batch["text"][:, :4]
    with torch.no_grad():
        expected = model.frozen(x)
        with cache.serving(batch[SAMPLE_INDEX]):
            served = model.frozen(x * 0)  # the input is not read: the stored outputs of these samples are returned
    assert isinstance(served, tuple) and set(served[1]) == {"raw"}
    assert torch.equal(served[0], expected[0]) and torch.equal(served[1]["raw"], expected[1]["raw"])
    # A dropout before the frozen module trains differently from the fill's eval mode: the probe sees it.
    dropping = _Small(dropout_first=True, nested=False)
    cache, note = FeatureCache.build(dropping, SmallAdapter(dropping), config=config, settings=CacheSettings(), device=CPU)
    assert cache is None and "gives other outputs in training than in evaluation mode" in note


class _Tagging(nn.Linear):
    def forward(self, x):
        return super().forward(x), "tag"


class _Uses(nn.Module):
    """A frozen module that runs twice in one forward ("twice"), or returns a string beside its tensor ("tagged")."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.frozen = (nn.Linear if how == "twice" else _Tagging)(4, 4).requires_grad_(False)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.frozen(self.frozen(x)) if self.how == "twice" else self.frozen(x)[0])


@pytest.mark.parametrize(
    ("how", "problem"),
    [("twice", "runs 2 times in one forward"), ("tagged", "returns a str (expected tensors, or tuples, lists or dicts")],
)
def test_a_module_that_runs_twice_or_returns_other_things_is_not_cached(how, problem):
    config = TrainConfig(epochs=1, batch_size=5)
    model = _Uses(how)
    cache, note = FeatureCache.build(model, SmallAdapter(model), config=config, settings=CacheSettings(), device=CPU)
    assert cache is None and note.startswith(f"nothing cached: frozen module 'frozen' {problem}")
    with pytest.raises(InputError, match=rf"^Frozen module 'frozen' {re.escape(problem)}"):
        FeatureCache.build(model, SmallAdapter(model), config=config, settings=CacheSettings(mode="on"), device=CPU)


def test_serving_refuses_unfilled_samples_and_a_frozen_module_that_changed():
    config = TrainConfig(epochs=1, batch_size=5, holdout=0.3)
    model = _Small(nested=False)
    adapter = SmallAdapter(model)
    cache, _ = FeatureCache.build(model, adapter, config=config, settings=CacheSettings(), device=CPU)
    filled = set(torch.nonzero(cache._slot >= 0).flatten().tolist())
    held_out = next(i for i in range(20) if i not in filled)
    with pytest.raises(AssertionError, match=f"sample {held_out} was never filled"), cache.serving(torch.tensor([held_out])):
        pass
    model.load_state_dict(model.state_dict())  # the same values written again (a resume's load): still served
    some = torch.tensor(sorted(filled)[:5])
    with cache.serving(some):
        pass
    with torch.no_grad():
        model.frozen.weight[0, 0] += 1
    with pytest.raises(BiasAuditError, match=r"^Frozen module 'frozen' changed during training"), cache.serving(some):
        pass


def test_nothing_frozen_means_nothing_to_cache():
    adapter = _adapter(12)
    model = adapter.build_model().requires_grad_(True)
    cache, note = FeatureCache.build(
        model, adapter, config=TrainConfig(batch_size=4), settings=CacheSettings(mode="on"), device=CPU
    )
    assert cache is None and note.startswith("nothing to cache: no part of the model has all its parameters frozen")


@pytest.mark.parametrize(
    "make", [lambda: torch.randn(4, 3, 5, 6).to(memory_format=torch.channels_last), lambda: torch.randn(7, 4, 3).transpose(0, 1)]
)
def test_served_tensors_keep_the_modules_memory_layout(make):
    """A layer after the module may pick another kernel for another layout: a served tensor must have its strides."""
    original = make()
    leaf = leaf_of(original, original.shape[0])
    served = laid_out(original.contiguous(), leaf)
    assert served.stride() == original.stride() and torch.equal(served, original)
