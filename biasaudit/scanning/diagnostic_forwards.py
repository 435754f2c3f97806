"""The forwards the engine-driven diagnostics add to a batch of a scan pass (biasaudit/scanning/evaluation.py): the
carrier test's donor swaps, the ceilings' unimodal and probe predictions, and the interaction's mixed inputs. Each
reads the batch's Full predictions and bootstrap weights from the pass, and forwards through its BatchEvaluator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, cast
from collections.abc import Mapping

import numpy as np
import torch

from biasaudit._core.randomness import poisson1
from biasaudit.data.modality import Modality
from biasaudit.diagnostics.accuracy import ConditionAccumulator
from biasaudit.diagnostics.carrier import CarrierAccumulator, targets, update_swap
from biasaudit.diagnostics.donors import DonorPool, swap_modality
from biasaudit.diagnostics.interaction import InteractionAccumulator
from biasaudit.errors import DataError
from biasaudit.scanning.draws import draw_name
from biasaudit.scanning.setup import PassSetup

if TYPE_CHECKING:  # the evaluator imports this module to run these functions
    from biasaudit.scanning.evaluation import BatchEvaluator


class SwapPool(NamedTuple):
    """One draw's donor pool for the carrier's swaps: what following each entry means, and its Poisson weight per
    replicate keyed by its global index (the crossed bootstrap of carrier.py; the same sample weighs the same in every
    draw)."""

    pool: DonorPool
    target: Mapping[str, np.ndarray]
    donor_weights: np.ndarray
    favouring: np.ndarray  # [K] bool: bias value k favours some class in train (F(k) is not empty)


def swap_pools(setup: PassSetup) -> list[SwapPool]:
    """Every draw's pool, when the pass has the train split's favoured classes (else there is nothing to follow)."""
    favoured = setup.favoured
    if favoured is None:
        return []
    # Any over axis 1 of the [K, C] array is a [K] array; numpy's stubs also allow a scalar.
    favouring = cast(np.ndarray, favoured.any(axis=1))
    return [
        SwapPool(
            pool,
            targets(pool.bias, pool.label, favoured),
            poisson1(setup.seed, "donor-bootstrap", pool.index, setup.replicates),
            favouring,
        )
        for pool in setup.carrier_pools
    ]


def carrier_swaps(
    evaluator: BatchEvaluator,
    carrier: CarrierAccumulator,
    batch: Mapping[str, Any],
    indices: np.ndarray,
    labels: np.ndarray,
    bias: np.ndarray,
    full: np.ndarray,
    weights: np.ndarray,
) -> None:
    """Every draw's swaps add to the same counts: the rates are pooled over the draws' swapped samples."""
    for pool, target, donor_weights, favouring in evaluator.swap_pools:
        swaps = {
            "bias": pool.bias_donors(indices, labels, bias, favouring),
            "content": pool.content_donors(indices, labels, bias),
        }
        # A null swap serves only rows that also have a bias or a content donor: no forward for the others.
        null_donors = np.where((swaps["bias"] >= 0) | (swaps["content"] >= 0), pool.null_donors(indices, labels, bias), -1)
        for name, modality in evaluator.modalities.items():
            null = _swapped_prediction(evaluator, batch, modality, null_donors, full, pool, what="null")
            for kind, donors in swaps.items():
                prediction = _swapped_prediction(evaluator, batch, modality, donors, full, pool, what=kind)
                update_swap(
                    (carrier.bias_swap if kind == "bias" else carrier.content_swap)[name],
                    donors=donors,
                    null_donors=null_donors,
                    target=target[kind],
                    donor_weights=donor_weights,
                    prediction=prediction,
                    null=null,
                    full=full,
                    labels=labels,
                    weights=weights,
                )


def _swapped_prediction(
    evaluator: BatchEvaluator,
    batch: Mapping[str, Any],
    modality: Modality,
    donors: np.ndarray,
    full: np.ndarray,
    pool: DonorPool,
    *,
    what: str,
) -> np.ndarray:
    """Predictions with this modality's input from the pool's donors (rows without a donor keep theirs)."""
    if not (donors >= 0).any():
        return full
    swapped = swap_modality(batch, modality, donors, pool)
    return (
        evaluator.forward_logits(evaluator.model, swapped, stage="carrier", condition=f"{what} swap of {modality.name}")
        .argmax(dim=1)
        .cpu()
        .numpy()
    )


def ceiling_predictions(
    evaluator: BatchEvaluator,
    ceilings: ConditionAccumulator,
    batch: Mapping[str, Any],
    full_branch: Mapping[str, torch.Tensor],
    labels: np.ndarray,
    full: np.ndarray,
    indices: np.ndarray,
    weights: np.ndarray,
) -> None:
    """Each modality's ceiling (its unimodal model, else its probes on the Full forward's branch embedding) and its
    "alone" accuracy (the others muted)."""
    s = evaluator.setup
    predictions = {"full": full}
    for name in evaluator.modalities:
        if name in s.unimodal:
            others_muted = evaluator.muted_batch(batch, frozenset([name]))
            predictions[f"ceiling:{name}"] = (
                evaluator.forward_logits(s.unimodal[name], others_muted, stage="ceilings", condition=f"unimodal {name}")
                .argmax(dim=1)
                .cpu()
                .numpy()
            )
        elif name in s.probes:
            feature = full_branch.get(name)
            if feature is None:
                raise DataError(
                    f"The {name!r} branch did not run in the Full forward of this batch, although it ran on train; "
                    "the adapter's branches() must name modules the model calls on every forward."
                )
            values = feature.double().cpu().numpy()
            for draw, probe in enumerate(s.probes[name]):
                predictions[draw_name(f"ceiling:{name}", draw)] = probe.predict(values)
        else:
            continue
        predictions[f"alone:{name}"] = evaluator.subset_logits(frozenset([name]), stage="ceilings").argmax(dim=1).cpu().numpy()
    ceilings.update(predictions, labels, indices=indices, weights=weights)


def interaction_forwards(
    evaluator: BatchEvaluator,
    interaction: InteractionAccumulator,
    pool: DonorPool,
    batch: Mapping[str, Any],
    indices: np.ndarray,
    labels: np.ndarray,
    full: np.ndarray,
    weights: np.ndarray,
) -> None:
    """The interaction's forwards: each modality kept with the others from donors, and the constant's forwards."""
    # Each half of the donors comes from its half of the pool (the split-half correction of diagnostics/interaction.py).
    draws = [pool.any_donors(indices, draw=r, half=interaction.half_of(r)) for r in range(interaction.donors)]
    if not all((donors >= 0).all() for donors in draws):
        return  # a pool of one sample: nothing to pair with

    def mixed(donors_of: dict[str, np.ndarray], condition: str) -> np.ndarray:
        """Logits with each named modality's input from its donors, the others the sample's own."""
        out: Mapping[str, Any] = batch
        for name, modality in evaluator.modalities.items():
            if name in donors_of:
                out = swap_modality(out, modality, donors_of[name], pool)
        return evaluator.forward_logits(evaluator.model, out, stage="interaction", condition=condition).float().cpu().numpy()

    kept = [
        [
            mixed({name: donors for name in evaluator.modalities if name != keep}, f"interaction keeping {keep}")
            for donors in draws
        ]
        for keep in evaluator.modalities
    ]
    lenders = interaction.constant_donors()  # [M, R]: the constant's forwards take each modality from another donor
    constant = [
        mixed({name: draws[lenders[m, r]] for m, name in enumerate(evaluator.modalities)}, "interaction constant")
        for r in range(len(draws))
    ]
    interaction.update(kept, constant, full, labels, weights)
