"""Train/eval modes during `fix`, so that training never corrupts state it should not touch.

- Frozen parts stay in eval mode. A module whose parameters are all frozen (requires_grad=False: a
  pretrained encoder under linear probing) keeps its loaded BatchNorm statistics and draws no dropout
  while the rest of the model trains; `model.train()` alone would let every training batch move those
  statistics, changing an encoder that was meant to be fixed.
- BalGrad's unimodal passes run in eval mode inside biasaudit.methods.heads, which restores each module's own flag.
"""

from __future__ import annotations

from torch import nn


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost submodules that own parameters, all of them frozen (the model itself excluded)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def set_training_modes(model: nn.Module) -> list[str]:
    """model.train(), then eval mode for every frozen part; returns the frozen parts' names (for the log)."""
    model.train()
    names = {id(module): name for name, module in model.named_modules()}
    frozen = frozen_modules(model)
    for module in frozen:
        module.eval()
    return [names[id(module)] for module in frozen]
