"""Video Input mode: a synthetic video restyled through the tiny VACE model, its timing, sound and mask kept;
bad sources refused before any model loads, from the CLI and the API."""
from __future__ import annotations

import json
import subprocess
import wave
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from deforum_wan import cli
from deforum_wan.core.plan import PlanError, PlanOptions, format_plan, plan_clips
from deforum_wan.core.settings import settings_from_dict
from deforum_wan.core.specs import MODEL_SPECS
from deforum_wan.core.video_input import Extraction, VideoSource, clip_source_frames, extraction
from deforum_wan.renderer import outputs

SOURCE_FPS, SOURCE_FRAMES, SOURCE_SIZE = 10, 20, (64, 48)


def _tone(path: Path, seconds: float, rate: int = 8000) -> np.ndarray:
    """A rising tone as a wav file; returns its samples."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * (200 + 300 * t) * t) * 12000).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return samples


def make_video(path: Path, frames: int = SOURCE_FRAMES, size=SOURCE_SIZE, fps: int = SOURCE_FPS, sound: bool = True,
               mask: bool = False) -> Path:
    """A square moving right, its colour counting the frames (or a mask: the left half white), with a tone."""
    import imageio_ffmpeg

    width, height = size
    audio = None
    if sound:
        audio = path.with_suffix(".wav")
        _tone(audio, frames / fps)
    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, macro_block_size=1, audio_path=audio and str(audio),
                                         audio_codec="aac" if sound else None, ffmpeg_log_level="error",
                                         output_params=["-shortest"] if sound else None)
    writer.send(None)
    for i in range(frames):
        frame = np.zeros((height, width, 3), np.uint8)
        if mask:
            frame[:, : width // 2] = 255
        else:
            frame[..., 2] = 10 * i % 256
            frame[10:26, 2 * i: 2 * i + 16] = 255
        writer.send(frame)
    writer.close()
    return path


def decoded(path: Path) -> list[np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]


def audio_samples(path: Path) -> np.ndarray:
    """The first audio stream as 8 kHz mono int16, decoded by ffmpeg."""
    result = subprocess.run([outputs.ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar",
                             "8000", "-f", "s16le", "-"], capture_output=True, check=True)
    return np.frombuffer(result.stdout, np.int16)


def video_settings(video: Path, **kw):
    data = {"prompts": {"0": "a red fox in the snow"}, "animation_mode": "Video Input", "video_init_path": str(video),
            "W": 32, "H": 32, "fps": 15, "max_frames": 100, "seed": 5, "batch_name": "vid_{timestring}"}
    data.update(kw)
    return settings_from_dict(data)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    text = folder / "notes.mp4"
    text.write_text("this is not a video\n")
    return {"source": make_video(folder / "source.mp4"), "mask": make_video(folder / "mask.mp4", mask=True, sound=False),
            "small_mask": make_video(folder / "small_mask.mp4", size=(32, 32), mask=True, sound=False),
            "short_mask": make_video(folder / "short_mask.mp4", frames=6, mask=True, sound=False), "text": text}


# ---------------------------------------------------------------- the arithmetic (pure)


def test_kept_frames_follow_deforums_vid2frames_loop():
    """vid2frames reads from `from` on and saves frame `count` when (count <= to or to == -1) and count % n == 0."""
    for total in (1, 7, 20):
        for nth in (1, 2, 3, 7):
            for start in (0, 1, 3, 19):
                for end in (-1, 4, 5, 25):
                    if end != -1 and end <= start:
                        continue
                    deforum = [c for c in range(start, total) if (c <= end or end == -1) and c % nth == 0]
                    assert list(Extraction(nth, start, end).kept(total)) == deforum, (total, nth, start, end)


def test_extraction_keys_are_checked_naming_the_key():
    assert extraction(video_settings(Path("x.mp4"), extract_nth_frame=3, extract_to_frame=9)) == Extraction(3, 0, 9)
    for values, key in (({"extract_nth_frame": 0}, "extract_nth_frame"), ({"extract_from_frame": -2}, "extract_from_frame"),
                        ({"extract_from_frame": 5, "extract_to_frame": 5}, "extract_to_frame"),
                        ({"extract_nth_frame": "two"}, "extract_nth_frame")):
        with pytest.raises(PlanError, match=f"^{key}: "):
            extraction(video_settings(Path("x.mp4"), **values))


def test_the_plan_takes_the_count_and_timing_of_the_extracted_frames_and_every_clip_is_vace():
    source = VideoSource("in.mp4", 40, 25.0, 64, 48, True, Extraction(2, 3, -1))
    settings = video_settings(Path("in.mp4"), prompts={"0": "a fox", "8": "a bird"}, strength_schedule="0: (0.325)",
                              add_soundtrack="Init Video", translation_x="0: (3)")
    plan = plan_clips(settings, MODEL_SPECS["vace"], PlanOptions(seed=1, video=source, max_clip_frames=9, overlap=2,
                                                                 min_clip_seconds=0))
    assert list(source.kept) == list(range(4, 40, 2)) and plan.max_frames == 18 and plan.fps == 12.5
    assert plan.timing == "native" and plan.continuity == "vace" and not plan.bootstrap
    assert not plan.color_match  # Deforum matches Video Input frames only to color_coherence Image
    matched = plan_clips(replace(settings, raw={**settings.raw, "color_coherence": "Image",
                                                "color_coherence_image_path": "ref.png"}),
                         MODEL_SPECS["vace"], PlanOptions(seed=1, video=source))
    assert matched.color_match and matched.color_reference == "image"
    assert {c.mode for c in plan.clips} == {"vace"} and {c.movement for c in plan.clips} == {""}
    assert {c.guide_scale for c in plan.clips} == {0.5}  # strength 0.325 / Deforum's 0.65
    assert plan.clips[0].overlap == 0
    shown: list[int] = []
    for clip in plan.clips:  # every output frame is its extracted frame, in order
        numbers = clip_source_frames(clip, source)
        assert len(numbers) == clip.num_frames - clip.overlap
        shown += numbers[: clip.output_frames]
    assert shown == list(source.kept)
    text = format_plan(plan)
    assert "video input        18 frames    in.mp4: 64x48, 40 frames at 25 fps; from frame 3 to the end" in text
    assert "the settings' fps 15 is not used" in text and "runs 0.16 s ahead of the picture" in text


def test_video_input_needs_a_vace_model_and_refuses_what_does_not_apply():
    source = VideoSource("in.mp4", 20, 10.0, 64, 48, False, Extraction())
    settings = video_settings(Path("in.mp4"))
    for kind in ("t2v", "i2v", "ti2v-5b"):
        with pytest.raises(PlanError, match="^animation_mode: Video Input restyles the source video with VACE"):
            plan_clips(settings, MODEL_SPECS[kind], PlanOptions(seed=1, video=source))
    for options, field in ((PlanOptions(seed=1, video=source, motion="guide"), "motion"),
                           (PlanOptions(seed=1, video=source, continuity="none"), "continuity"),
                           (PlanOptions(seed=1, video=source, timing="interpolate"), "timing")):
        with pytest.raises(PlanError, match=f"^{field}: "):
            plan_clips(settings, MODEL_SPECS["vace"], options)
    unread = plan_clips(settings, MODEL_SPECS["vace"], PlanOptions(seed=1))  # the tab's preview: no probe yet
    assert unread.max_frames == 100 and any("read when the render starts" in w for w in unread.warnings)


# ---------------------------------------------------------------- rendering with the tiny VACE model


@pytest.fixture(scope="module")
def vace_pipes(tmp_path_factory):
    from conftest import require_render_stack

    require_render_stack()
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model
    from deforum_wan.renderer.tiny import make_tiny_models

    folder = make_tiny_models(tmp_path_factory.mktemp("tiny"), ["vace"])["vace"]
    return folder, load_pipelines(classify_model(folder))


def _spy(pipes, calls: list):
    """Record every VACE call's ClipRequest and the video/mask diffusers received, around the real method."""
    original = pipes._run

    def run(pipe, extra, request):
        if "video" in extra:
            calls.append((request, extra))
        return original(pipe, extra, request)

    pipes._run = run
    return original


