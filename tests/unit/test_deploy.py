"""Deployment files: Dockerfiles, entrypoint, docker-compose.yml, .env.example and .dockerignore.

No Docker engine runs here, so the compose file is validated against the Compose Specification's JSON Schema
(../shared/schemas/compose-spec.json) as written and after interpolating its ${VAR:-default}s; the services'
environments are fed to the real Settings parser; the entrypoint is run with sh; the Dockerfiles are read as
text for the properties the deployment relies on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.settings import Settings
from app.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
COMPOSE = ROOT / "docker-compose.yml"
GPU_DOCKERFILE = ROOT / "Dockerfile"
CPU_DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
CLI = "/app/serve/qwen2_5_omni_awq.py"

# Service -> its profile, which is also the ASR_VARIANT it serves.
SERVICES = {
    "qwen2.5-omni-http-awq": "awq",
    "qwen2.5-omni-http-full": "full",
    "qwen2.5-omni-http-3b": "3b",
    "qwen3-omni-http-captioner": "captioner",
    "qwen3-omni-http-captioner-awq": "captioner-awq",
    "qwen3-omni-http-instruct-awq": "instruct-awq",
    "qwen3-asr-http-asr": "asr",
    "qwen3-asr-http-asr-0.6b": "asr-0.6b",
    "qwen-omni-http-cpu": "cpu",
}
CPU_PROFILES = {"cpu"}
# Cluster mode's services: the broker, an HTTP node (no model), one worker per GPU.
CLUSTER_SERVICES = {"redis", "qwen-asr-cluster-http", "qwen-asr-cluster-worker-gpu0"}


# --- helpers ----------------------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}$]*))?\}|\$")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation, the subset this file may use: $$, ${VAR}, ${VAR-default}, ${VAR:-default}.

    Anything else (a bare $VAR, ${VAR:?...}, nesting) raises, so the compose file cannot drift into syntax
    these tests do not understand.
    """
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name")
        if name is None:
            raise ValueError(f"unsupported interpolation in {value!r}")
        if match.group("op") == ":-":
            return env.get(name) or match.group("default")
        if match.group("op") == "-":
            return env.get(name, match.group("default"))
        return env.get(name, "")

    return _REFERENCE.sub(replace, value)


def references(text: str) -> list[tuple[str, str | None]]:
    """(name, default or None) of every ${...} in text, $$ escapes skipped."""
    found = []
    for match in _REFERENCE.finditer(text):
        if match.group("name"):
            found.append((match.group("name"), match.group("default") if match.group("op") == ":-" else None))
    return found


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def schema_errors(document: Any) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        pending = ""
        out.append((word.upper(), " ".join(rest.split())))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions after the last FROM: what the image that runs is made of."""
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def image_env(path: Path) -> dict[str, str]:
    """ENV of the final stage, values as written (no $-expansion)."""
    env = {}
    for word, rest in final_stage(path):
        if word == "ENV":
            for token in shlex.split(rest):
                key, sep, val = token.partition("=")
                assert sep, f"{path.name}: use ENV key=value, got {token!r}"
                env[key] = val
    return env


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    return (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()


def env_example() -> dict[str, str]:
    """KEY=VALUE lines of .env.example."""
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line.strip())
        if match:
            pairs[match.group(1)] = match.group(2)
    return pairs


def short_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Interpolated short-syntax volumes as {target: source}."""
    mounts = {}
    for entry in service["volumes"]:
        source, target, *_ = entry.split(":")
        mounts[target] = source
    return mounts


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps path out of the build context (Docker's rules: last match wins, a
    pattern matching a directory covers everything under it, * does not cross /, ** does)."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        rules.append((re.compile(regex), negate))
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, negate in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def services_interpolated(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The variants' services (the cluster profile's are checked on their own), interpolated."""
    return {k: v for k, v in all_services(env).items() if k in SERVICES}


def all_services(env: dict[str, str] | None = None) -> dict[str, Any]:
    return dict(interpolate(load_compose(), env or {})["services"])


# --- docker-compose.yml -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        None,
        {},
        {"GPU_COUNT": "all", "READ_ONLY_ROOTFS": "false", "DATA_DIR": "/srv/asr", "BIND_ADDRESS": "0.0.0.0"},
    ],
    ids=["as-written", "defaults", "overrides"],
)
def test_compose_file_matches_the_compose_schema(env: dict[str, str] | None) -> None:
    """Valid as written, and after interpolation with the defaults or with overrides."""
    document = load_compose() if env is None else interpolate(load_compose(), env)
    assert schema_errors(document) == []


def test_schema_validation_catches_mistakes() -> None:
    """The validation above is not vacuous: a misspelt key and a wrongly typed value are reported."""
    document = load_compose()
    document["services"]["qwen2.5-omni-http-awq"]["restart_policy"] = "always"
    document["services"]["qwen-omni-http-cpu"]["ports"] = "5006:5000"
    errors = schema_errors(document)
    assert any("restart_policy" in error for error in errors)
    assert any(error.startswith("services/qwen-omni-http-cpu/ports") for error in errors)


def test_one_service_and_profile_per_variant() -> None:
    """Every variant in the registry has exactly one service, behind a profile of the variant's name."""
    services = {k: v for k, v in load_compose()["services"].items() if k not in CLUSTER_SERVICES}
    assert set(services) == set(SERVICES)
    assert set(SERVICES.values()) == set(VARIANTS)
    profiles = [profile for service in services.values() for profile in service["profiles"]]
    assert sorted(profiles) == sorted(SERVICES.values())
    for name, service in services.items():
        assert service["profiles"] == [SERVICES[name]]
        assert service["environment"]["ASR_VARIANT"] == SERVICES[name]


