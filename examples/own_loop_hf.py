"""Group DRO and OGM-GE inside a Hugging Face Trainer (pip install "biasaudit[hf]"): a tiny two-branch model on
random data, CPU, a few seconds. The lines biasaudit adds are marked `# biasaudit`.

    python examples/own_loop_hf.py
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from biasaudit.integrations.hf import BiasFixCallback, BiasFixTrainer
from biasaudit.methods import OGMGE, GroupDRO, group_ids


class TwoBranch(nn.Module):
    """Returns its fused logits and, for the after-backward methods, each modality's logits (ogm_split)."""

    def __init__(self) -> None:
        super().__init__()
        self.image, self.text = nn.Sequential(nn.Linear(8, 6), nn.ReLU()), nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.head = nn.Linear(12, 3)

    def forward(self, image, text, labels=None):
        fi, ft = self.image(image), self.text(text)
        w, b = self.head.weight, self.head.bias
        unimodal = {"image": F.linear(fi, w[:, :6], b / 2), "text": F.linear(ft, w[:, 6:], b / 2)}
        logits = self.head(torch.cat([fi, ft], dim=1))
        loss = None if labels is None else F.cross_entropy(logits, labels)  # the plain Trainer's loss
        return {"loss": loss, "logits": logits, "unimodal_logits": unimodal}                     # biasaudit


class Rows(Dataset):
    """Dict rows: image, text, labels and (for BiasFixTrainer) each sample's group; the plain Trainer passes every
    column to the model, so the OGM-GE run leaves the groups out."""

    def __init__(self, n: int = 96, *, groups: bool = True) -> None:
        self.with_groups = groups
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, 3, (n,), generator=generator)
        self.bias = torch.where(torch.rand(n, generator=generator) < 0.9, self.labels,
                                torch.randint(0, 3, (n,), generator=generator))
        self.image = torch.randn(n, 8, generator=generator) + self.labels[:, None] * 0.3
        self.text = F.one_hot(self.bias, 4).float() + 0.1 * torch.randn(n, 4, generator=generator)
        self.groups = group_ids(self.labels, self.bias, num_bias=3)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = {"image": self.image[i], "text": self.text[i], "labels": self.labels[i]}
        return {**row, "groups": self.groups[i]} if self.with_groups else row


def arguments(folder: str) -> TrainingArguments:
    return TrainingArguments(output_dir=folder, num_train_epochs=2, per_device_train_batch_size=16, learning_rate=0.1,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
                             remove_unused_columns=False)


def main() -> None:
    torch.manual_seed(0)
    train = Rows()
    with tempfile.TemporaryDirectory() as folder:
        gdro = GroupDRO.from_train_groups(train.groups, num_groups=9)                          # biasaudit
        BiasFixTrainer(model=TwoBranch(), args=arguments(folder), train_dataset=train,
                       method=gdro, column="groups").train()                                  # biasaudit
        print("Group DRO: q", [round(q, 3) for q in gdro.q.tolist()])

        model = TwoBranch()
        ogm = OGMGE({"image": model.image, "text": model.text}, alpha=0.3)                     # biasaudit
        Trainer(model=model, args=arguments(folder), train_dataset=Rows(groups=False),
                callbacks=[BiasFixCallback(ogm)]).train()                                     # biasaudit
        print("OGM-GE: last step's k per branch", {m: round(k, 3) for m, k in ogm.last.coefficients.items()})


if __name__ == "__main__":
    main()
