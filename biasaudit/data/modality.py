"""One input of a model: its name, kind and where a batch holds it (the adapter contract's Modality).

It imports nothing from the rest of the package but the errors and the argument checks, so the impairments (which act on
modalities) and the adapter (which lists them) both depend on it and not on each other. Whether its kind has impairments
registered is checked where an adapter enters (biasaudit.data.adapter.validate_adapter), against the registry as it is
then, users' own kinds included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from biasaudit._core.arguments import check_fields, refuse_unknown_fields
from biasaudit.errors import AdapterError


@dataclass(frozen=True)
class Modality:
    """One input of the model.

    kind:
      - "image": a float tensor [B, C, H, W] or [B, H, W] of *raw* pixels in `value_range`
        (before any normalisation the adapter applies in `prepare`).
      - "text": a list of B raw strings.
      - "tokens": a long tensor [B, L] of token ids under `key`, with its attention mask under
        `mask_key`; `pad_id` fills removed positions and `special_ids` (e.g. CLS, SEP) are kept;
        `padding_side` says where the tokenizer pads (None: read from the mask of each batch).
      - "tensor": any other float tensor [B, ...].

    missing: the muting impairment that "missing" and the ratio sweep use for this modality;
    default the kind's own (image: `zero`, a black image in raw pixel space). Set "mean" for an
    image whose normalisation puts raw 0 far outside the data (then mid-grey is the neutral input).
    """

    name: str
    kind: str
    key: str | None = None
    value_range: tuple[float, float] = (0.0, 1.0)
    pad_id: int | None = None
    mask_key: str | None = None
    special_ids: tuple[int, ...] = ()
    missing: str | None = None
    padding_side: str | None = None  # tokens: "left" or "right"; None = read it from each batch's mask

    def __new__(cls, *args: Any, **kwargs: Any) -> Modality:
        refuse_unknown_fields(cls, args, kwargs, where="ba.Modality")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        check_fields(self, where="ba.Modality")
        if not self.name.strip():
            raise AdapterError("A Modality has an empty name; expected the name reports and conditions use, e.g. 'image'.")
        if self.pad_id is not None and self.pad_id < 0:
            raise AdapterError(
                f"Modality {self.name!r} has pad_id {self.pad_id}; expected the tokenizer's padding id, a non-negative int."
            )
        if self.key is None:
            object.__setattr__(self, "key", self.name)
        if self.kind == "tokens" and (self.pad_id is None or self.mask_key is None):
            raise self._tokens_need_padding()
        if self.kind == "tokens" and not self.special_ids:
            # "Empty text" keeps what a tokenizer gives for "" (e.g. [CLS][SEP]); with no special ids the
            # row would be fully masked, which makes attention produce NaN in most transformers.
            raise AdapterError(
                f"Token modality {self.name!r} needs special_ids (the ids a tokenizer puts around an empty string, "
                "e.g. (101, 102))."
            )
        if self.padding_side not in (None, "left", "right"):
            raise AdapterError(
                f"Modality {self.name!r} has padding_side {self.padding_side!r}; expected 'left', 'right' or None."
            )
        low, high = self.value_range
        if not low < high:
            raise AdapterError(
                f"Modality {self.name!r} has value_range {self.value_range}; expected (low, high) with low < high."
            )

    # The fields below are Optional in the constructor; these read them where they are set: `key` always (the
    # constructor defaults it to the name), `mask_key` and `pad_id` for a "tokens" modality (the constructor requires
    # them).

    @property
    def batch_key(self) -> str:
        """The key a batch holds this modality's raw input under."""
        return self.key if self.key is not None else self.name

    @property
    def token_mask_key(self) -> str:
        """A "tokens" modality's attention-mask key."""
        if self.mask_key is None:
            raise self._tokens_need_padding()
        return self.mask_key

    @property
    def token_pad_id(self) -> int:
        """A "tokens" modality's padding id."""
        if self.pad_id is None:
            raise self._tokens_need_padding()
        return self.pad_id

    def _tokens_need_padding(self) -> AdapterError:
        return AdapterError(f"Token modality {self.name!r} needs pad_id and mask_key so that deleted tokens become padding.")
