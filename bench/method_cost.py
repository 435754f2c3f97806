"""What does a fix method cost per training step, as a ratio to a plain cross-entropy step of the same model and
batch? (issue 21, item 4: MMPareto <= 2x; OGM-GE, Group DRO, JTT and D&R <= 1.15x; DFR on 10k held-out samples
<= 10 s; BalGrad <= 1.8x once its component lands.)

Every method runs as a user's loop runs it, through the public components of biasaudit.methods, on the demo's
model (DemoModel: an image MLP and a bag-of-words text branch, concatenated into one linear classifier) and one
batch of the demo's train split, prepared once so that the data pipeline is not timed. The unimodal logits the
gradient methods read are the classifier's weight slices over each branch's features with half the bias
(methods.md section 7, `ogm_split`), computed inside the timed step. D&R's cost is its epoch-end pass (train and val
features of both branches, k-means per branch), spread over the steps between two passes: every R = 20 epochs
(the default), and every epoch (the upper bound). Each figure is the median of --repeats timings of --steps steps, after a warm-up.

    python bench/method_cost.py [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from biasaudit.datasets.demo_model import DemoModel, DigitsCaptionsAdapter
from biasaudit.methods import DFR, JTT, OGMGE, DandR, GroupDRO, MMPareto, classifier_inputs, group_ids


def unimodal_logits(model: DemoModel, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The fused logits and each branch's ogm_split logits, from one pass through the branches."""
    z_image, z_text = model.image_branch(image), model.text_branch(text)
    weight, bias = model.classifier.weight, model.classifier.bias
    width = z_image.shape[1]
    fused = model.classifier(torch.cat([z_image, z_text], dim=1))
    return fused, {"image": z_image @ weight[:, :width].T + bias / 2, "text": z_text @ weight[:, width:].T + bias / 2}


def timed(step: Callable[[], None], *, steps: int, repeats: int, device: torch.device) -> float:
    for _ in range(5):
        step()
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        runs.append((time.perf_counter() - start) / steps)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    adapter = DigitsCaptionsAdapter(seed=0)
    batch = next(iter(adapter.data("train", batch_size=args.batch_size)))
    image, text = (t.to(device) for t in adapter.prepare(batch, device=device))
    labels, colours = batch["label"].to(device), batch["colour"].to(device)
    model = DemoModel().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)  # small: the weights barely move over the timed steps
    branches = {"image": model.image_branch, "text": model.text_branch}
    ogm, pareto = OGMGE(branches, alpha=0.3, ge=True), MMPareto(branches, gamma=1.5)
    num_bias = 10
    dro = GroupDRO(adapter.num_classes * num_bias, eta=0.01)
    groups = group_ids(labels, colours, num_bias=num_bias).to(device)
    jtt = JTT(upweight=10.0)
    indices = torch.arange(len(labels), device=device)
    with torch.no_grad():
        jtt.record(indices, model(image, text), labels)
    jtt.finish()

    def ce() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(image, text), labels).backward()
        optimizer.step()

    def ogm_ge() -> None:
        optimizer.zero_grad(set_to_none=True)
        fused, unimodal = unimodal_logits(model, image, text)
        F.cross_entropy(fused, labels).backward()
        ogm.after_backward({k: v.detach() for k, v in unimodal.items()}, labels)
        optimizer.step()

    def mmpareto() -> None:
        optimizer.zero_grad(set_to_none=True)
        fused, unimodal = unimodal_logits(model, image, text)
        pareto.backward(F.cross_entropy(fused, labels), {k: F.cross_entropy(v, labels) for k, v in unimodal.items()})
        optimizer.step()

    def group_dro() -> None:
        optimizer.zero_grad(set_to_none=True)
        dro.loss(F.cross_entropy(model(image, text), labels, reduction="none"), groups).backward()
        optimizer.step()

    def jtt_stage_two() -> None:
        optimizer.zero_grad(set_to_none=True)
        jtt.loss(F.cross_entropy(model(image, text), labels, reduction="none"), indices).backward()
        optimizer.step()

    base = timed(ce, steps=args.steps, repeats=args.repeats, device=device)
    rows = [("ce", base)]
    for name, step in (("ogm_ge", ogm_ge), ("mmpareto", mmpareto), ("groupdro", group_dro), ("jtt (stage 2)", jtt_stage_two)):
        rows.append((name, timed(step, steps=args.steps, repeats=args.repeats, device=device)))
    print(f"device {device}, batch {args.batch_size}, median of {args.repeats} x {args.steps} steps")
    print(f"{'method':<16} {'ms/step':>8} {'x CE':>6}")
    for name, seconds in rows:
        print(f"{name:<16} {seconds * 1e3:>8.3f} {seconds / base:>6.2f}")

    # D&R: one epoch-end diagnosis over the train and val features of both branches, per step of a train epoch.
    train_part, val_part = adapter.split_data("train"), adapter.split_data("val")
    dandr = DandR(branches, every=1, max_times=1, seed=0)

    def features(part) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pixels, words = (t.to(device) for t in adapter.prepare({"image": part.images, "caption": part.captions}, device=device))
        with torch.no_grad():
            return {"image": model.image_branch(pixels), "text": model.text_branch(words)}, part.labels
    start = time.perf_counter()
    train_features, train_labels = features(train_part)
    val_features, val_labels = features(val_part)
    dandr.epoch_end(0, train_features, train_labels, val_features, val_labels)
    epoch_end = time.perf_counter() - start
    steps_per_epoch = -(-len(train_part) // args.batch_size)
    for every in (20, 1):  # the default R, and the upper bound of a diagnosis after every epoch
        per_step = base + epoch_end / (steps_per_epoch * every)
        print(f"{f'dandr (R={every})':<16} {per_step * 1e3:>8.3f} {per_step / base:>6.2f}   (epoch end {epoch_end:.2f} s, "
              f"{steps_per_epoch} steps per epoch)")

    # DFR: refit the classifier on 10k held-out samples' features (the demo's images with fresh noise, 10 colours).
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(train_part), 10_000)
    pixels = (train_part.images[pick] + torch.from_numpy(rng.normal(scale=0.1, size=tuple(train_part.images[pick].shape)))
              .float()).clamp(0, 1)
    captions = [train_part.captions[i] for i in pick]
    held_labels, held_colours = train_part.labels[pick].numpy(), train_part.colours[pick].numpy()
    start = time.perf_counter()
    batches = [adapter.prepare({"image": pixels[i:i + 512], "caption": captions[i:i + 512]}, device=device)
               for i in range(0, 10_000, 512)]
    held = classifier_inputs(model, model.classifier, batches)
    result = DFR(seed=0).fit(held, held_labels, held_labels * num_bias + held_colours)
    print(f"{'dfr (10k)':<16} {time.perf_counter() - start:>8.2f} s   ({result.note})")


if __name__ == "__main__":
    main()
