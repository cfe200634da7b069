"""The one frozen settings object, built from CLI flags and environment variables."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from app.protocol.native import TranscribeOptions
from app.protocol.validation import parse_flag
from app.tracing import LOG_FORMATS
from app.vad import VadSettings
from app.variants import DEFAULT_VARIANT, VARIANTS, Variant, get_variant

DEVICES = ("auto", "cuda", "mps", "cpu")
# Qwen3-ForcedAligner-0.6B in transformers' own layout (Qwen3ASRForTokenClassification).
DEFAULT_ALIGNER = "Qwen/Qwen3-ForcedAligner-0.6B-hf"


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "qwen-omni-asr")


def _setting(default: Any, env: str, help: str, *, secret: bool = False, **kw: Any) -> Any:
    """A settings field carrying its environment variable and help text (a secret stays out of repr)."""
    return field(default=default, repr=not secret, metadata={"env": env, "help": help, **kw})


@dataclass(frozen=True)
class Settings:
    """Everything configurable; every field has a CLI flag (--field-name) and an environment variable."""

    # Which model family, task and format to serve (see app/variants.py); it supplies the defaults below.
    variant: str = _setting(DEFAULT_VARIANT, "ASR_VARIANT", "model variant", choices=tuple(VARIANTS))
    # Model: a Hugging Face id or a local directory holding the checkpoint; empty means the variant's.
    checkpoint_path: str = _setting(
        "",
        "ASR_CHECKPOINT_PATH",
        "model id or local checkpoint dir",
        shown="the variant's, e.g. Qwen/Qwen2.5-Omni-7B-AWQ",
    )
    # No network: the checkpoint must be a local directory or already in the Hugging Face cache.
    local_model: bool = _setting(False, "ASR_LOCAL_MODEL", "never download; use a local dir or the HF cache")
    # auto picks CUDA, then Apple MPS, then CPU (with a warning).
    device: str = _setting("auto", "ASR_DEVICE", "auto, cuda, mps or cpu", choices=DEVICES)
    # flash_attention_2 when importable, else sdpa with a warning.
    flash_attn2: bool = _setting(False, "ASR_FLASH_ATTN2", "use flash_attention_2 when installed")
    # Seconds without use before the model is unloaded; 0 keeps it loaded forever.
    idle_timeout: float = _setting(300.0, "ASR_IDLE_TIMEOUT", "seconds idle before unloading the model (0 = never)")
    # Job database, uploads in flight, outputs. Never inside the code tree.
    data_dir: str = _setting(_default_data_dir(), "ASR_DATA_DIR", "directory for jobs, uploads and outputs")
    # Keep what is idle off the GPU: the vision tower (never used for audio) stays in CPU memory.
    low_vram: bool = _setting(False, "ASR_LOW_VRAM", "keep idle parts of the model (vision tower) off the GPU")
    # Defaults of the per-request options (each request may override them); segment 0 means the variant's.
    segment_duration: float = _setting(
        0.0, "ASR_SEGMENT_DURATION", "default segment seconds (1-300)", shown="the variant's: 60, 30 for the Captioner"
    )
    # Word timestamps: a second model the inference worker loads when an output needs word times.
    aligner: str = _setting(
        DEFAULT_ALIGNER,
        "ASR_ALIGNER",
        "forced aligner for word timestamps: a model id or local dir; none turns it off (times are estimated)",
    )
    vad: bool = _setting(
        True,
        "ASR_VAD",
        "cut at speech pauses found by Silero VAD; only speech reaches the model",
        shown="the variant's: on, off for the Captioner",
    )
    vad_threshold: float = _setting(0.5, "ASR_VAD_THRESHOLD", "speech probability at which speech starts (0-1)")
    vad_min_silence: float = _setting(0.5, "ASR_VAD_MIN_SILENCE", "seconds of pause that end a stretch of speech")
    vad_padding: float = _setting(
        0.03, "ASR_VAD_PADDING", "seconds kept around each stretch of speech (at most half the pause)"
    )
    max_new_tokens: int = _setting(8192, "ASR_MAX_NEW_TOKENS", "default max new tokens per segment")
    temperature: float = _setting(0.1, "ASR_TEMPERATURE", "default sampling temperature (0 = greedy)")
    repetition_penalty: float = _setting(1.1, "ASR_REPETITION_PENALTY", "default repetition penalty")
    # Uploads over this many bytes get 413 (accepts K/M/G suffixes, e.g. 4G).
    max_upload_size: int = _setting(
        4 * 1024**3, "ASR_MAX_UPLOAD_SIZE", "upload limit in bytes (K/M/G suffixes ok)", shown="4G", size=True
    )
    # Uploads are refused (507) while the data directory's free space, less the upload, is below this: the
    # disk keeps room for job results, the database and the system, and a full disk is reported, not hit.
    min_free_space: int = _setting(
        1024**3, "ASR_MIN_FREE_SPACE", "free space kept on the data dir's disk (K/M/G ok)", shown="1G", size=True
    )
    # Longest audio accepted, in seconds: checked from the header when it arrives and enforced while decoding,
    # so no file (or lying header) makes the server decode or queue more.
    max_audio_duration: float = _setting(
        12 * 3600.0, "ASR_MAX_AUDIO_DURATION", "longest audio accepted, in seconds", shown="43200 (12 h)"
    )
    # Most segments the inference worker puts into one generate call (from one file or many requests).
    batch_size: int = _setting(16, "ASR_BATCH_SIZE", "most segments per generate call")
    # Most tokens one generate call may hold: batch size x longest sequence (prompt, audio, output cap).
    token_budget: int = _setting(65536, "ASR_TOKEN_BUDGET", "most tokens (batch x longest sequence) per call")
    # Async jobs processed at once; their segments share the inference worker's batches.
    job_workers: int = _setting(2, "ASR_JOB_WORKERS", "async jobs processed concurrently")
    # HTTP server (gunicorn: one worker process, this many threads). A request waiting on the model holds a
    # thread, so this bounds concurrent requests; beyond it they queue, /health behind them. Threads mostly
    # wait, so many are cheap: keep this above the concurrency clients drive, so /health stays fast.
    # Loopback by default: the API has no key until one is configured. The images pass 0.0.0.0 explicitly.
    host: str = _setting("127.0.0.1", "ASR_HOST", "address to bind (0.0.0.0: every interface)")
    port: int = _setting(5000, "ASR_PORT", "port to bind")
    threads: int = _setting(64, "ASR_THREADS", "request threads")
    # Slow clients: a request head must arrive within header_timeout seconds (it is read without holding a
    # thread); a body may pause at most body_timeout seconds, and must average 1 KiB/s after its first
    # body_timeout seconds. Past either, the request is dropped with 408.
    header_timeout: float = _setting(10.0, "ASR_HEADER_TIMEOUT", "seconds a request head may take to arrive")
    body_timeout: float = _setting(30.0, "ASR_BODY_TIMEOUT", "longest pause in a request body, in seconds")
    # API keys, comma-separated; empty leaves the API open. Clients send "Authorization: Bearer <key>" or
    # "X-API-Key: <key>"; /health stays open for monitors. Prefer the environment: flags show in `ps`.
    api_key: str = _setting("", "ASR_API_KEY", "API keys, comma-separated (empty = no auth)", secret=True)
    # Keys for operators, comma-separated: valid keys that also see and delete every client's jobs (an
    # ordinary key sees only the jobs it submitted). Setting one also closes the API to requests without a key.
    admin_api_key: str = _setting("", "ASR_ADMIN_API_KEY", "admin API keys: they see every job", secret=True)
    # Requests per client (its key, else its address) in flask-limiter's syntax, e.g. "60/minute;1000/day".
    rate_limit: str = _setting("", "ASR_RATE_LIMIT", 'per-client limit, e.g. "60/minute" (empty = off)')
    # Reverse proxies in front of the service that append to X-Forwarded-For; the client address (for rate
    # limits and logs) is read from there. 0 trusts no header: a client could forge it.
    trusted_proxies: int = _setting(0, "ASR_TRUSTED_PROXIES", "reverse proxies setting X-Forwarded-For")
    # Async jobs waiting at once; more are refused with 503 and Retry-After, so the queue cannot grow unbounded.
    max_queued_jobs: int = _setting(100, "ASR_MAX_QUEUED_JOBS", "most async jobs queued at once")
    # GET /metrics (Prometheus) needs an API key like every route but /health; public opens it to scrapers
    # without one (keep the port private then: the figures show how the service is used).
    metrics_public: bool = _setting(False, "ASR_METRICS_PUBLIC", "serve /metrics without an API key")
    # One line per request (id, route, status, audio and processing seconds, client) and every other line, as
    # plain text or as JSON lines for a log collector.
    log_format: str = _setting("plain", "ASR_LOG_FORMAT", "plain or json (JSON lines)", choices=LOG_FORMATS)
    # Finished jobs, their files and output files older than this are deleted; 0 keeps them forever.
    retention_hours: float = _setting(
        168.0, "ASR_RETENTION_HOURS", "hours finished jobs and outputs are kept (0 = forever)"
    )
    # Images and videos named by http(s) URL in a chat are fetched only when this is on, and then never from
    # loopback, private or link-local addresses (checked after DNS resolution and on every redirect), within
    # app.media's byte bounds and app.vision's REMOTE_MEDIA_SECONDS. Off, a chat sends its media as data: URLs.
    allow_remote_media: bool = _setting(
        False, "ASR_ALLOW_REMOTE_MEDIA", "fetch chat images and videos from public http(s) URLs"
    )
    # Cluster mode: a Redis URL (redis://host:6379/0). The HTTP service then loads no model: it decodes and
    # segments, queues the segments in Celery on this Redis, and keeps its jobs there; serve/worker.py
    # processes, one per GPU, run the model. Empty: one process does everything (the default).
    broker_url: str = _setting(
        "",
        "ASR_BROKER_URL",
        "Redis URL of the cluster's broker (empty = one process, no cluster)",
        secret=True,
        aliases=("--broker",),
    )
    # The broker's password, put into the URL (percent-encoded) when the URL carries none: one value for Redis'
    # own --requirepass and every node, with no escaping to get right.
    broker_password: str = _setting(
        "", "ASR_BROKER_PASSWORD", "cluster: the broker's password, when the URL has none", secret=True
    )
    # Redis delivers a segment's task again when its worker has not acknowledged it after this many seconds,
    # so it must exceed the longest task (a model load plus a batch). A dead worker's segments are sent again
    # by the HTTP service as soon as its heartbeat stops; this is the backstop when nobody is waiting.
    visibility_timeout: float = _setting(
        3600.0, "ASR_VISIBILITY_TIMEOUT", "cluster: seconds before an unacknowledged segment is delivered again"
    )

    def __post_init__(self) -> None:
        variant = get_variant(self.variant)
        # Unset model fields take the variant's defaults (frozen dataclass: set them once, here).
        if not self.checkpoint_path:
            object.__setattr__(self, "checkpoint_path", variant.checkpoint)
        if not self.segment_duration:
            object.__setattr__(self, "segment_duration", variant.segment_duration)
        if self.device == "auto":
            object.__setattr__(self, "device", variant.device)
        self.default_options()  # validates the option defaults the same way requests are
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.min_free_space < 0:
            raise ValueError("min_free_space must be 0 or more")
        for name in ("batch_size", "token_budget", "job_workers", "threads", "max_upload_size", "max_queued_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.trusted_proxies < 0:
            raise ValueError("trusted_proxies must be 0 or more")
        for name in ("header_timeout", "body_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number of seconds above 0, got {value!r}")
        if not (math.isfinite(self.max_audio_duration) and self.max_audio_duration > 0):
            raise ValueError(f"max_audio_duration must be a number of seconds above 0, got {self.max_audio_duration!r}")
        if not (math.isfinite(self.retention_hours) and self.retention_hours >= 0):
            raise ValueError(f"retention_hours must be 0 or more, got {self.retention_hours!r}")
        if self.rate_limit.strip():
            from limits import parse_many

            try:
                parse_many(self.rate_limit)
            except ValueError:
                raise ValueError(f"rate_limit: not a limit such as 60/minute: {self.rate_limit!r}") from None
        if not (math.isfinite(self.idle_timeout) and self.idle_timeout >= 0):
            raise ValueError(f"idle_timeout must be a finite number >= 0, got {self.idle_timeout}")
        if not (math.isfinite(self.vad_threshold) and 0 < self.vad_threshold < 1):
            raise ValueError(f"vad_threshold must be a probability between 0 and 1, got {self.vad_threshold!r}")
        for name in ("vad_min_silence", "vad_padding"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 10):
                raise ValueError(f"{name} must be 0 to 10 seconds, got {value!r}")
        if not (math.isfinite(self.visibility_timeout) and self.visibility_timeout >= 10):
            raise ValueError(f"visibility_timeout must be at least 10 seconds, got {self.visibility_timeout!r}")
        if self.broker_url and not self.broker_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("broker_url must be a Redis URL: redis://host:port/db, rediss://... or unix://...")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1-65535, got {self.port}")

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The configured (non-admin) API keys."""
        return _keys(self.api_key)

    @property
    def admin_api_keys(self) -> tuple[str, ...]:
        """The configured admin keys."""
        return _keys(self.admin_api_key)

    @property
    def every_api_key(self) -> tuple[str, ...]:
        """Every key a request may carry, admin keys included; empty when the server is open."""
        return self.api_keys + self.admin_api_keys

    @property
    def clustered(self) -> bool:
        """Whether the model runs in workers behind a broker rather than in this process."""
        return bool(self.broker_url)

    @property
    def broker(self) -> str:
        """The broker URL to connect to: broker_url, with broker_password in it when it has none of its own."""
        from urllib.parse import quote, urlsplit, urlunsplit

        parts = urlsplit(self.broker_url)
        if not self.broker_password or parts.password is not None or parts.scheme == "unix":
            return self.broker_url
        netloc = f"{quote(parts.username or '', safe='')}:{quote(self.broker_password, safe='')}@{parts.netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def model_variant(self) -> Variant:
        """The Variant this service runs."""
        return get_variant(self.variant)

    @property
    def data_path(self) -> Path:
        """data_dir as an absolute Path."""
        return Path(self.data_dir).expanduser().resolve()

    def default_options(self) -> TranscribeOptions:
        """The options a request gets for fields it leaves out."""
        return TranscribeOptions(
            segment_duration=self.segment_duration,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            repetition_penalty=self.repetition_penalty,
            vad=self.vad,
        )

    @property
    def aligner_enabled(self) -> bool:
        """Whether word times come from the aligner (else they are estimated from the speech)."""
        return self.aligner.strip().lower() not in ("", "none", "off")

    @property
    def vad_settings(self) -> VadSettings:
        """How the VAD tells speech from the rest."""
        return VadSettings(self.vad_threshold, self.vad_min_silence, self.vad_padding)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from environment variables, then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw.strip() != "":
                values[f.name] = parse_value(f.name, field_type(f.name), raw)
        # One construction, so variant defaults fill only what neither the environment nor overrides set.
        chosen = {**values, **overrides}
        if chosen.get("vad") is None:
            chosen["vad"] = get_variant(chosen.get("variant") or DEFAULT_VARIANT).vad
        return cls(**chosen)

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (handed to the gunicorn worker)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.metadata["env"]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def field_type(name: str) -> type:
    """The Python type of a settings field."""
    return type(Settings.__dataclass_fields__[name].default)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(raw: str) -> int:
    """'4G', '512M', '1048576' -> bytes (binary multiples)."""
    match = _SIZE.match(raw)
    if not match:
        raise ValueError(f"not a size: {raw!r}")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_kmgt".index(unit.lower() or "_"))


def parse_value(name: str, kind: type, raw: str) -> Any:
    """Parse one setting from its string form."""
    if kind is bool:
        flag = parse_flag(raw)
        if flag is None:
            raise ValueError(f"{name}: expected a boolean, got {raw!r}")
        return flag
    if Settings.__dataclass_fields__[name].metadata.get("size"):
        return parse_size(raw)
    try:
        return kind(raw.strip())
    except ValueError:
        raise ValueError(f"{name}: expected {kind.__name__}, got {raw!r}") from None