OPTIONS = PlanOptions(steps=1, max_clip_frames=9, overlap=2)


@pytest.mark.parametrize("nth", [1, 2])
def test_a_video_is_restyled_frame_for_frame_with_its_timing_sound_and_mask(vace_pipes, videos, tmp_path, nth):
    from deforum_wan.renderer.frames import fit_image
    from deforum_wan.renderer.render import RenderJob, render

    folder, pipes = vace_pipes
    settings = video_settings(videos["source"], extract_nth_frame=nth, add_soundtrack="Init Video",
                              use_mask_video=nth == 2, video_mask_path=str(videos["mask"]))
    calls: list = []
    original = _spy(pipes, calls)
    try:
        result = render(RenderJob(settings=settings, model=str(folder), outdir=str(tmp_path), options=OPTIONS),
                        pipelines=pipes)
    finally:
        pipes._run = original
    count = len(range(0, SOURCE_FRAMES, nth))
    plan = result.plan
    assert result.status == "done" and result.frames_on_disk == plan.max_frames == count
    assert outputs.existing_frames(result.folder, result.timestring) == list(range(count))
    # The mp4 keeps the source's timing: its frames at the source's fps / nth, the source's duration.
    assert outputs.probe_video(result.video) == (count, SOURCE_FPS / nth)
    assert json.loads(outputs.settings_file(result.folder, result.timestring).read_text())["max_frames"] == count
    # The sound is the source's: the same tone, from its start (AAC both ways, so compared by correlation).
    ours, theirs = audio_samples(result.video).astype(float), audio_samples(videos["source"]).astype(float)
    assert len(ours) == pytest.approx(len(theirs), abs=2000)  # 2 s at 8 kHz, give or take an AAC frame
    n = min(len(ours), len(theirs)) - 2000
    assert np.corrcoef(ours[1000:n], theirs[1000:n])[0, 1] > 0.9
    # Each clip's VACE call got its known frames, then its source frames fitted to the plan's size.
    source = decoded(videos["source"])
    assert len(calls) == len(plan.clips) >= 2
    for (request, extra), clip in zip(calls, plan.clips):
        numbers = [min(nth * (clip.output_start - clip.sources[0][0] + j), nth * (count - 1))
                   for j in range(clip.overlap, clip.num_frames)]
        assert len(request.known_frames) == clip.overlap and len(request.guide_frames) == len(numbers)
        for got, number in zip(request.guide_frames, numbers):
            np.testing.assert_array_equal(got, fit_image(source[number], plan.width, plan.height))
        assert extra["conditioning_scale"] == clip.guide_scale == 1.0  # Deforum's default strength 0.65
        masks = [np.asarray(m) for m in extra["mask"]]
        assert [m.max() for m in masks[: clip.overlap]] == [0] * clip.overlap  # the continued frames are kept
        for m in masks[clip.overlap:]:
            if nth == 2:  # the mask video: its white left half is restyled, its black right half keeps the source
                assert m[:, :12].min() == 255 and m[:, -12:].max() == 0
            else:
                assert m.min() == 255


