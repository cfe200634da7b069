"""What every upload route shares: the app's services, the uploaded file and a local path to it."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import request
from werkzeug.datastructures import FileStorage, MultiDict

from app.errors import ClientDisconnected, InvalidRequest, MissingFile
from app.protocol.native import TranscribeOptions, parse_options
from app.services import current_services


def client_check() -> Callable[[], None] | None:
    """A check that raises ClientDisconnected once this request's client has gone, where the server can tell.

    The HTTP worker (serve/http_worker.py) puts asr.client_gone in the environ; elsewhere there is no check.
    """
    gone = request.environ.get("asr.client_gone")
    if gone is None:
        return None

    def check() -> None:
        if gone():
            raise ClientDisconnected("the client closed the connection; the work for it was stopped")

    return check


def form_options() -> TranscribeOptions:
    """The request's transcription options over the server's defaults, checked against what the model accepts.

    The one place a form becomes options, for the native routes and /v1 alike.
    """
    settings = current_services().settings
    return parse_options(request.form, settings.default_options(), settings.model_variant)


def form_and_files() -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]]:
    """The request's form fields and files, parsed once; a clear 400 when the multipart body cannot be parsed."""
    try:
        return request.form, request.files
    except ValueError as exc:
        # Raised by the multipart parser (see UploadRequest): a clear 400 instead of an empty form.
        raise InvalidRequest(f"the multipart body cannot be parsed: {exc}") from None


def uploaded_file(field: str = "file") -> FileStorage:
    """The multipart field `file` (or another); a clear 400 naming the fields sent when it is missing."""
    file = form_and_files()[1].get(field)
    if file is None:
        fields = sorted(request.files.keys())
        hint = f" (got file field(s): {', '.join(fields)})" if fields else ""
        raise MissingFile(f"no audio uploaded: send it as the multipart form field '{field}'{hint}", field=field)
    return file


@contextmanager
def local_path(file: FileStorage) -> Iterator[Path]:
    """A path ffmpeg can read for the upload; temporary copies are removed on every path."""
    name = getattr(file.stream, "name", None)
    if isinstance(name, str) and os.path.isfile(name):
        # Already streamed to a temp file under the data dir by UploadRequest: no second copy.
        file.stream.flush()
        yield Path(name)
        return
    with temporary_file(current_services().uploads_dir) as tmp:
        with tmp.open("wb") as out:
            shutil.copyfileobj(file.stream, out, 1024 * 1024)
        yield tmp


@contextmanager
def temporary_file(directory: Path) -> Iterator[Path]:
    """A fresh file under directory (the data dir's uploads), removed however the block ends."""
    fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def detached_copy(file: FileStorage) -> Path:
    """The upload under a new name in the uploads dir, owned by the caller: it outlives the request's files.

    A streamed response runs after Flask has closed (and so deleted) the request's upload; the caller
    removes this copy when the response closes.
    """
    target = current_services().uploads_dir / f"upload-{uuid.uuid4().hex}"
    name = getattr(file.stream, "name", None)
    if isinstance(name, str) and os.path.isfile(name):
        file.stream.flush()
        keep_file(Path(name), target)
        return target
    try:
        with target.open("xb") as out:
            shutil.copyfileobj(file.stream, out, 1024 * 1024)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def keep_file(source: Path, target: Path) -> None:
    """Give a file on disk a second, lasting name: a hard link when possible (same filesystem), else a copy.

    Written beside the target and renamed over it, so the target is never seen half-written.
    """
    tmp = target.with_name(target.name + ".tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
