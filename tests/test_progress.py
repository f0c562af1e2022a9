"""The progress bar a person reads: items, chunks (the unit of work) and audio, with an ETA.

The bar is drawn only on a terminal, so the end-to-end check runs the command with its stderr
on a pseudo-terminal and reads what it drew. The counting rules (what the chunk total is while
items are still being planned) are checked on the counts themselves."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import yaml

from pipeline.progress import ProgressCounts, bar_layout, format_audio
from pipeline.sources import count_epub_chapters, count_file_items, iter_file_items
from tests.conftest import REPO
from tests.test_sources import CHAPTERS, make_epub

TERMINAL_ROWS, TERMINAL_COLUMNS = 40, 200
BAR = re.compile(r"items (\d+)/(\d+) \| chunks (\d+)/(~?)(\d+) +(\d+)%\|[^|]*\| (\S+ ?s?) of audio \[")


def _run_on_a_terminal(argv: list[str], cwd) -> tuple[int, str, str]:
    """The command with stderr on a pseudo-terminal of a set size (a pty starts at 0 columns, where
    tqdm draws nothing), stdout on a pipe; returns the exit code, stdout and all that stderr drew."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_BACKEND_LOG_LEVEL", "AWS_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=terminal,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    os.close(terminal)
    drawn = bytearray()
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the command ended: the terminal is gone
            break
        if not data:
            break
        drawn += data
    os.close(controller)
    stdout = process.stdout.read().decode()
    return process.wait(timeout=60), stdout, drawn.decode(errors="replace")


def test_the_bar_counts_items_chunks_and_audio_of_a_folder_with_an_epub(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    make_epub(folder / "novel.epub", CHAPTERS)  # a cover without text and three chapters
    (folder / "note.txt").write_text("A short note. It has two sentences.")
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"source": str(tiny_model_dir), "format": "hf"}
    raw["sampling"]["semantic"]["max_new_tokens"] = 12
    raw["text"] = {"max_chars": 60, "max_tokens": 200}
    raw["output"]["subtitles"] = False
    raw["ray"] = {"num_cpus": 2}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"

    code, stdout, drawn = _run_on_a_terminal(
        ["run", "--config", str(config), "--input", str(folder), "--output", str(out)], tmp_path
    )

    assert code == 0, drawn
    metadata = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    chunks = sum(len(m["chunks"]) for m in metadata)
    assert len(metadata) == 4 and chunks > 4  # the chapters are cut into several chunks each
    states = [match.groups() for match in BAR.finditer(drawn)]
    assert states, drawn
    # Counted up front: the text file and the book's spine (its cover page counts until it is read).
    assert {int(s[1]) for s in states} <= {4, 5}
    # The chunk count moves inside an item, not only when items finish.
    assert any(int(now[2]) > int(before[2]) and now[0] == before[0] for before, now in zip(states, states[1:]))
    items_done, items_total, chunks_done, approx, chunks_total, percent, audio = states[-1]
    assert (int(items_done), int(items_total), int(chunks_done), approx, int(chunks_total), percent) == (
        4, 4, chunks, "", chunks, "100",
    )
    summary_audio = float(re.search(r"\(([\d.]+) s\)", stdout).group(1))
    assert audio == format_audio(summary_audio)  # the bar ends on the summary's audio


def test_the_chunk_total_is_estimated_until_the_input_is_read():
    counts = ProgressCounts(items_total=10, items_read=2, items_planned=2, chunks_planned=30, chunks_done=5)
    desc, total, layout = bar_layout(counts)
    assert desc == "items 0/10" and total == 30 + 8 * 15  # eight items to come, at 15 chunks each
    assert "chunks {n_fmt}/~{total_fmt}" in layout and "{remaining}" in layout

    counts.items_read, counts.input_read, counts.items_total = 3, True, 3
    counts.items_planned, counts.chunks_planned, counts.chunks_dropped = 3, 40, 4  # an item failed part way
    desc, total, layout = bar_layout(counts)
    assert desc == "items 0/3" and total == 36 and "/~" not in layout


def test_without_an_item_total_the_bar_shows_the_chunks_planned_and_no_eta():
    counts = ProgressCounts(items_total=None, items_read=3, items_planned=3, chunks_planned=12, audio_s=75)
    desc, total, layout = bar_layout(counts)
    assert desc == "items 0/?" and total is None
    assert "of 12+" in layout and "{remaining}" not in layout and "1m15s of audio" in layout


def test_an_epubs_chapters_are_counted_from_its_spine(tmp_path):
    chapters_only = make_epub(tmp_path / "plain.epub", CHAPTERS[1:])
    with_cover = make_epub(tmp_path / "cover.epub", CHAPTERS)
    assert count_epub_chapters(chapters_only) == len(list(iter_file_items(chapters_only))) == 3
    assert count_epub_chapters(with_cover) == 4  # the cover page has no text: one over, until read
    (tmp_path / "broken.epub").write_bytes(b"not a zip")
    assert count_file_items(tmp_path / "broken.epub") == 1 == len(list(iter_file_items(tmp_path / "broken.epub")))
    assert count_file_items(tmp_path / "a.txt") == 1
