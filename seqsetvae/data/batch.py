"""The batch contract between the DataModule and the models.

A batch is a dict of tensors shaped `[B patients, S sets, E events]`, padded, with masks (True = real):

    codes        int64   [B, S, E]  vocabulary index of the event's variable; 0 = padding
    values       float32 [B, S, E]  normalised value; 0 at padding
    event_mask   bool    [B, S, E]  real event
    set_mask     bool    [B, S]     real set (a set has at least one real event)
    set_times    float32 [B, S]     hours since admission of each set; 0 at padding
    labels       float32 [B]        outcome (in-hospital death), 0/1
    subject_id   int64   [B]        the sample's subject
    prediction_time int64 [B]       the sample's prediction time (microseconds since the epoch): with
                                    subject_id, the key of a sample (a subject may have several)

Sets of one patient are in time order and left-aligned (padding sets at the end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:  # keep torch out of the light stages' import time (preprocess imports the codes below)
    import torch

PAD_CODE = 0
UNK_CODE = 1


class Batch(TypedDict):
    codes: torch.Tensor
    values: torch.Tensor
    event_mask: torch.Tensor
    set_mask: torch.Tensor
    set_times: torch.Tensor
    labels: torch.Tensor
    subject_id: torch.Tensor
    prediction_time: torch.Tensor


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on `device`, in a mapping of the batch's own type (a CachedBatch stays one)."""
    return type(batch)((k, v.to(device, non_blocking=True)) for k, v in batch.items())