def test_a_resumed_video_render_reads_the_same_source_frames(vace_pipes, videos, tmp_path):
    from deforum_wan.renderer.render import RenderJob, render

    folder, pipes = vace_pipes
    settings = video_settings(videos["source"], extract_from_frame=3)
    job = RenderJob(settings=settings, model=str(folder), outdir=str(tmp_path), options=OPTIONS, make_video=False)
    full: list = []
    original = _spy(pipes, full)
    try:
        render(replace(job, outdir=str(tmp_path / "full")), pipelines=pipes)
        pipes._run = original
        first: list = []
        _spy(pipes, first)
        part = render(job, pipelines=pipes, should_stop=lambda: len(first) >= 2)  # inside the second clip
        assert part.status == "interrupted" and 0 < part.frames_on_disk < part.frames_total == 17
        pipes._run = original
        resumed: list = []
        _spy(pipes, resumed)
        rest = render(replace(job, resume=part.timestring), pipelines=pipes)
    finally:
        pipes._run = original
    assert rest.status == "done" and rest.frames_on_disk == 17 and resumed
    by_seed = {r.seed: np.asarray(r.guide_frames) for r, _ in full}
    for request, _extra in resumed:
        np.testing.assert_array_equal(np.asarray(request.guide_frames), by_seed[request.seed])