@pytest.mark.parametrize("name", SERVICES)
def test_service_environment_is_accepted_by_the_cli_settings(name: str) -> None:
    """Image ENV plus the service's interpolated environment make valid Settings for the right variant."""
    service = services_interpolated()[name]
    variant = SERVICES[name]
    env = {**image_env(dockerfile_of(service)), **service["environment"]}
    settings = Settings.from_env(env)
    assert settings.variant == variant
    assert settings.checkpoint_path == VARIANTS[variant].checkpoint
    assert settings.segment_duration == VARIANTS[variant].segment_duration
    assert settings.device == ("cpu" if variant in CPU_PROFILES else "cuda")
    assert (settings.data_dir, settings.host, settings.port) == (f"/data/{variant}", "0.0.0.0", 5000)
    assert (settings.idle_timeout, settings.max_upload_size) == (300.0, 4 * 1024**3)


def test_checkpoints_are_configurable_per_variant() -> None:
    """CHECKPOINT_<VARIANT> points one variant (here the 8-bit Captioner) elsewhere and leaves the rest."""
    services = services_interpolated({"CHECKPOINT_CAPTIONER_AWQ": "/models/captioner-8bit"})
    for name, service in services.items():
        settings = Settings.from_env(service["environment"])
        expected = (
            "/models/captioner-8bit" if SERVICES[name] == "captioner-awq" else VARIANTS[SERVICES[name]].checkpoint
        )
        assert settings.checkpoint_path == expected


def test_gpu_services_reserve_an_nvidia_gpu_and_the_cpu_service_does_not() -> None:
    for name, service in services_interpolated().items():
        if SERVICES[name] in CPU_PROFILES:
            assert "deploy" not in service and "gpus" not in service and "runtime" not in service
            assert dockerfile_of(service) == CPU_DOCKERFILE
            continue
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert [(d["driver"], d["capabilities"]) for d in devices] == [("nvidia", ["gpu"])], name
        assert devices[0]["count"] == "1"
        assert dockerfile_of(service) == GPU_DOCKERFILE


def test_services_are_healthchecked_restarted_and_hardened() -> None:
    for name, service in services_interpolated().items():
        test = " ".join(service["healthcheck"]["test"])
        assert "curl" in test and "http://127.0.0.1:${ASR_PORT:-5000}/health" in test, name
        assert service["restart"] == "unless-stopped"
        assert service["init"] is True
        assert service["user"] == "1000:1000"
        assert service["read_only"] == "true" and "/tmp" in service["tmpfs"]


