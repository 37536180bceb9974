"""The lip readers (lip-gap regressor, lip-seal detector): their files, how the motion model
applies them, and the shipped ones on real voices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emolive.engine.motion.diffusion as diffusion
from emolive.engine.audio import SILENCE_FEATURE, log_mel, video_frame_features
from emolive.engine.motion import generate
from emolive.engine.motion.diffusion import SEALED_JAW, DiffusionMotion, default_weights, load_model
from emolive.engine.motion.lipgap import LipGapRegressor, load_regressor, save_regressor
from emolive.engine.motion.seal import WEIGHTS_NAME, SealDetector, load_detector, save_detector
from emolive.engine.motion.windownet import AudioWindowConfig
from emolive.engine.motion_space import INDEX, SHUT_LIP_GAP, MotionControls, jaw_gap, mouth_gap, show_gap_once
from emolive.training.evaluate import closure_recall

torch.set_num_threads(1)


def constant_detector(logit: float, gap_gate: float = float("inf")) -> SealDetector:
    """A detector that gives every window the same verdict."""
    return constant(SealDetector(AudioWindowConfig(), gap_gate=gap_gate), logit)


def constant_regressor(gap: float, blend: float) -> LipGapRegressor:
    """A regressor that hears the same lip gap in every window."""
    return constant(LipGapRegressor(AudioWindowConfig(), blend=blend), gap)


def own_jaw(model: DiffusionMotion) -> DiffusionMotion:
    """``model`` giving its own jaw, not lowered by what its lip shapes part: the space the
    readers' rule works in (``shows_gap_once``)."""
    model.shows_gap_once = False
    return model


def constant(net, output: float):
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.head[-1].bias.fill_(output)
    return net.eval()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    from emolive.training.augment import to_16k
    from emolive.training.tts import available_voices, synthesize

    if "flite:slt" not in available_voices():
        pytest.skip("flite is not installed")
    utt = synthesize("Mary may bring a map to the bus.", "flite:slt")
    return video_frame_features(log_mel(to_16k(utt.audio, utt.rate)))


@pytest.fixture(scope="module")
def plain_student() -> DiffusionMotion:
    model, meta = load_model(default_weights("student"))
    return own_jaw(DiffusionMotion(model, steps=int(meta["steps"]), name="student"))


def test_detector_file_round_trip_keeps_weights_threshold_and_gate(tmp_path) -> None:
    detector = SealDetector(AudioWindowConfig(), threshold=0.7, gap_gate=0.2)
    path = tmp_path / WEIGHTS_NAME
    save_detector(detector.eval(), path)
    loaded = load_detector(path)
    window = np.random.default_rng(0).normal(-4, 2, (3, 10, 4, 80)).astype(np.float32)
    assert (loaded.threshold, loaded.gap_gate) == (0.7, 0.2)
    np.testing.assert_allclose(loaded.probability(window), detector.probability(window), atol=1e-6)


def test_regressor_file_round_trip_keeps_weights_and_blend(tmp_path) -> None:
    regressor = LipGapRegressor(AudioWindowConfig(), blend=0.25)
    path = tmp_path / "lipgap.safetensors"
    save_regressor(regressor.eval(), path)
    loaded = load_regressor(path)
    window = np.random.default_rng(0).normal(-4, 2, (3, 10, 4, 80)).astype(np.float32)
    assert loaded.blend == 0.25
    np.testing.assert_allclose(loaded.gap(window), regressor.gap(window), atol=1e-6)


