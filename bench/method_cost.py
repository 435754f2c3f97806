"""What does a fix method cost per training step, as a ratio to a plain cross-entropy step of the same model and
batch? (issue 21, item 4, and methods.md section 8: BalGrad <= 1.8x, MMPareto <= 2x; OGM-GE, Group DRO, JTT and D&R
<= 1.15x; DFR on 10k held-out samples <= 10 s.)

Every method runs as a user's loop runs it, through the public components of biasaudit.methods, on one batch that is
prepared once (the data pipeline is not timed), with the same Adam optimizer. Two models (--model):
  demo    the demo's DemoModel (an image MLP and a bag-of-words text branch of 32 units each, concatenated into one
          linear classifier) on a batch of the demo's train split: a ~1 ms step, so fixed per-step Python cost shows.
  medium  MEDIUM below: an image MLP of two 512-unit layers on 28x28 pixels and a 2-layer transformer text branch
          (d_model 128, 4 heads, 16 tokens, mean-pooled), concatenated into one linear classifier (1.2 M parameters),
          on a random batch (the cost does not depend on the values): a step of tens of ms on a 2-core CPU, where the
          arithmetic dominates. Every parameter trains.
  frozen  the BalGrad paper's setting (frozen ViT and BERT encoders, trained embedding layers and classifier): the
          medium model's two encoders frozen (requires_grad False, eval mode), each followed by a trained 128-unit
          embedding layer, the branch the methods see; the classifier on their concatenation.
The unimodal logits the gradient methods read are the classifier's weight slices over each branch's features with
half the bias (methods.md section 7, `ogm_split`), computed inside the timed step.

Timing: after a warm-up, --rounds rounds; each round times --steps steps of every method, the methods in a rotated
order, so that machine noise (other processes on a shared machine) hits all alike. ms/step is the median over the
rounds, and "x CE" the median over the rounds of the method's time over that round's CE time.

D&R's cost is its epoch-end pass (the train and val features of both branches, then k-means per branch), spread over
the steps between two passes: every R = 20 epochs (the default; the target applies to it) and every epoch (the upper
bound). DFR's is one refit of the demo model's classifier on 10k held-out samples (features included).

    python bench/method_cost.py [--model demo|medium|frozen|all] [--device cuda] [--threads 1]

On a CPU that other processes load, --threads 1 keeps the small operations of a step from waiting for a descheduled
second thread; the ratios are then those of one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.datasets.demo_model import DemoModel, DigitsCaptionsAdapter
from biasaudit.methods import DFR, JTT, OGMGE, BalGrad, DandR, GroupDRO, MMPareto, classifier_inputs, group_ids

TARGETS = {"ogm_ge": 1.15, "mmpareto": 2.0, "balgrad": 1.8, "groupdro": 1.15, "jtt (stage 2)": 1.15, "dandr (R=20)": 1.15}
DFR_TARGET_S = 10.0
NUM_BIAS = 10  # bias values per class: the demo's colours, and as many random ones for the medium model
DANDR_EVERY = 20

# The medium model, as a config: realistic widths for a two-branch classifier that trains on a CPU or one GPU.
MEDIUM = {"image_shape": (1, 28, 28), "image_hidden": 512, "vocab_size": 2000, "tokens": 16, "d_model": 128,
          "heads": 4, "feedforward": 256, "layers": 2, "num_classes": 10, "train_size": 4096, "val_size": 512}


class MediumModel(nn.Module):
    """forward(pixels [B, 1, 28, 28], tokens [B, T]) -> logits [B, C]; the branches are image_branch and text_branch."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        pixels = int(np.prod(config["image_shape"]))
        hidden = config["image_hidden"]
        self.image_branch = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.text_branch = TextEncoder(config)
        self.classifier = nn.Linear(hidden + config["d_model"], config["num_classes"])

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.image_branch(pixels), self.text_branch(tokens)], dim=1))


