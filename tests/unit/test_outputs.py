"""app.outputs: timestamped output files that are never overwritten."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.outputs import now_iso, write_output

NAME = re.compile(r"^\d{14}(_\d+)?\.txt$")


def test_write_output_name_and_content(tmp_path: Path) -> None:
    """The file is named by the current UTC second and holds the text as UTF-8."""
    before = datetime.now(UTC).replace(microsecond=0)
    name = write_output(tmp_path / "outputs", "广州市房地产中介协会分析\n")
    after = datetime.now(UTC)
    assert NAME.match(name)
    stamp = datetime.strptime(name[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert before <= stamp <= after
    assert (tmp_path / "outputs" / name).read_bytes() == "广州市房地产中介协会分析\n".encode()
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == [name]


def test_write_output_same_second_distinct_names(tmp_path: Path) -> None:
    """Quick successive writes never share a name, and each keeps its own content."""
    names = [write_output(tmp_path, f"text {n}\n") for n in range(20)]
    assert len(set(names)) == 20
    assert all(NAME.match(n) for n in names)
    # At least two of twenty quick writes fall in one second, so the _N suffix is exercised.
    assert any("_" in n for n in names)
    for n, name in enumerate(names):
        assert (tmp_path / name).read_text() == f"text {n}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_write_output_suffix_numbering(tmp_path: Path) -> None:
    """When the plain name is taken, the next write in that second gets _2."""
    stamp = datetime.now(UTC)
    # Reserve the plain name for this second and the next so the suffix is needed whichever second the write sees.
    for second in (stamp, stamp + timedelta(seconds=1)):
        (tmp_path / f"{second.strftime('%Y%m%d%H%M%S')}.txt").write_text("taken")
    name = write_output(tmp_path, "new")
    assert name.endswith("_2.txt")
    assert (tmp_path / name).read_text() == "new"
    assert (tmp_path / f"{name[:14]}.txt").read_text() == "taken"


def test_write_output_concurrent_threads(tmp_path: Path) -> None:
    """Writes racing from many threads get distinct names with intact contents and no .tmp leftovers."""
    count = 16
    texts = [f"thread {n} " * 2000 for n in range(count)]
    names: list[str | None] = [None] * count
    barrier = threading.Barrier(count)

    def work(n: int) -> None:
        barrier.wait()
        names[n] = write_output(tmp_path, texts[n])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert None not in names
    assert len(set(names)) == count
    for n, name in enumerate(names):
        assert name is not None
        assert NAME.match(name)
        assert (tmp_path / name).read_text() == texts[n]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(n for n in names if n)
    assert not list(tmp_path.glob("*.tmp"))
    assert not list(tmp_path.glob(".*"))


def test_now_iso_is_utc_seconds() -> None:
    """now_iso is an ISO 8601 UTC timestamp at second precision."""
    value = now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", value)
    assert abs(datetime.fromisoformat(value) - datetime.now(UTC)) < timedelta(seconds=2)