def test_other_files_are_refused_as_lip_readers(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a lip-seal detector"):
        load_detector(default_weights("student"))
    with pytest.raises(ValueError, match="not a lip-gap regressor"):
        load_regressor(default_weights("student").parent / WEIGHTS_NAME)


def test_a_regressor_moves_only_open_lips_by_its_blend(plain_student, speech) -> None:
    controls = MotionControls(seed=3)
    alone = generate(plain_student, speech, controls).frames
    unblended = own_jaw(DiffusionMotion(plain_student.model, steps=2, lip_gap=constant_regressor(0.3, blend=0.0)))
    np.testing.assert_allclose(generate(unblended, speech, controls).frames, alone, atol=1e-6)
    for blend in (0.5, 1.0):
        model = own_jaw(DiffusionMotion(plain_student.model, steps=2, lip_gap=constant_regressor(0.3, blend=blend)))
        frames = generate(model, speech, controls).frames
        apart = jaw_gap(alone) >= SHUT_LIP_GAP
        assert apart.any() and not apart.all()
        np.testing.assert_allclose(jaw_gap(frames)[apart], jaw_gap(alone)[apart] + blend * (0.3 - jaw_gap(alone)[apart]),
                                   atol=1e-5)
        np.testing.assert_allclose(frames[~apart], alone[~apart], atol=1e-6)  # the model's closures stay
        assert np.all(frames[:, INDEX["jawOpen"]] >= alone[:, INDEX["jawOpen"]] - 1e-6), "the jaw only opens further"
        others = [i for i in range(frames.shape[1]) if i not in (INDEX["mouthClose"], INDEX["jawOpen"])]
        np.testing.assert_allclose(frames[:, others], alone[:, others], atol=1e-5)


def test_the_seal_waits_for_lips_near_shut(plain_student, speech) -> None:
    """A sure detector behind a 0.2 gap gate seals only the frames whose gap is already under it."""
    controls = MotionControls(seed=3)
    alone = generate(plain_student, speech, controls).frames
    gated = own_jaw(DiffusionMotion(plain_student.model, steps=2, seal_detector=constant_detector(20.0, gap_gate=0.2)))
    frames = generate(gated, speech, controls).frames
    changed = np.any(frames != alone, axis=1)
    assert changed.any() and not changed.all()
    assert np.all(jaw_gap(alone)[changed] < 0.2)
    assert np.all(frames[changed, INDEX["mouthClose"]] == 1.0)
    unsealed = (jaw_gap(alone) >= 0.2)
    np.testing.assert_array_equal(frames[unsealed], alone[unsealed])


def test_audio_windows_are_the_windows_a_stream_reads(speech, monkeypatch) -> None:
    student = DiffusionMotion.from_file(default_weights("student"))
    read = []
    original = diffusion.read_lips
    monkeypatch.setattr(diffusion, "read_lips", lambda models, inputs: read.extend(i.audio[0] for i in inputs) or
                        original(models, inputs))
    generate(student, speech, MotionControls(seed=0))
    np.testing.assert_allclose(np.stack(read), student.audio_windows(speech), atol=1e-5)


def test_a_sure_detector_seals_every_frame_and_a_silent_one_changes_nothing(plain_student, speech) -> None:
    controls = MotionControls(seed=3)
    alone = generate(plain_student, speech, controls).frames
    never = own_jaw(DiffusionMotion(plain_student.model, steps=2, seal_detector=constant_detector(-20.0)))
    always = own_jaw(DiffusionMotion(plain_student.model, steps=2, seal_detector=constant_detector(20.0)))
    np.testing.assert_array_equal(generate(never, speech, controls).frames, alone)
    sealed = generate(always, speech, controls).frames
    assert np.all(sealed[:, INDEX["mouthClose"]] == 1.0)
    assert np.all(sealed[:, INDEX["jawOpen"]] <= SEALED_JAW)
    # Only the lip gap changes: head, brows and blinks are the model's own.
    others = [i for i in range(sealed.shape[1]) if i not in (INDEX["mouthClose"], INDEX["jawOpen"])]
    np.testing.assert_allclose(sealed[:, others], alone[:, others], atol=1e-5)


def test_live_steps_and_offline_generate_read_the_same_lips(speech) -> None:
    student = DiffusionMotion.from_file(default_weights("student"))
    assert student.seal_detector is not None and student.lip_gap is not None, "the shipped student has its lip readers"
    offline = generate(student, speech, MotionControls(seed=1)).frames
    live = student.new_stream()
    live.start(MotionControls(seed=1))
    la = live.lookahead_frames
    padded = np.concatenate([speech, np.full((la, *speech.shape[1:]), SILENCE_FEATURE, np.float32)])
    frames = np.concatenate([live.step(padded[t : t + 1 + la]) for t in range(len(speech))])
    np.testing.assert_allclose(mouth_gap(frames), mouth_gap(offline), atol=1e-5)


def test_the_shipped_detector_closes_the_lips_on_recorded_bilabials() -> None:
    """The Russian studio recordings (never trained on): the student alone missed half the
    bilabials there (v8: 0.595); with its detector it closes for most."""
    from emolive.training.realspeech import msu_ru_clips

    clips = msu_ru_clips(8)
    if not clips:
        pytest.skip("festvox-ru is not installed")
    student = DiffusionMotion.from_file(default_weights("student"))
    hits = total = 0
    for audio, phones, _ in clips:
        frames = generate(student, video_frame_features(log_mel(audio)), MotionControls(seed=0)).frames
        h, n = closure_recall(mouth_gap(frames), phones)
        hits, total = hits + h, total + n
    print(f"\n[measure] msu_ru_nsh, {len(clips)} recordings: closure recall {hits}/{total} = {hits / total:.3f}")
    assert hits / total >= 0.75


def test_frames_show_the_lip_gap_their_model_means_once(speech) -> None:
    """Lip shapes part the lips on top of the jaw; a stream's frames lower the jaw by that much
    (and a shut jaw's lip shapes part them less), so the opening shown is the one meant."""
    rows = np.zeros((4, len(INDEX)), np.float32)
    rows[:, INDEX["jawOpen"]] = [0.5, 0.05, 0.3, 0.0]
    rows[:, INDEX["mouthFunnel"]] = [1.0, 0.6, 0.0, 0.8]
    rows[2, [INDEX["mouthUpperUpLeft"], INDEX["mouthUpperUpRight"]]] = 0.7
    rows[1, INDEX["mouthRollLower"]] = 0.5
    shown = show_gap_once(rows)
    np.testing.assert_allclose(mouth_gap(shown), jaw_gap(rows), atol=1e-6)
    assert np.all(shown[:3, INDEX["jawOpen"]] < rows[:3, INDEX["jawOpen"]])
    assert shown[3, INDEX["mouthFunnel"]] == 0.0 and mouth_gap(rows)[3] > SHUT_LIP_GAP, "shut lips show shut"
    assert shown[0, INDEX["mouthFunnel"]] == 1.0, "the lip shape stays where the jaw can give way"

    student = DiffusionMotion.from_file(default_weights("student"))
    controls = MotionControls(seed=2)
    frames = generate(student, speech, controls).frames
    own = generate(own_jaw(student.new_stream()), speech, controls).frames
    np.testing.assert_allclose(mouth_gap(frames), jaw_gap(own), atol=1e-5)
    assert mouth_gap(own).mean() > jaw_gap(own).mean() + 0.02, "the model's lip shapes part its lips"