def test_services_keep_their_own_data_dir_and_share_the_hf_cache() -> None:
    """Each service has its own ASR_DATA_DIR under the /data mount (its job database resumes unfinished jobs
    at start, so it must never be shared); the Hugging Face cache is mounted at the image's HF_HOME."""
    data_dirs = []
    for name, service in services_interpolated().items():
        mounts = short_volumes(service)
        hf_home = image_env(dockerfile_of(service))["HF_HOME"]
        assert mounts == {"/data": "./data", hf_home: "./hf_cache", "/models": "./models"}, name
        assert hf_home == "/data/hf_cache"
        assert service["environment"]["ASR_DATA_DIR"] == f"/data/{SERVICES[name]}"
        data_dirs.append(service["environment"]["ASR_DATA_DIR"])
    assert len(set(data_dirs)) == len(data_dirs)
    assert "/data/hf_cache" not in data_dirs and "/data/cache" not in data_dirs


def test_ports_map_container_port_5000_to_distinct_host_ports() -> None:
    """Published on loopback by default; the default variant keeps the service's usual port 5000."""
    host_ports = {}
    for name, service in services_interpolated().items():
        assert len(service["ports"]) == 1
        address, host_port, container_port = service["ports"][0].split(":")
        assert (address, container_port) == ("127.0.0.1", "5000")
        host_ports[name] = int(host_port)
    assert len(set(host_ports.values())) == len(host_ports)
    assert host_ports["qwen2.5-omni-http-awq"] == 5000


def test_services_start_through_the_image_entrypoint() -> None:
    """No service overrides the entrypoint or passes a command: they all run the image's CLI."""
    for name, service in load_compose()["services"].items():
        if name == "redis":
            continue
        assert "entrypoint" not in service, name
        # A worker runs its own script through the same entrypoint (which makes the state dirs first).
        assert service.get("command", ["python3", "/app/serve/worker.py"]) == ["python3", "/app/serve/worker.py"]
        assert ("command" in service) == name.startswith("qwen-asr-cluster-worker"), name
    for dockerfile in (GPU_DOCKERFILE, CPU_DOCKERFILE):
        entrypoints = [rest for word, rest in final_stage(dockerfile) if word == "ENTRYPOINT"]
        assert [json.loads(rest) for rest in entrypoints] == [["/app/docker/entrypoint.sh"]]
        copies = [rest for word, rest in final_stage(dockerfile) if word == "COPY"]
        assert ("WORKDIR", "/app") in final_stage(dockerfile)
        assert {"app/ ./app/", "serve/ ./serve/", "--chmod=0755 docker/entrypoint.sh ./docker/entrypoint.sh"} <= set(
            copies
        )
    assert (ROOT / "serve" / "qwen2_5_omni_awq.py").is_file()


def test_compose_build_args_exist_in_the_dockerfile() -> None:
    args = {rest.split("=")[0] for word, rest in dockerfile_instructions(GPU_DOCKERFILE) if word == "ARG"}
    for name, service in load_compose()["services"].items():
        if name not in CLUSTER_SERVICES and SERVICES[name] not in CPU_PROFILES:
            assert set(service["build"]["args"]) <= args


def test_every_compose_variable_has_a_default_documented_in_env_example() -> None:
    """Compose works without a .env, and .env.example lists each variable with that same default."""
    documented = env_example()
    defaults: dict[str, set[str | None]] = {}
    for name, default in references(COMPOSE.read_text()):
        defaults.setdefault(name, set()).add(default)
    assert "DATA_DIR" in defaults and "HF_CACHE_DIR" in defaults
    for name, values in defaults.items():
        assert None not in values, f"${{{name}}} has no :- default"
        assert len(values) == 1, f"${{{name}}} has different defaults: {values}"
        assert name in documented, f"{name} is not in .env.example"
        assert documented[name] == values.pop(), f"{name}: .env.example and compose defaults differ"


def test_every_setting_in_env_example_reaches_the_services() -> None:
    """A variable .env.example offers must be passed into the containers, or setting it does nothing."""
    compose = (ROOT / "docker-compose.yml").read_text()
    unset = [name for name in env_example() if name.startswith("ASR_") and f"{name}:" not in compose]
    assert unset == []


