"""Where the model's files are: a local directory, the Hugging Face cache, or a download (with its progress).

Everything here answers in words a newcomer can act on: which command downloads the weights, which flag
points at a local copy, and how to try the service on the tiny random-weight checkpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from app.errors import CheckpointError
from app.settings import Settings

log = logging.getLogger(__name__)

# What transformers reads of a checkpoint: configs, weights, tokenizer, templates. Anything else in a repo
# (the talker's speaker file, images, docs) is never downloaded.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
# A download in progress is logged at most this often.
LOG_EVERY_SECONDS = 10.0
# When the checkpoint's own config cannot be read (not downloaded yet), the thinker's text context of the
# Qwen-Omni families (their configs' max_position_embeddings).
DEFAULT_CONTEXT_TOKENS = 32768
TINY_HINT = "python3 serve/make_tiny_checkpoint.py /tmp/tiny, then --checkpoint-path /tmp/tiny"


def is_local(checkpoint: str) -> bool:
    """Whether the checkpoint names a directory rather than a Hub id ("owner/name")."""
    return checkpoint.startswith(("/", ".", "~")) or checkpoint.count("/") != 1 or Path(checkpoint).exists()


def start_up_problem(settings: Settings) -> str | None:
    """What makes the configured checkpoint unusable before anything starts, or None.

    A local directory that does not exist, or holds no config.json, is always a mistake: the service would
    start and then fail every request. A Hub id is checked when the model loads (it may be downloaded
    meanwhile), so the service comes up and /health says what is missing.
    """
    checkpoint = settings.checkpoint_path
    if not is_local(checkpoint):
        return None
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        return (
            f"--checkpoint-path {checkpoint}: no such directory. Give the directory holding the checkpoint's "
            f"config.json, or a Hugging Face id such as {settings.model_variant.checkpoint}; to try the service "
            f"without weights: {TINY_HINT}"
        )
    if not (path / "config.json").is_file():
        return (
            f"--checkpoint-path {checkpoint}: no config.json in that directory, so it is not a checkpoint. "
            f"Download one with `hf download {settings.model_variant.checkpoint} --local-dir {checkpoint}`, "
            f"or try the service without weights: {TINY_HINT}"
        )
    return None


def not_cached(settings: Settings) -> str:
    """The advice for a Hub checkpoint that --local-model forbids downloading and the cache lacks."""
    checkpoint = settings.checkpoint_path
    return (
        f"{checkpoint} is not in the Hugging Face cache and --local-model forbids downloading it. Download it "
        f"on a machine with network (`hf download {checkpoint}`, into the same HF_HOME), point "
        f"--checkpoint-path at a local directory, or try the service without weights: {TINY_HINT}"
    )


def missing(settings: Settings) -> str | None:
    """Why the checkpoint cannot be loaded as things stand, found without loading or downloading; else None."""
    problem = start_up_problem(settings)
    hub_only = problem is None and settings.local_model and not is_local(settings.checkpoint_path)
    if hub_only and cached_snapshot(settings.checkpoint_path) is None:
        return not_cached(settings)
    return problem


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of a Hub id, if its config is in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def local_config(settings: Settings) -> dict[str, Any] | None:
    """The checkpoint's config.json when it is on this machine already (never downloads), else None."""
    checkpoint = settings.checkpoint_path
    directory = Path(checkpoint).expanduser() if is_local(checkpoint) else cached_snapshot(checkpoint)
    if directory is None:
        return None
    try:
        config: dict[str, Any] = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config


def context_tokens(settings: Settings) -> int:
    """The thinker's context length in tokens, from the checkpoint's own config when it is here."""
    config = local_config(settings) or {}
    text = (config.get("thinker_config") or config).get("text_config") or {}
    value = text.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else DEFAULT_CONTEXT_TOKENS