class FrozenEncoderModel(nn.Module):
    """MediumModel's encoders frozen, each branch a frozen encoder followed by a trained embedding layer."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        encoders = MediumModel(config)
        for parameter in encoders.parameters():
            parameter.requires_grad_(False)
        encoders.eval()
        width = 128
        self.image_branch = nn.Sequential(encoders.image_branch, nn.Linear(config["image_hidden"], width), nn.ReLU())
        self.text_branch = nn.Sequential(encoders.text_branch, nn.Linear(config["d_model"], width), nn.ReLU())
        self.classifier = nn.Linear(2 * width, config["num_classes"])

    def train(self, mode: bool = True) -> "FrozenEncoderModel":
        super().train(mode)
        self.image_branch[0].eval()  # frozen encoders draw no dropout, as fix keeps them (model_modes.py)
        self.text_branch[0].eval()
        return self

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.image_branch(pixels), self.text_branch(tokens)], dim=1))


class TextEncoder(nn.Module):
    """Token and position embeddings, a pre-norm transformer encoder, mean pooling over the tokens."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config["vocab_size"], config["d_model"])
        self.positions = nn.Parameter(torch.zeros(config["tokens"], config["d_model"]))
        layer = nn.TransformerEncoderLayer(config["d_model"], config["heads"], config["feedforward"], dropout=0.1,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config["layers"], enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.tokens(tokens) + self.positions).mean(dim=1)


@dataclass
class Setup:
    """One model's benchmark: the model, one prepared batch, and the train and val inputs D&R reads features from."""

    name: str
    model: nn.Module
    inputs: tuple[torch.Tensor, torch.Tensor]
    labels: torch.Tensor
    bias: torch.Tensor
    num_classes: int
    train: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, labels)
    val: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]


def demo_setup(batch_size: int, device: torch.device) -> Setup:
    adapter = DigitsCaptionsAdapter(seed=0)
    batch = next(iter(adapter.data("train", batch_size=batch_size)))

    def whole(split: str) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        part = adapter.split_data(split)
        return adapter.prepare({"image": part.images, "caption": part.captions}, device=device), part.labels

    return Setup("demo", DemoModel().to(device), adapter.prepare(batch, device=device), batch["label"].to(device),
                 batch["colour"].to(device), adapter.num_classes, whole("train"), whole("val"))