def test_env_example_documents_every_setting() -> None:
    """Each ASR_* setting and the Hugging Face variables appear in .env.example, each KEY=VALUE with a comment."""
    text = ENV_EXAMPLE.read_text()
    names = [settings_field.metadata["env"] for settings_field in Settings.__dataclass_fields__.values()]
    for name in [*names, "HF_HUB_OFFLINE", "HF_CACHE_DIR", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"]:
        assert name in text, name
    # Every KEY=VALUE line sits in a group of such lines that a comment introduces.
    previous = ""
    for line in text.splitlines():
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", line):
            assert previous.startswith("#") or "=" in previous, f"no comment for {line}"
        previous = line
    assert "hf download" in text


# --- Dockerfiles ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [GPU_DOCKERFILE, CPU_DOCKERFILE], ids=["gpu", "cpu"])
def test_dockerfile_builds_a_self_contained_non_root_image(dockerfile: Path) -> None:
    instructions = dockerfile_instructions(dockerfile)
    runs = [rest for word, rest in instructions if word == "RUN"]
    assert any("pip install --no-cache-dir -r requirements.txt" in run for run in runs)
    assert ("COPY", "requirements.txt ./") in instructions
    # No weights baked in.
    for run in runs:
        assert not re.search(r"\bhf download|huggingface-cli|snapshot_download|from_pretrained", run), run
    stage = final_stage(dockerfile)
    users = [rest for word, rest in stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [rest for word, rest in stage if word == "EXPOSE"] == ["5000"]
    assert [json.loads(rest) for word, rest in stage if word == "VOLUME"] == [["/data"]]
    healthchecks = [rest for word, rest in stage if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "--start-period=60s" in healthchecks[0]
    assert "curl" in healthchecks[0] and "http://127.0.0.1:${ASR_PORT:-5000}/health" in healthchecks[0]
    env = image_env(dockerfile)
    expected = {"HF_HOME": "/data/hf_cache", "ASR_DATA_DIR": "/data", "ASR_HOST": "0.0.0.0", "ASR_PORT": "5000"}
    assert {key: env.get(key) for key in expected} == expected
    assert env["PYTHONUNBUFFERED"] == "1"
    # Compiled code is cached and loaded from /data: the root filesystem may be read-only, /tmp noexec.
    for key in ("XDG_CACHE_HOME", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert env[key].startswith("/data/"), key
    assert set(shlex.split(env["GUNICORN_CMD_ARGS"])) >= {"--worker-tmp-dir", "/dev/shm", "--no-control-socket"}
    assert "curl" in " ".join(runs) and "ffmpeg" in " ".join(runs)


@pytest.mark.parametrize("dockerfile", [GPU_DOCKERFILE, CPU_DOCKERFILE], ids=["gpu", "cpu"])
def test_images_use_the_projects_python(dockerfile: Path) -> None:
    """The base image carries the Python the project pins and tests (ruff's target-version)."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["target-version"]
    version = f"{target[2]}.{target[3:]}"
    bases = [rest.split()[0] for word, rest in dockerfile_instructions(dockerfile) if word == "FROM"]
    assert bases and all(base.startswith(f"python:{version}-") for base in bases)
    # Paths into the venv's site-packages name the same Python.
    assert set(re.findall(r"python(3\.\d+)/site-packages", dockerfile.read_text())) <= {version}


@pytest.mark.parametrize("dockerfile", [GPU_DOCKERFILE, CPU_DOCKERFILE], ids=["gpu", "cpu"])
def test_dockerfile_compiles_in_a_builder_and_copies_only_the_venv(dockerfile: Path) -> None:
    instructions = dockerfile_instructions(dockerfile)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final_stage(dockerfile)
    runtime_runs = " ".join(rest for word, rest in final_stage(dockerfile) if word == "RUN")
    assert "build-essential" not in runtime_runs and not re.search(r"\S-dev\b", runtime_runs)
    # Extras never move a pinned requirement.
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    for command in re.findall(r"pip install [^;&]*", runs):
        assert "-r requirements.txt" in command or "-c requirements.txt" in command, command


def test_gpu_dockerfile_has_optional_cuda_kernels_and_flash_attn() -> None:
    instructions = dockerfile_instructions(GPU_DOCKERFILE)
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    assert (args["CUDA_KERNELS"], args["FLASH_ATTN"]) == ("1", "0")
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", args["FLASH_ATTN_VERSION"])
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert 'if [ "$CUDA_KERNELS" = 1 ] || [ "$FLASH_ATTN" = 1 ]' in runs and "cuda-toolkit[nvcc" in runs
    assert 'if [ "$FLASH_ATTN" = 1 ]' in runs and '"flash-attn==${FLASH_ATTN_VERSION}"' in runs
    # site-packages is read-only at run time: gptqmodel's generated Marlin sources must exist beforehand.
    if re.search(r"^gptqmodel==", (ROOT / "requirements.txt").read_text(), re.MULTILINE):
        assert re.search(r'gptqmodel_ext/marlin/generate_kernels\.py"? --check', runs)


def test_gpu_image_matches_the_cuda_version_of_the_pinned_torch() -> None:
    """nvcc (gptqmodel's kernels, flash-attn) and the driver requirement follow torch's CUDA: the local venv
    has the same pinned torch wheel from PyPI as the image."""
    torch = pytest.importorskip("torch")
    assert torch.version.cuda, "the pinned torch is expected to be a CUDA build"
    major, minor = torch.version.cuda.split(".")[:2]
    text = GPU_DOCKERFILE.read_text()
    assert re.search(rf"^ARG CUDA_TOOLKIT_VERSION={major}\.{minor}\.\d+$", text, re.MULTILINE)
    assert f"libcudart.so.{major}" in text and f"nvidia/cu{major}" in text
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={major}.{minor}"' in text


def test_cpu_dockerfile_defaults_to_the_cpu_variant() -> None:
    env = image_env(CPU_DOCKERFILE)
    assert (env["ASR_VARIANT"], env["ASR_DEVICE"]) == ("cpu", "cpu")
    assert "nvcc" not in " ".join(rest for word, rest in dockerfile_instructions(CPU_DOCKERFILE) if word == "RUN")


# --- entrypoint ----------------------------------------------------------------------------------------------


def test_entrypoint_is_valid_shell_that_only_execs_the_cli() -> None:
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert os.access(ENTRYPOINT, os.X_OK)
    code = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert "set -eu" in code
    assert f'exec python3 {CLI} "$@"' in code
    assert not any(re.search(r"\bpip3?\b|python3? -m pip|\bapt-get\b", line) for line in code)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_entrypoint_passes_shellcheck() -> None:
    subprocess.run(["shellcheck", "--shell=sh", str(ENTRYPOINT)], check=True)


def run_entrypoint(tmp_path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the entrypoint with sh, with a stand-in python3 on PATH that prints its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text('#!/bin/sh\necho "python3 $*"\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ASR_DATA_DIR": str(data_dir),
        "HF_HOME": str(data_dir / "hf_cache"),
        "XDG_CACHE_HOME": str(data_dir / "cache"),
    }
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30)


def test_entrypoint_creates_the_state_dirs_and_passes_flags_to_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_entrypoint(tmp_path, data, "--variant", "full", "--port", "5001")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"python3 {CLI} --variant full --port 5001"
    assert (data / "hf_cache").is_dir() and (data / "cache").is_dir()
    assert not list(data.rglob(".write-test*"))
    assert run_entrypoint(tmp_path, data).stdout.strip() == f"python3 {CLI}"


def test_entrypoint_runs_other_commands_as_given(tmp_path: Path) -> None:
    result = run_entrypoint(tmp_path, tmp_path / "data", "echo", "hf", "download")
    assert (result.returncode, result.stdout.strip()) == (0, "hf download")


def test_entrypoint_refuses_an_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = run_entrypoint(tmp_path, blocker / "data", "--variant", "awq")
    assert result.returncode == 1
    assert "is not writable by uid" in result.stderr and "chown" in result.stderr
    assert result.stdout == ""


# --- .dockerignore -------------------------------------------------------------------------------------------


OUTSIDE_THE_BUILD_CONTEXT = [
    ".venv/bin/python",
    ".git/HEAD",
    ".env",
    "data/awq/jobs.sqlite3",
    "hf_cache/hub/models--Qwen--Qwen2.5-Omni-7B-AWQ/config.json",
    "models/captioner/config.json",
    "tests/unit/test_deploy.py",
    ".pytest_cache/v/cache/nodeids",
    ".mypy_cache/3.11/app.json",
    "app/__pycache__/api.cpython-311.pyc",
]


def test_dockerignore_keeps_the_context_to_what_the_images_copy() -> None:
    for path in OUTSIDE_THE_BUILD_CONTEXT:
        assert dockerignore_excludes(path), path
    copied = [
        rest.split()[-2]
        for dockerfile in (GPU_DOCKERFILE, CPU_DOCKERFILE)
        for word, rest in dockerfile_instructions(dockerfile)
        if word == "COPY" and "--from=" not in rest
    ]
    assert {"requirements.txt", "app/", "serve/", "docker/entrypoint.sh"} <= set(copied)
    for source in copied:
        assert not dockerignore_excludes(source.rstrip("/")), source
    for path in ["app/settings.py", "app/backends/qwen_omni.py", "serve/qwen2_5_omni_awq.py"]:
        assert not dockerignore_excludes(path), path


# --- the cluster profile -----------------------------------------------------------------------------------


def test_cluster_profile_has_redis_an_http_node_and_a_worker_per_gpu() -> None:
    services = all_services()
    assert {name for name, s in services.items() if "cluster" in s.get("profiles", [])} == CLUSTER_SERVICES
    redis, http, worker = (
        services[name] for name in ("redis", "qwen-asr-cluster-http", "qwen-asr-cluster-worker-gpu0")
    )
    # Redis keeps its data in an append-only file on a volume, and never evicts a job or a queued segment.
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert short_volumes(redis) == {"/data": "./redis"}
    assert redis["ports"] == ["127.0.0.1:6379:6379"] and "ping" in " ".join(redis["healthcheck"]["test"])
    # Every node reaches the same broker by the Redis service's name and serves the same variant.
    env_http, env_worker = (
        Settings.from_env({**image_env(dockerfile_of(s)), **s["environment"]}) for s in (http, worker)
    )
    assert env_http.broker_url == env_worker.broker_url == "redis://redis:6379/0"
    assert env_http.variant == env_worker.variant == "awq"
    assert env_http.visibility_timeout == env_worker.visibility_timeout == 3600
    assert http["depends_on"]["redis"]["condition"] == "service_healthy"
    # The HTTP node loads no model: no GPU; the worker has exactly one.
    assert "deploy" not in http and dockerfile_of(http) == CPU_DOCKERFILE
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}
    ]
    assert dockerfile_of(worker) == GPU_DOCKERFILE and worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    # The worker is healthy while its heartbeat is fresh; the HTTP node by /health, as every service.
    assert worker["healthcheck"]["test"] == ["CMD", "python3", "/app/serve/worker.py", "--alive"]
    assert "/health" in " ".join(http["healthcheck"]["test"])
    # A worker on another machine: the cluster-worker profile starts the worker alone.
    assert worker["profiles"] == ["cluster", "cluster-worker"]
    assert all(s["environment"]["ASR_DATA_DIR"] != "/data/awq" for s in (http, worker))


def test_redis_refuses_to_be_published_without_a_password(tmp_path: Path) -> None:
    """The redis service's command, run by sh with a stand-in redis-server that prints what it was given."""
    fake = tmp_path / "redis-server"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    fake.chmod(0o755)
    command = all_services()["redis"]["command"]
    assert command[:2] == ["sh", "-c"]

    def run(password: str, bind: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "REDIS_PASSWORD": password, "REDIS_BIND_ADDRESS": bind}
        return subprocess.run(command, env={**env, "REDIS_MAXMEMORY": "4gb"}, capture_output=True, text=True)

    loopback = run("", "127.0.0.1")
    assert loopback.returncode == 0 and "[--requirepass]" not in loopback.stdout
    assert "[--maxmemory]\n[4gb]\n[--maxmemory-policy]\n[noeviction]" in loopback.stdout
    refused = run("", "0.0.0.0")
    assert refused.returncode == 1 and "without a REDIS_PASSWORD" in refused.stderr
    published = run("a pass$word", "0.0.0.0")
    assert published.returncode == 0 and "[--requirepass]\n[a pass$word]" in published.stdout
    # The health check reads the same password from REDISCLI_AUTH, and every node gets it as ASR_BROKER_PASSWORD.
    env = all_services({"REDIS_PASSWORD": "s3cret"})
    assert env["redis"]["environment"]["REDISCLI_AUTH"] == "s3cret"
    for name in ("qwen-asr-cluster-http", "qwen-asr-cluster-worker-gpu0"):
        settings = Settings.from_env(env[name]["environment"])
        assert settings.broker == "redis://:s3cret@redis:6379/0"
