"""app.settings: environment parsing, sizes, validation and the to_env round trip."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from app.errors import InvalidOption
from app.protocol.native import TranscribeOptions
from app.settings import Settings, parse_size
from app.variants import VARIANTS

GiB = 1024**3


def test_every_field_has_an_asr_env_var_and_help() -> None:
    """Each setting carries a unique ASR_<FIELD> variable and help text."""
    names = [f.metadata["env"] for f in fields(Settings)]
    assert len(set(names)) == len(names)
    for f in fields(Settings):
        assert f.metadata["env"] == "ASR_" + f.name.upper()
        assert f.metadata["help"]


def test_defaults_from_empty_environment(tmp_path) -> None:
    """No ASR_* variables gives the documented defaults."""
    settings = Settings.from_env({"ASR_DATA_DIR": str(tmp_path)})
    assert settings.checkpoint_path == VARIANTS["awq"].checkpoint
    assert settings.device == "auto"
    assert settings.local_model is False
    assert settings.segment_duration == 60.0
    assert settings.max_new_tokens == 8192
    assert settings.max_upload_size == 4 * GiB
    assert (settings.batch_size, settings.job_workers, settings.threads, settings.port) == (16, 2, 64, 5000)
    assert settings.token_budget == 65536
    assert settings.data_path == tmp_path.resolve()


def test_reads_every_kind_of_variable() -> None:
    """Strings, bools, floats, ints and sizes are parsed from their variables."""
    env = {
        "ASR_CHECKPOINT_PATH": "/models/omni",
        "ASR_LOCAL_MODEL": "yes",
        "ASR_DEVICE": "cpu",
        "ASR_FLASH_ATTN2": "1",
        "ASR_IDLE_TIMEOUT": "12.5",
        "ASR_DATA_DIR": "/var/lib/asr",
        "ASR_SEGMENT_DURATION": "30",
        "ASR_MAX_NEW_TOKENS": "512",
        "ASR_TEMPERATURE": "0",
        "ASR_REPETITION_PENALTY": "1.3",
        "ASR_MAX_UPLOAD_SIZE": "512M",
        "ASR_BATCH_SIZE": "4",
        "ASR_JOB_WORKERS": "3",
        "ASR_HOST": "127.0.0.1",
        "ASR_PORT": "8080",
        "ASR_THREADS": "5",
        "UNRELATED": "ignored",
    }
    s = Settings.from_env(env)
    assert s == Settings(
        checkpoint_path="/models/omni",
        local_model=True,
        device="cpu",
        flash_attn2=True,
        idle_timeout=12.5,
        data_dir="/var/lib/asr",
        segment_duration=30.0,
        max_new_tokens=512,
        temperature=0.0,
        repetition_penalty=1.3,
        max_upload_size=512 * 1024**2,
        batch_size=4,
        job_workers=3,
        host="127.0.0.1",
        port=8080,
        threads=5,
    )
    assert s.default_options() == TranscribeOptions(
        segment_duration=30.0, max_new_tokens=512, temperature=0.0, repetition_penalty=1.3
    )


def test_blank_variables_are_ignored() -> None:
    """Empty or whitespace-only variables leave the default."""
    s = Settings.from_env({"ASR_PORT": "", "ASR_DEVICE": "  ", "ASR_MAX_NEW_TOKENS": ""})
    assert (s.port, s.device, s.max_new_tokens) == (5000, "auto", 8192)


def test_overrides_win_over_environment() -> None:
    """Keyword overrides (CLI flags) replace environment values, and are validated."""
    s = Settings.from_env({"ASR_PORT": "8080", "ASR_THREADS": "4"}, port=9000)
    assert (s.port, s.threads) == (9000, 4)
    with pytest.raises(ValueError, match="port"):
        Settings.from_env({}, port=0)


def test_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no mapping given, the process environment is read."""
    monkeypatch.setenv("ASR_BATCH_SIZE", "3")
    assert Settings.from_env().batch_size == 3


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("4G", 4 * GiB),
        ("4g", 4 * GiB),
        ("512M", 512 * 1024**2),
        ("1024", 1024),
        ("1.5K", 1536),
        ("2T", 2 * 1024**4),
        ("4GB", 4 * GiB),
        ("4GiB", 4 * GiB),
        (" 10 M ", 10 * 1024**2),
        ("100b", 100),
    ],
)
def test_parse_size(raw: str, size: int) -> None:
    """Binary K/M/G/T suffixes, optional i/B, surrounding spaces."""
    assert parse_size(raw) == size