def medium_setup(batch_size: int, device: torch.device, *, frozen: bool = False) -> Setup:
    config = MEDIUM
    generator = torch.Generator().manual_seed(0)

    def inputs(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.rand((count, *config["image_shape"]), generator=generator)
        tokens = torch.randint(0, config["vocab_size"], (count, config["tokens"]), generator=generator)
        return pixels.to(device), tokens.to(device)

    def labelled(count: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return inputs(count), torch.randint(0, config["num_classes"], (count,), generator=generator)

    labels = torch.randint(0, config["num_classes"], (batch_size,), generator=generator).to(device)
    bias = torch.randint(0, NUM_BIAS, (batch_size,), generator=generator).to(device)
    model = (FrozenEncoderModel if frozen else MediumModel)(config).to(device)
    return Setup("frozen" if frozen else "medium", model, inputs(batch_size), labels, bias, config["num_classes"],
                 labelled(config["train_size"]), labelled(config["val_size"]))


def unimodal_logits(model: nn.Module, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The fused logits and each branch's ogm_split logits, from one pass through the branches."""
    z_image, z_text = model.image_branch(first), model.text_branch(second)
    weight, bias = model.classifier.weight, model.classifier.bias
    width = z_image.shape[1]
    fused = model.classifier(torch.cat([z_image, z_text], dim=1))
    return fused, {"image": z_image @ weight[:, :width].T + bias / 2, "text": z_text @ weight[:, width:].T + bias / 2}


def method_steps(setup: Setup) -> dict[str, Callable[[], None]]:
    """One training step per method, as a user's loop writes it, on the setup's batch."""
    model, (first, second), labels = setup.model, setup.inputs, setup.labels
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)  # small: the weights barely move over the timed steps
    branches = {"image": model.image_branch, "text": model.text_branch}
    ogm, pareto, balgrad = OGMGE(branches, alpha=0.3, ge=True), MMPareto(branches, gamma=1.5), BalGrad(branches)
    dro = GroupDRO(setup.num_classes * NUM_BIAS, eta=0.01)
    groups = group_ids(labels, setup.bias, num_bias=NUM_BIAS).to(labels.device)
    jtt = JTT(upweight=10.0)
    indices = torch.arange(len(labels), device=labels.device)
    with torch.no_grad():
        jtt.record(indices, model(first, second), labels)
    jtt.finish()
    balgrad_steps = [0]

    def ce() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(first, second), labels).backward()
        optimizer.step()

    def ogm_ge() -> None:
        optimizer.zero_grad(set_to_none=True)
        fused, unimodal = unimodal_logits(model, first, second)
        F.cross_entropy(fused, labels).backward()
        ogm.after_backward({k: v.detach() for k, v in unimodal.items()}, labels)
        optimizer.step()

    def mmpareto() -> None:
        optimizer.zero_grad(set_to_none=True)
        fused, unimodal = unimodal_logits(model, first, second)
        pareto.backward(F.cross_entropy(fused, labels), {k: F.cross_entropy(v, labels) for k, v in unimodal.items()})
        optimizer.step()

    def balgrad_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        fused, unimodal = unimodal_logits(model, first, second)
        balgrad.backward(F.cross_entropy(fused, labels), unimodal, labels, step=balgrad_steps[0], total_steps=10**6)
        balgrad_steps[0] += 1
        optimizer.step()

    def group_dro() -> None:
        optimizer.zero_grad(set_to_none=True)
        dro.loss(F.cross_entropy(model(first, second), labels, reduction="none"), groups).backward()
        optimizer.step()

    def jtt_stage_two() -> None:
        optimizer.zero_grad(set_to_none=True)
        jtt.loss(F.cross_entropy(model(first, second), labels, reduction="none"), indices).backward()
        optimizer.step()

    return {"ce": ce, "ogm_ge": ogm_ge, "mmpareto": mmpareto, "balgrad": balgrad_step, "groupdro": group_dro,
            "jtt (stage 2)": jtt_stage_two}


def interleaved(steps: dict[str, Callable[[], None]], *, rounds: int, per_round: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per step of every method in every round; within a round the methods run in an order rotated by one
    per round, so that no method always follows the same one."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in steps.values():  # warm-up: allocator, autograd and optimizer state, lazy imports
        for _ in range(5):
            step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            for _ in range(per_round):
                steps[name]()
            sync()
            times[name].append((time.perf_counter() - start) / per_round)
    return times


def dandr_epoch_end(setup: Setup, *, repeats: int) -> tuple[float, float]:
    """(seconds of the feature pass, seconds of DandR.epoch_end): the median of `repeats` epoch-end passes."""
    model = setup.model
    dandr = DandR({"image": model.image_branch, "text": model.text_branch}, every=1, max_times=repeats, seed=0)

    def features(inputs: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            chunks = [(model.image_branch(a), model.text_branch(b)) for a, b in zip(inputs[0].split(512), inputs[1].split(512))]
        return {"image": torch.cat([c[0] for c in chunks]), "text": torch.cat([c[1] for c in chunks])}

    passes, diagnoses = [], []
    for epoch in range(repeats):
        start = time.perf_counter()
        train_features, val_features = features(setup.train[0]), features(setup.val[0])
        middle = time.perf_counter()
        dandr.epoch_end(epoch, train_features, setup.train[1], val_features, setup.val[1])
        passes.append(middle - start)
        diagnoses.append(time.perf_counter() - middle)
    return statistics.median(passes), statistics.median(diagnoses)


def dfr_seconds(device: torch.device) -> tuple[float, str]:
    """One DFR refit of the demo model's classifier on 10k held-out samples (the demo's images with fresh noise,
    10 colours), inputs and features included."""
    adapter = DigitsCaptionsAdapter(seed=0)
    model = DemoModel().to(device)
    part = adapter.split_data("train")
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(part), 10_000)
    pixels = (part.images[pick] + torch.from_numpy(rng.normal(scale=0.1, size=tuple(part.images[pick].shape))).float()).clamp(0, 1)
    captions = [part.captions[i] for i in pick]
    labels, colours = part.labels[pick].numpy(), part.colours[pick].numpy()
    start = time.perf_counter()
    batches = [adapter.prepare({"image": pixels[i:i + 512], "caption": captions[i:i + 512]}, device=device)
               for i in range(0, 10_000, 512)]
    held = classifier_inputs(model, model.classifier, batches)
    result = DFR(seed=0).fit(held, labels, labels * NUM_BIAS + colours)
    return time.perf_counter() - start, result.note


def report(setup: Setup, times: dict[str, list[float]], dandr: tuple[float, float], *, batch_size: int,
           per_round: int) -> dict[str, float]:
    """Print the model's table; return each method's ratio to CE."""
    steps_per_epoch = -(-len(setup.train[1]) // batch_size)
    parameters = sum(p.numel() for p in setup.model.parameters())
    print(f"\nmodel {setup.name}: {type(setup.model).__name__}, {parameters:,} parameters, batch {batch_size}, "
          f"median of {len(times['ce'])} interleaved rounds x {per_round} steps")
    print(f"{'method':<16} {'ms/step':>9} {'x CE':>6} {'target':>7}  holds")
    base = times["ce"]
    ratios = {}
    for name, runs in times.items():
        ratios[name] = statistics.median(run / ce for run, ce in zip(runs, base))
        print(_row(name, statistics.median(runs) * 1e3, ratios[name]))
    ce = statistics.median(base)
    feature_pass, diagnosis = dandr
    epoch_end = feature_pass + diagnosis
    for every in (DANDR_EVERY, 1):  # the default R, and the upper bound of a diagnosis after every epoch
        per_step = ce + epoch_end / (steps_per_epoch * every)
        ratios[f"dandr (R={every})"] = per_step / ce
        print(_row(f"dandr (R={every})", per_step * 1e3, per_step / ce))
    print(f"  D&R epoch end {epoch_end:.2f} s (feature pass {feature_pass:.2f} s, k-means diagnosis {diagnosis:.2f} s), "
          f"{steps_per_epoch} steps per epoch of {len(setup.train[1])} train samples")
    return ratios


def summary(ratios: dict[str, dict[str, float]]) -> None:
    """Every model's ratio side by side, against the targets."""
    models = list(ratios)
    print(f"\nsummary (x CE){'':<2}" + "".join(f"{model:>10}" for model in models) + f"{'target':>9}")
    for name in ratios[models[0]]:
        target = TARGETS.get(name)
        cells = "".join(f"{ratios[model][name]:>7.2f} {'ok' if target is None or ratios[model][name] <= target else 'NO':<2}"
                        for model in models)
        print(f"{name:<16}{cells}{f'<= {target:g}' if target else '-':>9}")


def _row(name: str, milliseconds: float, ratio: float) -> str:
    target = TARGETS.get(name)
    if target is None:
        return f"{name:<16} {milliseconds:>9.3f} {ratio:>6.2f} {'-':>7}  -"
    return f"{name:<16} {milliseconds:>9.3f} {ratio:>6.2f} {f'<= {target:g}':>7}  {'yes' if ratio <= target else 'NO'}"


SETUPS: dict[str, Callable[[int, torch.device], Setup]] = {
    "demo": demo_setup, "medium": medium_setup, "frozen": lambda batch_size, device: medium_setup(batch_size, device, frozen=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--model", choices=(*SETUPS, "all"), default="all")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (torch device string)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="steps per method per round (default: 30 demo, 3 medium)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: 15 demo, 7 medium)")
    parser.add_argument("--dandr-repeats", type=int, default=3, help="epoch-end passes timed for D&R (median)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's CPU threads (default: torch's own choice); 1 on a machine that others load, "
                             "where the threads of every small operation wait for each other")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else f" ({torch.cuda.get_device_name(device)})"
    print(f"device {device}{threads}, torch {torch.__version__}, load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ratios = {}
    for name in tuple(SETUPS) if args.model == "all" else (args.model,):
        batch_size = args.batch_size
        per_round = args.steps or (30 if name == "demo" else 3)
        rounds = args.rounds or (15 if name == "demo" else 7)
        setup = SETUPS[name](batch_size, device)
        times = interleaved(method_steps(setup), rounds=rounds, per_round=per_round, device=device)
        ratios[name] = report(setup, times, dandr_epoch_end(setup, repeats=args.dandr_repeats), batch_size=batch_size,
                              per_round=per_round)
        if name == "demo":
            seconds, note = dfr_seconds(device)
            print(f"{'dfr (10k)':<16} {seconds:>8.2f} s {f'<= {DFR_TARGET_S:g} s':>14}  "
                  f"{'yes' if seconds <= DFR_TARGET_S else 'NO'}   ({note})")
    if len(ratios) > 1:
        summary(ratios)
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
