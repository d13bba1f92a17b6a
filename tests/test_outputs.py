"""Deforum's folder and file names, atomic writes, resume detection and the mp4."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from deforum_wan.outputs import (
    OutputError,
    batch_dir,
    batch_folder_name,
    check_timestring,
    contiguous_frames,
    existing_frames,
    find_timestrings,
    frame_name,
    new_timestring,
    probe_video,
    save_settings,
    settings_file,
    stitch_video,
    write_frame,
)
from deforum_wan.settings import load_settings, settings_from_dict

TS = "20240102030405"


def _settings(batch_name: str):
    return settings_from_dict({"prompts": {"0": "a"}, "batch_name": batch_name, "seed": 7, "W": 64, "H": 48})


def test_deforum_names():
    assert frame_name(TS, 0) == "20240102030405_000000000.png"
    assert frame_name(TS, 1234) == "20240102030405_000001234.png"
    assert len(new_timestring()) == 14 and check_timestring(new_timestring())
    with pytest.raises(OutputError):
        check_timestring("2024-01-02")


def test_batch_name_placeholders(tmp_path: Path):
    folder = batch_dir(tmp_path, _settings("Deforum_{timestring}"), TS)
    assert folder == (tmp_path / f"Deforum_{TS}").resolve()
    assert batch_folder_name("run {seed} {w}x{h}", TS, {"seed": 7, "w": 64, "h": 48}) == "run_7_64x48"


@pytest.mark.parametrize(
    "name",
    ["../../etc", "..", "/etc/passwd", "a/../../b", "..\\..\\windows", "C:\\temp", "~/x", "a/b/c", "\x00bad", " . ", ""],
)
def test_batch_name_never_escapes_outdir(tmp_path: Path, name: str):
    outdir = tmp_path / "out"
    folder = batch_dir(outdir, _settings(name), TS)
    assert folder.parent == outdir.resolve()
    assert folder.name not in ("", ".", "..")
    assert "/" not in folder.name and "\\" not in folder.name


def test_frames_written_atomically_and_found_for_resume(tmp_path: Path):
    img = np.zeros((8, 10, 3), np.uint8)
    for i in (0, 1, 2, 4):
        write_frame(tmp_path, TS, i, img)
    (tmp_path / f".{frame_name(TS, 3)}.abc.tmp").write_bytes(b"half a png")  # a killed writer's leftover
    (tmp_path / frame_name("20990101000000", 0)).write_bytes(b"x")  # another render
    assert existing_frames(tmp_path, TS) == [0, 1, 2, 4]
    assert contiguous_frames(tmp_path, TS) == 3  # resume starts at the gap
    assert find_timestrings(tmp_path) == ["20990101000000", TS]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp") and "000000000" in p]


def test_settings_saved_beside_frames_load_in_deforum_format(tmp_path: Path):
    s = load_settings(Path(__file__).resolve().parents[2] / "shared" / "deforum-settings" / "a1111-deforum-default.txt")
    path = save_settings(s, tmp_path, TS)
    assert path == settings_file(tmp_path, TS)
    assert load_settings(path) == s


def test_mp4_has_every_frame_at_the_settings_fps(tmp_path: Path):
    rng = np.random.default_rng(0)
    for i in range(12):
        write_frame(tmp_path, TS, i, rng.integers(0, 255, (33, 45, 3), dtype=np.uint8))  # odd size gets padded
    path, warnings = stitch_video(tmp_path, TS, 15, 12, soundtrack="/no/such/file.mp3")
    assert path.name == f"{TS}.mp4"
    assert probe_video(path) == (12, 15.0)
    assert warnings and "soundtrack_path" in warnings[0]
    with pytest.raises(OutputError, match="only 12 of 20 frames"):
        stitch_video(tmp_path, TS, 15, 20)