@pytest.mark.parametrize("raw", ["", "abc", "-1", "4X", "G", "1e6", "4 GB extra", "1,000"])
def test_parse_size_rejects(raw: str) -> None:
    """Anything not a non-negative number with an optional unit is a ValueError."""
    with pytest.raises(ValueError, match="not a size"):
        parse_size(raw)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ASR_PORT": "http"}, "port"),
        ({"ASR_PORT": "0"}, "port"),
        ({"ASR_PORT": "65536"}, "port"),
        ({"ASR_THREADS": "0"}, "threads"),
        ({"ASR_BATCH_SIZE": "-2"}, "batch_size"),
        ({"ASR_JOB_WORKERS": "1.5"}, "job_workers"),
        ({"ASR_DEVICE": "gpu"}, "device"),
        ({"ASR_LOCAL_MODEL": "maybe"}, "local_model"),
        ({"ASR_FLASH_ATTN2": "2"}, "flash_attn2"),
        ({"ASR_IDLE_TIMEOUT": "-1"}, "idle_timeout"),
        ({"ASR_IDLE_TIMEOUT": "soon"}, "idle_timeout"),
        ({"ASR_MAX_UPLOAD_SIZE": "lots"}, "not a size"),
        ({"ASR_MAX_UPLOAD_SIZE": "0"}, "max_upload_size"),
        ({"ASR_SEGMENT_DURATION": "abc"}, "segment_duration"),
        ({"ASR_MAX_NEW_TOKENS": "12.5"}, "max_new_tokens"),
    ],
)
def test_invalid_values_raise_value_error(env: dict[str, str], match: str) -> None:
    """Malformed or out-of-range values raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=match):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"ASR_SEGMENT_DURATION": "0.5"}, "segment_duration"),
        ({"ASR_SEGMENT_DURATION": "301"}, "segment_duration"),
        ({"ASR_SEGMENT_DURATION": "inf"}, "segment_duration"),
        ({"ASR_MAX_NEW_TOKENS": "0"}, "max_new_tokens"),
        ({"ASR_MAX_NEW_TOKENS": "40000"}, "max_new_tokens"),
        ({"ASR_TEMPERATURE": "2.5"}, "temperature"),
        ({"ASR_TEMPERATURE": "nan"}, "temperature"),
        ({"ASR_REPETITION_PENALTY": "0.1"}, "repetition_penalty"),
    ],
)
def test_option_defaults_out_of_range(env: dict[str, str], field: str) -> None:
    """Request-option defaults are checked with the same rules as requests (InvalidOption)."""
    with pytest.raises(InvalidOption) as info:
        Settings.from_env(env)
    assert info.value.field == field


@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_idle_timeout_must_be_finite(raw: str) -> None:
    """A non-finite idle timeout is rejected at start-up."""
    with pytest.raises(ValueError, match="idle_timeout"):
        Settings.from_env({"ASR_IDLE_TIMEOUT": raw})


def test_to_env_round_trip_defaults() -> None:
    """from_env(to_env()) reproduces the default settings."""
    settings = Settings()
    assert Settings.from_env(settings.to_env()) == settings


def test_to_env_round_trip_custom() -> None:
    """from_env(to_env()) reproduces non-default settings of every type."""
    settings = Settings(
        checkpoint_path="/srv/models/Qwen2.5-Omni-3B",
        local_model=True,
        device="cuda",
        flash_attn2=True,
        idle_timeout=0.0,
        data_dir="/tmp/asr data",
        segment_duration=1.5,
        max_new_tokens=32768,
        temperature=0.7,
        repetition_penalty=0.5,
        max_upload_size=123_456_789,
        batch_size=1,
        job_workers=7,
        host="::1",
        port=65535,
        threads=1,
    )
    env = settings.to_env()
    assert env["ASR_LOCAL_MODEL"] == "1"
    assert env["ASR_MAX_UPLOAD_SIZE"] == "123456789"
    assert set(env) == {f.metadata["env"] for f in fields(Settings)}
    assert Settings.from_env(env) == settings


def test_readme_documents_every_flag_and_environment_variable() -> None:
    """The configuration table in the README stays in step with Settings."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        assert f"`{flag}`" in readme and f"`{f.metadata['env']}`" in readme, f.name


@pytest.mark.parametrize(
    ("variant", "checkpoint", "segment", "device"),
    [
        ("awq", "Qwen/Qwen2.5-Omni-7B-AWQ", 60.0, "auto"),
        ("full", "Qwen/Qwen2.5-Omni-7B", 60.0, "auto"),
        ("captioner", "Qwen/Qwen3-Omni-30B-A3B-Captioner", 30.0, "auto"),
        ("cpu", "Qwen/Qwen2.5-Omni-3B", 60.0, "cpu"),
    ],
)
def test_variant_supplies_unset_defaults(variant: str, checkpoint: str, segment: float, device: str) -> None:
    """Checkpoint, segment length (0 = unset) and device come from the variant unless given."""
    settings = Settings.from_env({"ASR_VARIANT": variant, "ASR_SEGMENT_DURATION": "0"})
    assert (settings.checkpoint_path, settings.segment_duration, settings.device) == (checkpoint, segment, device)
    given = Settings.from_env(
        {"ASR_VARIANT": variant, "ASR_CHECKPOINT_PATH": "/models/x", "ASR_SEGMENT_DURATION": "12", "ASR_DEVICE": "cuda"}
    )
    assert (given.checkpoint_path, given.segment_duration, given.device) == ("/models/x", 12.0, "cuda")
    assert given.model_variant.name == variant


def test_unknown_variant_is_rejected() -> None:
    """The error lists the known variants."""
    with pytest.raises(ValueError, match="captioner-awq"):
        Settings.from_env({"ASR_VARIANT": "whisper"})


def test_variant_override_gets_its_own_defaults() -> None:
    """A variant given as an override (the CLI's --variant) still supplies checkpoint and segment length."""
    settings = Settings.from_env({}, variant="captioner")
    assert settings.checkpoint_path == VARIANTS["captioner"].checkpoint and settings.segment_duration == 30.0


def test_cluster_settings_are_checked() -> None:
    """--broker takes only a Redis URL; the visibility timeout cannot be shorter than a task."""
    assert Settings(broker_url="redis://127.0.0.1:6379/0").clustered
    assert not Settings().clustered
    with pytest.raises(ValueError, match="broker_url must be a Redis URL"):
        Settings(broker_url="amqp://guest@localhost//")
    with pytest.raises(ValueError, match="visibility_timeout"):
        Settings(visibility_timeout=5)
    # A password in the URL stays out of the settings' repr (and so out of logs).
    assert "secret" not in repr(Settings(broker_url="redis://:secret@host/0"))
