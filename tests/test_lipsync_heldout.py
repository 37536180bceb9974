"""Lip sync of the shipped student on voices and a language it never heard in training.

A few held-out utterances (one per held-out voice and the held-out language: the full table comes
from ``emolive eval lipsync``), scored on the motion itself and, for one voice, on rendered video
measured by the independent MediaPipe tracker. Real recorded speech that ships in packages and
festival's example songs (singing) are scored too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from emolive.engine.audio import log_mel, video_frame_features
from emolive.engine.motion.baseline import BaselineMotion
from emolive.engine.motion.registry import create_motion_model
from emolive.training.evaluate import ModelScores, generate_tracks, score_track
from emolive.training.tts import available_voices

torch.set_num_threads(1)

# Floors a little under what the shipped student reaches (docs/model.md has the full table).
# The project's targets for r and closure recall are higher (0.85 each): not met yet.
MIN_R = 0.8
MIN_RECALL = 0.5
MAX_OFFSET_MS = 20.0
MIN_VIDEO_R = 0.5
MIN_REAL_R = 0.65
MIN_SINGING_R = 0.65
MIN_SINGING_RECALL = 0.5


@pytest.fixture(scope="module")
def held_out_clips():
    from emolive.training.corpus import plan_corpus, run_jobs
    from emolive.training.tts import Phone

    plan = plan_corpus(0, seed=0, eval_per_group=2)
    speech = [job for job in plan.eval if not job.group.startswith("sing:")]  # singing has its own test
    missing = {j.voice.partition("+")[0] for j in speech} - set(available_voices())
    if missing:
        pytest.skip(f"held-out voices not installed: {sorted(missing)}")
    clips = []
    jobs = [(job, 1) for job in speech]
    for made in run_jobs(jobs, workers=2, log=lambda _: None):
        assert made, "a held-out utterance failed to synthesise"
        c = made[0]
        clips.append((c["audio"], [Phone(*p) for p in c["phones"]], c["group"]))
    return clips


def _scores(model, clips) -> ModelScores:
    scores = ModelScores(model.name)
    tracks = generate_tracks(model, [video_frame_features(log_mel(audio)) for audio, _, _ in clips])
    for frames, (_, phones, group) in zip(tracks, clips):
        scores.clips.append(score_track(frames, phones, group))
    return scores


@pytest.fixture(scope="module")
def student_scores(held_out_clips) -> ModelScores:
    return _scores(create_motion_model("student"), held_out_clips)


def test_student_lip_syncs_held_out_voices_and_language(student_scores: ModelScores, record_property) -> None:
    r, recall, offset = student_scores.summary()
    record_property("student_heldout", f"r {r:.3f} recall {recall:.3f} offset {offset:+.0f} ms")
    print(f"\n[measure] student held-out: r {r:.3f}, closure recall {recall:.3f}, offset {offset:+.0f} ms")
    assert r >= MIN_R
    assert recall >= MIN_RECALL
    assert abs(offset) <= MAX_OFFSET_MS
    for group in student_scores.groups():
        gr, grec, _ = student_scores.summary(group)
        assert gr >= MIN_R - 0.1, group
        assert grec >= MIN_RECALL - 0.2, group


def test_student_beats_the_baseline(held_out_clips, student_scores: ModelScores) -> None:
    baseline = _scores(BaselineMotion(), held_out_clips)
    r_s, rec_s, _ = student_scores.summary()
    r_b, rec_b, _ = baseline.summary()
    assert r_s >= r_b + 0.1
    assert rec_s >= rec_b + 0.2


def test_student_lip_syncs_real_recorded_speech(record_property) -> None:
    """Every real recording packages ship here (training.realspeech; none is trained on)."""
    from emolive.training.realspeech import real_clips

    clips = real_clips()
    if not clips:
        pytest.skip("no real speech clip")
    scores = _scores(create_motion_model("student"), clips)
    base = _scores(BaselineMotion(), clips)
    r, recall, _ = scores.summary()
    r_b, recall_b, _ = base.summary()
    record_property("student_real", f"r {r:.3f} recall {recall:.3f} (baseline r {r_b:.3f} recall {recall_b:.3f})")
    print(f"\n[measure] real speech ({len(clips)} clips): student r {r:.3f}, closure recall {recall:.3f}; "
          f"baseline r {r_b:.3f}, {recall_b:.3f}")
    assert r >= MIN_REAL_R
    assert r > r_b and recall > recall_b + 0.2


def test_student_sings_open_vowels_and_closes_bilabials(record_property) -> None:
    """festival's example songs in singing mode (tunes and lyrics never trained on)."""
    from emolive.training.corpus import Job, run_jobs
    from emolive.training.singing import eval_songs
    from emolive.training.tts import Phone

    if "festival:kal_diphone" not in available_voices():
        pytest.skip("festival kal_diphone is not installed")
    songs = [s for s in eval_songs() if s[0] in ("daisy", "doremi", "america1")]
    if not songs:
        pytest.skip("festival's example songs are not installed")
    jobs = [(Job(i, "festival-sing:kal_diphone", score, i, "eval", "sing:kal_diphone"), 1)
            for i, (_, score) in enumerate(songs)]
    clips = []
    for made in run_jobs(jobs, workers=2, log=lambda _: None):
        assert made, "a song failed to synthesise"
        clips.append((made[0]["audio"], [Phone(*p) for p in made[0]["phones"]], made[0]["group"]))
    scores = _scores(create_motion_model("student"), clips)
    base = _scores(BaselineMotion(), clips)
    r, recall, _ = scores.summary()
    record_property("student_singing", f"r {r:.3f} recall {recall:.3f} (baseline r {base.summary()[0]:.3f})")
    print(f"\n[measure] singing ({len(clips)} songs): student r {r:.3f}, closure recall {recall:.3f}; "
          f"baseline r {base.summary()[0]:.3f}, {base.summary()[1]:.3f}")
    assert r >= MIN_SINGING_R
    assert recall >= MIN_SINGING_RECALL


