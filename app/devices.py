"""Device choice and accelerator memory figures; torch is imported lazily so the gunicorn master never loads it."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

_GIB = 1024**3


def resolve_device(requested: str) -> str:
    """auto -> cuda, else mps, else cpu (with a warning); a forced device that is missing falls back the same way."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if (requested == "cuda" and cuda) or (requested == "mps" and mps) or requested == "cpu":
        return requested
    if requested != "auto":
        log.warning("device %r is not available; choosing automatically", requested)
    if cuda:
        return "cuda"
    if mps:
        return "mps"
    log.warning("no GPU found: running on CPU, which is slow for real checkpoints")
    return "cpu"


def gpu_memory() -> tuple[bool, float, float]:
    """(CUDA available, GiB allocated, GiB reserved) summed over visible GPUs; zeros without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return False, 0.0, 0.0
    count = torch.cuda.device_count()
    allocated = sum(torch.cuda.memory_allocated(i) for i in range(count))
    reserved = sum(torch.cuda.memory_reserved(i) for i in range(count))
    return True, round(allocated / _GIB, 3), round(reserved / _GIB, 3)


def release_memory() -> None:
    """Collect garbage and hand cached accelerator memory back to the driver."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()