# ---------------------------------------------------------------- bad inputs: the CLI


def _bad_cases(videos: dict[str, Path], tmp_path: Path) -> list[tuple[dict, str, str]]:
    missing = tmp_path / "nowhere.mp4"
    mask = {"use_mask_video": True}
    return [
        ({"video_init_path": str(missing)}, "video_init_path", "is not a file"),
        ({"video_init_path": str(videos["text"])}, "video_init_path", "is not a video file"),
        ({"extract_from_frame": 25}, "extract_from_frame", "no frames of"),
        ({**mask, "video_mask_path": str(videos["small_mask"])}, "video_mask_path", "the mask video is 32x32, the "
                                                                                  "source video 64x48"),
        ({**mask, "video_mask_path": str(videos["short_mask"])}, "video_mask_path", "keeps 6 frames"),
    ]


def test_bad_sources_are_named_by_the_cli_before_any_model_loads(vace_pipes, videos, tmp_path, capsys, monkeypatch):
    from deforum_wan.renderer import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for a source that cannot be used")

    monkeypatch.setattr(loading, "load_pipelines", no_loading)
    folder, _pipes = vace_pipes
    for values, key, words in _bad_cases(videos, tmp_path):
        path = tmp_path / "settings.txt"
        path.write_text(video_settings(videos["source"], **values).to_json())
        for command in (["plan", str(path), "--model", "vace"],
                        ["render", str(path), "--model", str(folder), "--outdir", str(tmp_path / "out")]):
            code = cli.main(command)
            err = capsys.readouterr().err
            assert code in (1, 2) and err.startswith(f"error: {key}: ") and words in err, (command, err)
            assert "Traceback" not in err
    path.write_text(video_settings(videos["source"]).to_json())
    assert cli.main(["plan", str(path), "--model", "t2v"]) == 2
    assert capsys.readouterr().err.startswith("error: animation_mode: Video Input restyles the source video with VACE")
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "video_input: 20 frames (" in out and "fps: 10" in out


# ---------------------------------------------------------------- bad inputs: the API


