#!/usr/bin/env python3
"""Start the transcription service under gunicorn (one worker process, threads).

Every flag has an environment variable (ASR_*); flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import Field, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.checkpoints import start_up_problem  # noqa: E402
from app.errors import ServiceError  # noqa: E402
from app.settings import Settings, field_type, parse_value  # noqa: E402


def shown_default(f: Field[Any]) -> str:
    """A setting's default as --help shows it (the parser's own default is None: unset flags defer to the env)."""
    if "shown" in f.metadata:
        return str(f.metadata["shown"])
    value = f.default
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value) if value != "" else "none"


def build_parser() -> argparse.ArgumentParser:
    """One flag per Settings field, defaulting to its environment variable."""
    parser = argparse.ArgumentParser(description=__doc__)
    for f in fields(Settings):
        flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        env = f.metadata["env"]
        help_text = f"{f.metadata['help']} (default: {shown_default(f)}; env {env})"
        if field_type(f.name) is bool:
            # --flag and --no-flag: a setting that is on by default (--vad) can be turned off.
            parser.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                *flags, dest=f.name, metavar=f.name.upper(), choices=f.metadata.get("choices"),
                default=None, help=help_text,
            )  # fmt: skip
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The Settings of parsed flags over the environment (ValueError or ServiceError when they are invalid)."""
    overrides = {
        name: value if isinstance(value, bool) else parse_value(name, field_type(name), value)
        for name, value in vars(args).items()
        if value is not None
    }
    return Settings.from_env(environ, **overrides)


def with_absolute_checkpoint(settings: Settings) -> Settings:
    """A local checkpoint directory made absolute: the process that loads it may run from another directory."""
    checkpoint = settings.checkpoint_path
    if os.path.isdir(checkpoint):
        checkpoint = str(Path(checkpoint).resolve())
    return replace(settings, checkpoint_path=checkpoint)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, validate the settings, then exec gunicorn with them in the environment."""
    try:
        settings = settings_from(build_parser().parse_args(argv))
    except (ValueError, ServiceError) as exc:
        sys.exit(f"error: {exc}")
    # In cluster mode the model (and its checkpoint) lives with the workers, not here.
    problem = None if settings.clustered else start_up_problem(settings)
    if problem is not None:
        sys.exit(f"error: {problem}")
    # gunicorn runs from the project root, so paths relative to the caller's directory are made absolute.
    settings = replace(with_absolute_checkpoint(settings), data_dir=str(settings.data_path))
    settings.data_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env()}
    if settings.local_model:
        # Nothing in the worker may reach the Hub, not only the model loads that pass local_files_only.
        env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [
        sys.executable, "-m", "gunicorn",
        "--config", str(ROOT / "serve" / "gunicorn_conf.py"),
        "--chdir", str(ROOT),
        "app:create_app()",
    ]  # fmt: skip
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