@pytest.mark.slow
def test_rendered_video_follows_held_out_voice(tmp_path: Path, record_property) -> None:
    """`emolive render --motion student` of a held-out voice, tracked by MediaPipe."""
    from conftest import PORTRAIT, check_ok, run_emolive
    from emolive.training.sentences import EVAL_SENTENCES
    from emolive.training.mouth_tracker import best_offset_correlation, track_video
    from emolive.training.tts import synthesize
    from emolive.training.visemes import openness

    if "flite:awb" not in available_voices():
        pytest.skip("flite awb is not installed")
    utt = synthesize(" ".join(EVAL_SENTENCES[:2]), "flite:awb")
    wav = tmp_path / "awb.wav"
    sf.write(wav, utt.audio, utt.rate, subtype="PCM_16")
    out = tmp_path / "awb.mp4"
    check_ok(run_emolive("render", PORTRAIT, wav, "-o", out, "--quiet", "--motion", "student"))
    track = track_video(out)
    truth = openness(utt.phones, fps=25.0, n_frames=track.n_frames)
    r0, _ = best_offset_correlation(truth, track.mouth_gap, 0)
    record_property("video_r_awb", round(r0, 3))
    print(f"\n[measure] rendered video, held-out flite:awb: mouth gap r {r0:.3f}")
    assert r0 >= MIN_VIDEO_R


@pytest.mark.slow
def test_rendered_video_follows_real_recorded_speech(tmp_path: Path, record_property) -> None:
    """`emolive render` (the student) of every real recording `emolive eval lipsync` scores,
    tracked by MediaPipe."""
    from conftest import PORTRAIT, check_ok, run_emolive
    from emolive.training.mouth_tracker import best_offset_correlation, track_video
    from emolive.training.realspeech import real_clips
    from emolive.training.visemes import openness

    clips = real_clips()
    if not clips:
        pytest.skip("no labelled real recording installed")
    by_group: dict[str, list[float]] = {}
    for i, (audio, phones, group) in enumerate(clips):
        wav, out = tmp_path / f"real{i}.wav", tmp_path / f"real{i}.mp4"
        sf.write(wav, audio, 16000, subtype="PCM_16")
        check_ok(run_emolive("render", PORTRAIT, wav, "-o", out, "--quiet", "--motion", "student"))
        track = track_video(out)
        r, _ = best_offset_correlation(openness(phones, fps=25.0, n_frames=track.n_frames), track.mouth_gap, 0)
        by_group.setdefault(group, []).append(r)
    rs = [r for group in by_group.values() for r in group]
    record_property("video_r_real", {group: round(sum(g) / len(g), 3) for group, g in by_group.items()})
    print(f"\n[measure] rendered video, real recorded speech ({len(rs)} clips): mouth gap r, mean "
          f"{sum(rs) / len(rs):.3f}; " + ", ".join(f"{group} {sum(g) / len(g):.3f} ({len(g)})" for group, g in by_group.items()))
    assert sum(rs) / len(rs) >= MIN_VIDEO_R
