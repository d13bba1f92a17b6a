"""Deforum's folder and file names, atomic writes, resume detection and the mp4."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from deforum_wan.renderer.outputs import (
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
from deforum_wan.core.settings import load_settings, settings_from_dict

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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_gives_like_deforum(tmp_path: Path, umask: int, mode: int):
    from deforum_wan.renderer.outputs import atomic_write_bytes, plan_file, save_json

    old = os.umask(umask)
    try:
        written = [
            write_frame(tmp_path, TS, 0, np.zeros((8, 8, 3), np.uint8)),
            save_settings(_settings("m"), tmp_path, TS),
            save_json(plan_file(tmp_path, TS), {"clips": []}),
            atomic_write_bytes(tmp_path / "inputs" / "saved.png", b"\x89PNG"),
        ]
        deforum_way = tmp_path / "opened.txt"  # what open() (and so Deforum's PIL saves) gives
        deforum_way.write_text("x")
    finally:
        os.umask(old)
    assert (deforum_way.stat().st_mode & 0o777) == mode
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: mode for p in written}
    assert not [p for p in tmp_path.rglob("*.tmp")]


def _spy_ffmpeg(monkeypatch) -> list[list[str]]:
    """Record every command stitch_video runs (and still run it)."""
    import subprocess

    from deforum_wan.renderer import outputs

    calls: list[list[str]] = []
    real = subprocess.run

    def run(cmd, *args, **kwargs):
        calls.append([str(c) for c in cmd])
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(outputs.subprocess, "run", run)
    return calls


def test_ffmpeg_never_gets_a_url(tmp_path: Path, monkeypatch):
    calls = _spy_ffmpeg(monkeypatch)
    for i in range(4):
        write_frame(tmp_path, TS, i, np.zeros((16, 16, 3), np.uint8))
    for url in ("http://169.254.169.254/latest/meta-data", "HTTPS://example.com/a.mp3", "ftp://x/a.mp3",
                "data:audio/mpeg;base64,AAAA"):
        path, warnings = stitch_video(tmp_path, TS, 8, 4, soundtrack=url)
        assert path.is_file() and any("only local files go to ffmpeg" in w for w in warnings), warnings
    assert calls and not [arg for cmd in calls for arg in cmd if "://" in arg or arg.startswith("data:")]
    for cmd in calls:  # and every input may read local files only, never what a file names inside
        for options in _input_options(cmd):
            assert "-protocol_whitelist" in options and options[options.index("-protocol_whitelist") + 1] == "file"


def _input_options(cmd: list[str]) -> list[list[str]]:
    """The options given for each `-i` input (back to the previous input)."""
    out, start = [], 0
    for i, arg in enumerate(cmd):
        if arg == "-i":
            out.append(cmd[start:i])
            start = i + 2
    return out


def test_a_playlist_soundtrack_never_reaches_ffmpeg(tmp_path: Path, monkeypatch):
    """A soundtrack file that is an HLS playlist naming a URL (or any text) is not given to ffmpeg."""
    from netfixtures import LocalServer, wav_bytes

    calls = _spy_ffmpeg(monkeypatch)
    for i in range(4):
        write_frame(tmp_path, TS, i, np.zeros((16, 16, 3), np.uint8))
    with LocalServer() as server:
        server.routes.add("/seg.ts", wav_bytes(1.0), "audio/wav")
        playlist = tmp_path / "song.mp3"
        playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{server.url('/seg.ts')}\n#EXT-X-ENDLIST\n")
        path, warnings = stitch_video(tmp_path, TS, 8, 4, soundtrack=str(playlist))
        assert server.routes.seen == []
    assert path.is_file() and "not an audio or video file" in warnings[0]
    assert not [cmd for cmd in calls if str(playlist) in cmd]


def test_a_local_soundtrack_is_muxed(tmp_path: Path):
    import subprocess

    from netfixtures import wav_bytes

    from deforum_wan.renderer.outputs import ffmpeg_exe

    for i in range(16):
        write_frame(tmp_path, TS, i, np.zeros((16, 16, 3), np.uint8))
    song = tmp_path / "song.wav"
    song.write_bytes(wav_bytes(3.0))
    path, warnings = stitch_video(tmp_path, TS, 8, 16, soundtrack=str(song))
    assert warnings == []
    info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    assert "Audio: aac" in info and probe_video(path) == (16, 8.0)