def test_the_api_checks_video_sources_and_names_the_field(videos, tmp_path):
    from netfixtures import LocalServer
    from test_api import serve

    from deforum_wan.renderer.fetch import FetchPolicy
    from deforum_wan.service.jobs import JobQueue

    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")
    roots = [tmp_path / "out", videos["source"].parent, tmp_path]
    base = json.loads(video_settings(videos["source"]).to_json())
    cases = [(dict(values), key, words) for values, key, words in _bad_cases(videos, tmp_path)] + [
        ({"video_init_path": "/etc/passwd"}, "video_init_path", "only http(s) URLs"),
        ({"video_init_path": "ftp://example.com/v.mp4"}, "video_init_path", "ftp: URLs are not allowed"),
        ({"video_init_path": "file:///etc/passwd"}, "video_init_path", "file: URLs are not allowed"),
        ({"use_mask_video": True, "video_mask_path": "/var/mask.mp4"}, "video_mask_path", "only http(s) URLs"),
        ({"extract_nth_frame": 0}, "extract_nth_frame", "must be between 1"),
    ]
    with LocalServer() as web:
        web.routes.add("/v.mp4", videos["source"].read_bytes(), "video/mp4")
        web.routes.add("/page.mp4", b"<html>not a video</html>" * 20, "video/mp4")
        cases.append(({"video_init_path": web.url("/page.mp4")}, "video_init_path", "not a video file"))
        with serve(queue, allowed_roots=roots, fetch_policy=FetchPolicy(allow_loopback=True)) as server, \
                httpx.Client(base_url=server.url, timeout=120) as client:
            for values, key, words in cases:
                r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": {**base, **values}})
                assert r.status_code == 422, (values, r.text)
                message = r.json()["message"]
                assert f"deforum_settings.{key}: " in message and words in message, (values, message)
            # A good URL is fetched at submit: the worker gets a local copy.
            r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": {
                **base, "video_init_path": web.url("/v.mp4"), "add_soundtrack": "Init Video"}})
            assert r.status_code == 202, r.text
            saved = Path(queue.get(r.json()["job_ids"][0]).job["settings"]["video_init_path"])
            assert saved.read_bytes() == videos["source"].read_bytes() and saved.suffix == ".mp4"
    assert len(queue.list()) == 1  # only the good request was queued
    queue.close()
    t2v = JobQueue(tmp_path / "t2v.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                   default_model="t2v")  # no models folder: "t2v" is a kind name
    with serve(t2v, allowed_roots=roots) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": base})
        assert r.status_code == 422 and "deforum_settings.animation_mode: Video Input" in r.json()["message"], r.text
    assert not t2v.list()
    t2v.close()



def test_only_video_containers_pass_the_content_check(videos):
    from deforum_wan.renderer.fetch import FetchError, check_video

    assert check_video(videos["source"].read_bytes()) == ".mp4"
    assert check_video(b"\x1a\x45\xdf\xa3" + bytes(60)) == ".webm"
    assert check_video(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(40)) == ".avi"
    for text in (b"#EXTM3U\n#EXTINF:10,\nhttp://169.254.169.254/x.ts\n", b"ffconcat version 1.0\nfile '/etc/passwd'\n",
                 videos["text"].read_bytes(), b"\x89PNG\r\n\x1a\n" + bytes(40)):
        with pytest.raises(FetchError, match="not a video file"):
            check_video(text)


def test_a_url_source_is_fetched_checked_and_removed_when_closed(videos):
    from netfixtures import LocalServer

    from deforum_wan.renderer.fetch import FetchPolicy
    from deforum_wan.renderer.source_video import SourceVideo, VideoInputError

    with LocalServer() as web:
        web.routes.add("/v.mp4", videos["source"].read_bytes(), "video/mp4")
        web.routes.add("/v.html", videos["source"].read_bytes(), "text/html")
        source = SourceVideo(video_settings(web.url("/v.mp4"), extract_to_frame=9), FetchPolicy(allow_loopback=True))
        copy = source.path
        assert copy.read_bytes() == videos["source"].read_bytes()
        assert (source.source.count, source.source.fps, source.source.has_audio) == (10, 10.0, True)
        assert source.source.path == web.url("/v.mp4")  # the plan names what the user gave
        assert len(source.frames([0, 9, 3], 16, 16)) == 3
        source.close()
        assert not copy.exists()
        with pytest.raises(VideoInputError, match="^video_init_path: cannot use .* expected a video"):
            SourceVideo(video_settings(web.url("/v.html")), FetchPolicy(allow_loopback=True))
        with pytest.raises(VideoInputError, match="^video_init_path: cannot use .* loopback"):
            SourceVideo(video_settings(web.url("/v.mp4")))  # the default policy: never this machine
