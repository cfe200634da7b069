"""The vision tower's dtype: float16 never reaches it, on any device."""

from __future__ import annotations

import pytest
import torch

from app.backends import loading


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_other_dtypes_are_kept(device: str, dtype: torch.dtype) -> None:
    """A float32 (CPU) or bfloat16 (full weights on CUDA) model keeps its own dtype for the tower."""
    assert loading.vision_dtype(device, dtype) is dtype


@pytest.mark.parametrize(
    ("device", "bf16", "want"),
    [
        ("cuda", True, torch.bfloat16),
        ("cuda", False, torch.float32),
        ("mps", True, torch.bfloat16),
        ("mps", False, torch.float32),
        ("cpu", True, torch.float32),
    ],
)
def test_a_float16_model_gets_a_tower_in_a_wider_range(
    monkeypatch: pytest.MonkeyPatch, device: str, bf16: bool, want: torch.dtype
) -> None:
    """AWQ on CUDA and any model on MPS load in float16: the tower goes to bfloat16 where the device computes in
    it (CUDA from Ampere on, MPS from macOS 14 on), else to float32."""
    # Fault injection: this machine has neither device, so each answer about bfloat16 is given here.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: bf16)
    monkeypatch.setattr(loading, "_mps_has_bfloat16", lambda: bf16)
    assert loading.vision_dtype(device, torch.float16) is want


def test_without_mps_there_is_no_bfloat16_there() -> None:
    """The MPS probe answers False (instead of raising) where there is no MPS device."""
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    assert loading._mps_has_bfloat16() is False