class DownloadProgress:
    """Bytes of the checkpoint downloaded so far, for /health and the log; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checkpoint: str | None = None
        self._total = 0
        self._done = 0
        self._logged = 0.0

    def begin(self, checkpoint: str) -> None:
        """A download of checkpoint starts."""
        with self._lock:
            self._checkpoint, self._total, self._done, self._logged = checkpoint, 0, 0, time.monotonic()
        log.info(
            "downloading %s from the Hugging Face Hub (only its %s files)", checkpoint, ", ".join(CHECKPOINT_FILES)
        )

    def grow(self, total: int) -> None:
        """More bytes are known to be coming (a file's size)."""
        with self._lock:
            self._total += total

    def advance(self, count: int) -> None:
        """count more bytes arrived."""
        with self._lock:
            self._done += count
            due = time.monotonic() - self._logged >= LOG_EVERY_SECONDS
            if due:
                self._logged = time.monotonic()
            done, total, checkpoint = self._done, self._total, self._checkpoint
        if due:
            log.info("downloading %s: %s", checkpoint, _fraction(done, total))

    def end(self) -> None:
        """The download finished (or failed)."""
        with self._lock:
            checkpoint, done, total = self._checkpoint, self._done, self._total
            self._checkpoint = None
        if checkpoint is not None:
            log.info("download of %s ended at %s", checkpoint, _fraction(done, total))

    def status(self) -> dict[str, Any] | None:
        """The download in progress, or None."""
        with self._lock:
            if self._checkpoint is None:
                return None
            percent = round(100 * self._done / self._total, 1) if self._total else None
            return {
                "checkpoint": self._checkpoint,
                "bytes_done": self._done,
                "bytes_total": self._total,
                "percent": percent,
            }


def _fraction(done: int, total: int) -> str:
    unit, size = ("GB", 1024**3) if max(done, total) >= 1024**3 else ("MB", 1024**2)
    if not total:
        return f"{done / size:.2f} {unit}"
    return f"{done / size:.2f} of {total / size:.2f} {unit} ({100 * done / total:.0f}%)"


def _progress_bar_class(progress: DownloadProgress) -> type:
    """A tqdm class for huggingface_hub that feeds progress instead of drawing (the log and /health show it)."""
    from huggingface_hub.utils.tqdm import tqdm as hub_tqdm

    class _Bar(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # The snapshot's aggregate byte bar; the per-file and file-count bars are not followed.
            self._follow = kwargs.get("name") == "huggingface_hub.snapshot_download"
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
            self._total_seen = 0

        def update(self, n: float | None = 1) -> bool | None:
            if self._follow:
                total = int(self.total or 0)
                if total > self._total_seen:
                    progress.grow(total - self._total_seen)
                    self._total_seen = total
                progress.advance(int(n or 0))
            return super().update(n)  # type: ignore[no-any-return]

    return _Bar


def resolve(settings: Settings, progress: DownloadProgress) -> str:
    """A local directory holding the checkpoint: the configured one, the cached snapshot, or a fresh download.

    Raises CheckpointError with what to do when the checkpoint is not here and cannot be downloaded. One
    download call fetches every file, so a machine without network fails once, not once per file.
    """
    checkpoint = settings.checkpoint_path
    problem = start_up_problem(settings)
    if problem is not None:
        raise CheckpointError(problem)
    if is_local(checkpoint):
        return str(Path(checkpoint).expanduser())
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    download = f"hf download {checkpoint}"
    if settings.local_model:
        snapshot = cached_snapshot(checkpoint)
        if snapshot is None:
            raise CheckpointError(not_cached(settings))
        return str(snapshot)
    progress.begin(checkpoint)
    try:
        return str(
            snapshot_download(checkpoint, allow_patterns=CHECKPOINT_FILES, tqdm_class=_progress_bar_class(progress))
        )
    except GatedRepoError:
        raise CheckpointError(
            f"{checkpoint} is gated on the Hugging Face Hub: accept its terms there and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{checkpoint} is not a model on the Hugging Face Hub; check --checkpoint-path (variant default: "
            f"{settings.model_variant.checkpoint})"
        ) from None
    except Exception as exc:  # no network, a timeout, a full disk: all end in the same advice
        log.warning("downloading %s failed", checkpoint, exc_info=True)
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"could not download {checkpoint} from the Hugging Face Hub ({reason}). Without network: download "
            f"it elsewhere (`{download}`) and run with --local-model, or point --checkpoint-path at a local "
            f"directory; to try the service without weights: {TINY_HINT}"
        ) from None
    finally:
        progress.end()
