"""The real recorded speech `emolive eval lipsync` scores: found on this machine, phone truth by
forced alignment where none ships, never trained on."""

from __future__ import annotations

import numpy as np
import pytest

from emolive.training import realspeech
from emolive.training.sentences import EVAL_SENTENCES
from emolive.training.tts import available_voices, synthesize
from emolive.training.visemes import openness


def test_forced_alignment_recovers_the_phone_timing_of_speech_with_known_phones() -> None:
    """A held-out flite voice, whose phone times are exact, aligned from its text alone."""
    if "flite:awb" not in available_voices():
        pytest.skip("flite awb is not installed")
    rs = []
    for text in EVAL_SENTENCES[:3]:
        utt = synthesize(text, "flite:awb", rate=16000)
        phones = realspeech.align_with_pocketsphinx(utt.audio, text)
        duration = len(utt.audio) / 16000
        assert phones[0].start == 0.0 and phones[-1].end == pytest.approx(duration, abs=0.011)
        assert all(a.end == b.start for a, b in zip(phones, phones[1:])), "phones tile the recording"
        spoken = [p.symbol for p in phones if p.symbol != "pau"]
        assert spoken[:2] == [p.symbol for p in utt.phones if p.symbol != "pau"][:2]
        frames = int(duration * 25)
        rs.append(np.corrcoef(openness(utt.phones, 25, frames), openness(phones, 25, frames))[0, 1])
    print(f"\n[measure] forced alignment of flite:awb, openness r against its own phones: {np.round(rs, 3)}")
    assert np.mean(rs) >= 0.8


def test_a_transcript_the_recording_does_not_say_is_refused() -> None:
    """No phone truth is better than a wrong one: a clip that cannot be aligned is left out."""
    utt = synthesize("Please enter your password.", "flite:slt", rate=16000)
    much_longer = EVAL_SENTENCES[0] + " " + EVAL_SENTENCES[1]
    with pytest.raises(realspeech.AlignmentError):
        realspeech.align_with_pocketsphinx(utt.audio[: len(utt.audio) // 4], much_longer)


def test_every_installed_source_is_scored() -> None:
    groups = {group for _, _, group in realspeech.real_clips()}
    expected = {
        "real:ru_msu_nsh": realspeech.MSU_RU.is_dir(),
        "real:en_alsa": realspeech.ALSA.is_dir(),
        "real:en_librivox": (realspeech.POCKETSPHINX / "librivox").is_dir(),
        "real:en_commands": (realspeech.POCKETSPHINX / "cards").is_dir(),
        "real:en_asterisk": realspeech.ASTERISK_EN.is_dir() and realspeech.ASTERISK_EN_TEXTS.is_file(),
    }
    missing = {group for group, installed in expected.items() if installed and group not in groups}
    assert not missing, f"installed but not scored: {missing}"
    assert realspeech.asterisk_clips(3), "the English Asterisk prompts align"


def test_the_real_speech_table_sums_up_each_language() -> None:
    from emolive.training.evaluate import ClipScore, ModelScores, group_table, summaries

    scores = ModelScores("student", [ClipScore("real:en_audiobook", 0.9, 3, 4, 0.0),
                                     ClipScore("real:en_phone", 0.7, 0, 0, 10.0),
                                     ClipScore("real:ru_studio", 0.6, 1, 2, -10.0)])
    table = group_table({"student": scores})
    assert "| student | **en** (2 clips) | 0.800 | 0.750 | +5 |" in table
    assert "| student | **ru** (1 clip) | 0.600 | 0.500 | -10 |" in table
    assert "| student | **overall** | 0.733 | 0.667 | +0 |" in table
    assert summaries({"student": scores})["student"]["language:en"]["openness_r"] == pytest.approx(0.8)
