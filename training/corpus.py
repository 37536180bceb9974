"""The training corpus: synthesised speech with exact phone timings -> (features, motion) pairs.

Text comes only from what Debian packages ship (``fortunes-min``, ``fortunes-de``/``-es``/``-it``,
``fortunes-cs``, ``fortunes-ru``, the ``w*`` word lists including ``wcatalan``) and from sentences
written here to cover the phone inventory (bilabials, labiodentals, rounded vowels, affricates;
in English and Catalan) plus pseudo-words in the spelling of each language that has no text
package. Voices (``emolive.training.tts``; MBROLA and svox-pico are non-free and never used):

- train: flite ``slt``, ``kal``, ``kal16``; festival ``kal_diphone``; espeak-ng English
  (several accents) and ~25 other Latin-script languages, each with random voice variants;
- train, ~18 % of the utterances (``FESTIVAL_VOICES``): festival voices that sound more
  natural than the diphone and formant ones, so that held-out natural voices are less far
  from everything seen: Catalan ``upc_ca_ona_hts`` (HTS, the largest part), US English
  ``ked_diphone``, Czech ``czech_dita``, ``czech_krb``, ``czech_machac``, ``czech_ph`` and
  Finnish ``suo_fi_lj_diphone``, ``hy_fi_mv_diphone``; and Russian from espeak-ng. Their text:
  Catalan sentences written here and ``wcatalan`` words, ``fortunes-cs`` (not its Slovak file),
  ``fortunes-ru``, Finnish pseudo-words, English as above. The Russian unit-selection voice
  ``msu_ru_nsh_clunits`` is not used: it is spliced from the recordings its package ships,
  which are real recorded speech for evaluation (``emolive.training.realspeech``);
- train, ~6 % of the utterances: singing (``emolive.training.singing``), random tunes on English words
  sung by festival ``kal_diphone`` and ``ked_diphone``;
- held out, evaluation only: flite ``awb`` and ``rms``, festival ``cmu_us_slt_arctic_hts``
  and the whole Italian language (espeak-ng ``it`` with three variants, text from
  ``fortunes-it``; festival's Italian voices are never installed for training). No held-out
  voice or language is ever synthesised for training, and the English evaluation sentences
  are disjoint from the training sentences. Singing is evaluated on the songs festival ships
  as examples (lyrics and tunes never sung in training), per singer.

Each training utterance is augmented (``emolive.training.augment``) into ``copies`` versions, each with
its own seeded motion targets (``emolive.training.targets``) and controls. Everything is seeded from
one integer: the same seed gives the same corpus, byte for byte.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from emolive.engine.audio import log_mel, video_frame_features
from emolive.engine.motion_space import FPS
from emolive.training.augment import augment, to_16k
from emolive.training.phone_repair import repair_espeak_phones
from emolive.training.sentences import (
    CATALAN_SENTENCES,
    COVER_SENTENCES,
    EVAL_ITALIAN_SENTENCES,
    EVAL_SENTENCES,
    english_sentences,
    language_sentences,
    pseudo_text,
    word_salad,
    words,
)
from emolive.training.singing import SINGERS, eval_songs, random_song, sing
from emolive.training.targets import Controls, motion_targets
from emolive.training.tts import Phone, TTSError, Utterance, festival_encode, synthesize

HELD_OUT_VOICES = ("flite:awb", "flite:rms", "festival:cmu_us_slt_arctic_hts")
HELD_OUT_LANGUAGE = "it"
HELD_OUT_LANGUAGE_VOICES = ("espeak-ng:it", "espeak-ng:it+f3", "espeak-ng:it+m3")

ENGLISH_VOICES = ("flite:slt", "flite:kal", "flite:kal16", "festival:kal_diphone")
ESPEAK_ENGLISH = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp", "en-gb-x-gbclan")
# Languages with real text in a Debian package (fortunes or word lists).
ESPEAK_TEXT_LANGUAGES = {"de": "fortunes:de", "es": "fortunes:es", "fr-fr": "dict:french", "nl": "dict:dutch",
                         "pl": "dict:polish", "pt": "dict:portuguese", "pt-br": "dict:portuguese", "sv": "dict:swedish"}
# Languages read from pseudo-words spelled with their own letters (rules produce their phones).
ESPEAK_PSEUDO_LANGUAGES = ("cs", "fi", "hu", "tr", "ro", "id", "sw", "hr", "sk", "da", "nb", "ca", "eu", "cy",
                           "lv", "lt", "et", "af", "eo", "ms", "sl", "sq", "is", "mt", "haw", "mi")
# Festival voices other than kal_diphone: voice -> (language of its text, percent of the training
# utterances). ona is the only HTS voice we may train on (slt's is held out) and the closest to
# natural speech, so it gets the largest part; the Russian unit-selection voice comes next.
# Festival is slow (a process per utterance, 0.5-1.5 s each): 18 % keeps the build time modest.
FESTIVAL_VOICES = {
    "festival:upc_ca_ona_hts": ("ca", 6.0),
    # Russian from espeak-ng, not festival's msu_ru_nsh_clunits: that voice is spliced from the
    # recordings it ships, which training.realspeech keeps apart as real speech for evaluation.
    "espeak-ng:ru": ("ru", 3.0),
    "festival:ked_diphone": ("en", 3.0),
    "festival:czech_dita": ("cs", 1.0), "festival:czech_krb": ("cs", 1.0),
    "festival:czech_machac": ("cs", 1.0), "festival:czech_ph": ("cs", 1.0),
    "festival:suo_fi_lj_diphone": ("fi", 1.0), "festival:hy_fi_mv_diphone": ("fi", 1.0),
}
SING_SHARE = 0.06  # share of the training utterances that are sung (training.singing)
FESTIVAL_SHARE = sum(w for _, w in FESTIVAL_VOICES.values()) / 100.0
# Their text, where a package has some (Finnish has none: pseudo-words). fortunes-cs also
# ships Slovak, which the Czech front end would misread.
FESTIVAL_TEXT = {"ca": "dict:catalan", "cs": "fortunes:cs", "ru": "fortunes:ru"}
VARIANTS = ("", "", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
            "+klatt", "+klatt2", "+klatt3", "+croak", "+iven", "+benjamin", "+linda", "+steph", "+john")

# Written for this project: sentences dense in the visemes that matter most to a viewer.
@dataclass(frozen=True)
class Job:
    """One utterance to synthesise: its voice, text and seed; split 'train' or 'eval'."""

    index: int
    voice: str
    text: str
    seed: int
    split: str = "train"
    group: str = ""  # evaluation group: the held-out voice, or 'it' for the language


# ----------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=1)  # ~4 s of reading and filtering; callers only read it
def festival_texts() -> dict[str, tuple[list[str], list[str]]]:
    """(sentences, words) for each language of ``FESTIVAL_VOICES`` with a text package, kept to
    what its voices' 8-bit encoding can spell (any other would fail at synthesis) and, for
    Russian, to sentences with Cyrillic in them (a few fortunes-ru entries are English)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for lang, source in FESTIVAL_TEXT.items():
        name = next(v for v, (vl, _) in FESTIVAL_VOICES.items() if vl == lang).partition(":")[2]
        kind, _, what = source.partition(":")
        sentences = language_sentences(source) if kind == "fortunes" else []
        vocabulary = words(what) if kind == "dict" else []

        def readable(text: str) -> bool:
            if lang == "ru" and not re.search("[\u0400-\u04ff]", text):
                return False
            try:
                festival_encode(text, name)
            except ValueError:
                return False
            return True

        out[lang] = ([t for t in sentences if readable(t)], [w for w in vocabulary if readable(w)])
    return out


def _festival_text(lang: str, texts: dict[str, tuple[list[str], list[str]]], rng: random.Random) -> str:
    """Text for one of the non-English ``FESTIVAL_VOICES``."""
    sentences, words = texts.get(lang, ([], []))
    if lang == "ca" and rng.random() < 0.4:
        return rng.choice(CATALAN_SENTENCES)
    if sentences and rng.random() < 0.85:
        return rng.choice(sentences)
    if words:
        return word_salad(words, rng)
    if sentences:
        return rng.choice(sentences)
    return pseudo_text(lang, rng)


# ----------------------------------------------------------------------------- plan


@dataclass
class CorpusPlan:
    train: list[Job] = field(default_factory=list)
    eval: list[Job] = field(default_factory=list)


def plan_corpus(n_train: int, seed: int, eval_per_group: int = 12) -> CorpusPlan:
    """Which voice says which text: ``FESTIVAL_SHARE`` (~18 %) the ``FESTIVAL_VOICES``; of the rest
    ~45 % English (flite/festival/espeak) and the other ~55 % espeak languages."""
    rng = random.Random(seed)
    english = english_sentences()
    rng.shuffle(english)
    cover = list(COVER_SENTENCES)
    lang_text = {lang: language_sentences(src) for lang, src in ESPEAK_TEXT_LANGUAGES.items()}
    lang_words = {lang: words(src.partition(":")[2]) for lang, src in ESPEAK_TEXT_LANGUAGES.items() if src.startswith("dict:")}
    english_words = words("american-english")
    fest_texts = festival_texts() if n_train > 0 else {}
    fest_voices = list(FESTIVAL_VOICES)
    fest_weights = [w for _, w in FESTIVAL_VOICES.values()]
    song_words = [w for w in english_words if w.isalpha() and w.islower()]
    plan = CorpusPlan()
    e_iter = iter(english)
    for i in range(n_train):
        if rng.random() < SING_SHARE and song_words:
            singer = rng.choice(SINGERS)
            plan.train.append(Job(i, f"festival-sing:{singer}", random_song(song_words, rng), seed * 1_000_003 + i))
            continue
        u = rng.random()
        if u < FESTIVAL_SHARE:
            voice = rng.choices(fest_voices, fest_weights)[0]
        else:
            u = (u - FESTIVAL_SHARE) / (1.0 - FESTIVAL_SHARE)  # the rest keeps its old proportions
            if u < 0.28:  # flite / festival English
                voice = ENGLISH_VOICES[rng.randrange(len(ENGLISH_VOICES))]
                if voice.startswith("festival") and rng.random() < 0.5:  # festival is slow: keep it a minority
                    voice = "flite:kal16"
            elif u < 0.5:
                voice = f"espeak-ng:{rng.choice(ESPEAK_ENGLISH)}{rng.choice(VARIANTS)}"
            elif u < 0.78:
                lang = rng.choice(sorted(ESPEAK_TEXT_LANGUAGES))
                voice = f"espeak-ng:{lang}{rng.choice(VARIANTS)}"
            else:
                lang = rng.choice(ESPEAK_PSEUDO_LANGUAGES)
                voice = f"espeak-ng:{lang}{rng.choice(VARIANTS)}"
        if voice in FESTIVAL_VOICES:
            lang = FESTIVAL_VOICES[voice][0]
        elif voice.startswith(("flite", "festival")):
            lang = "en"
        else:
            lang = voice.partition(":")[2].partition("+")[0]
        if lang.startswith("en"):
            r = rng.random()
            if r < 0.12:
                text = rng.choice(cover)
            elif r < 0.27 and english_words:
                text = word_salad(english_words, rng)
            else:
                text = next(e_iter, None) or word_salad(english_words, rng)
        elif voice in FESTIVAL_VOICES:
            text = _festival_text(lang, fest_texts, rng)
        elif lang in lang_text and lang_text[lang] and rng.random() < 0.85:
            text = rng.choice(lang_text[lang])
        elif lang in lang_words and lang_words[lang]:
            text = word_salad(lang_words[lang], rng)
        else:
            text = pseudo_text(lang, rng)
        plan.train.append(Job(i, voice, text, seed * 1_000_003 + i))
    # Evaluation: held-out voices on held-out English sentences; the held-out language.
    k = n_train
    italian = language_sentences("fortunes:it")
    rng_eval = random.Random(seed + 1)
    rng_eval.shuffle(italian)
    for voice in HELD_OUT_VOICES:
        for j in range(eval_per_group):
            plan.eval.append(Job(k, voice, EVAL_SENTENCES[j % len(EVAL_SENTENCES)], seed * 7 + k, "eval", voice))
            k += 1
    it_texts = list(EVAL_ITALIAN_SENTENCES) + [s for s in italian if 6 <= len(s.split()) <= 16]
    for j in range(eval_per_group):
        voice = HELD_OUT_LANGUAGE_VOICES[j % len(HELD_OUT_LANGUAGE_VOICES)]
        plan.eval.append(Job(k, voice, it_texts[j % len(it_texts)], seed * 7 + k, "eval", HELD_OUT_LANGUAGE))
        k += 1
    for singer in SINGERS:
        for _, score in eval_songs()[:eval_per_group]:
            plan.eval.append(Job(k, f"festival-sing:{singer}", score, seed * 7 + k, "eval", f"sing:{singer}"))
            k += 1
    return plan


# Calibration: voices the model trained on, saying sentences it never heard. The seal bias
# (training.evaluate.calibrate_seal_bias) is chosen here, never on the held-out voices.
CALIBRATION_VOICES = ("flite:slt", "flite:kal", "festival:kal_diphone", "espeak-ng:en-us")


def calibration_jobs(seed: int, per_voice: int = 6) -> list[Job]:
    """Clean (unaugmented) utterances of training voices on the held-out English sentences."""
    jobs = []
    for v, voice in enumerate(CALIBRATION_VOICES):
        for j in range(per_voice):
            k = len(jobs)
            text = EVAL_SENTENCES[(j + 3 * v) % len(EVAL_SENTENCES)]
            jobs.append(Job(k, voice, text, seed * 13 + k, "eval", "calibration"))
    return jobs


def calibration_clips(seed: int, per_voice: int = 6, workers: int = 2) -> list[tuple[np.ndarray, list[Phone], str]]:
    """(16 kHz audio, phones, group) of :func:`calibration_jobs`, synthesised."""
    clips = []
    jobs = [(job, 1) for job in calibration_jobs(seed, per_voice)]
    for made in run_jobs(jobs, workers=workers, log=lambda _: None):
        if made:
            clip = made[0]
            clips.append((clip["audio"], [Phone(*p) for p in clip["phones"]], clip["group"]))
    return clips


# ----------------------------------------------------------------------------- synthesis


def _scaled(phones: list[Phone], factor: float, duration: float) -> list[Phone]:
    out = [Phone(p.symbol, p.start * factor, p.end * factor) for p in phones]
    last = out[-1]
    out[-1] = Phone(last.symbol, last.start, max(last.start, duration))
    return out


def _random_controls(rng: np.random.Generator) -> Controls:
    def pick(default: float, lo: float, hi: float) -> float:
        return default if rng.random() < 0.35 else float(rng.uniform(lo, hi))

    return Controls(head_motion=pick(1.0, 0.0, 2.0), speed=pick(1.0, 0.5, 2.0), expressiveness=pick(1.0, 0.0, 2.0))


def synth_job(job: Job, copies: int) -> list[dict] | None:
    """Synthesise one job; train jobs give ``copies`` augmented clips, eval jobs one clean clip."""
    singing = job.voice.startswith("festival-sing:")
    try:
        utt = sing(job.text, job.voice.partition(":")[2]) if singing else synthesize(job.text, job.voice)
    except (TTSError, ValueError):
        return None
    # The example songs festival ships run up to 20 s; training clips stay under 14 s.
    if utt.duration < 0.6 or utt.duration > (25.0 if singing and job.split == "eval" else 14.0):
        return None
    if job.voice.startswith("espeak-ng:"):
        utt.phones = repair_espeak_phones(utt.phones, utt.audio, utt.rate)
    rng = np.random.default_rng(job.seed)
    out = []
    if job.split == "eval":
        audio = to_16k(utt.audio, utt.rate)
        out.append(_clip(job, utt, audio, utt.phones, Controls(), int(rng.integers(2**31))))
        return out
    for c in range(copies):
        audio, stretch = augment(utt.audio, utt.rate, rng, clean_prob=0.3 if c == 0 else 0.1)
        phones = _scaled(utt.phones, stretch, len(audio) / 16000) if stretch != 1.0 else utt.phones
        out.append(_clip(job, utt, audio, phones, _random_controls(rng), int(rng.integers(2**31))))
    return out


def _clip(job: Job, utt: Utterance, audio16k: np.ndarray, phones: list[Phone], controls: Controls, seed: int) -> dict:
    features = video_frame_features(log_mel(audio16k))
    n = len(features)
    targets = motion_targets(phones, audio16k, 16000, n, controls, seed)
    clip = {
        "features": features.astype(np.float16),
        "targets": targets.astype(np.float32),
        "controls": controls.vector(),
        "voice": job.voice,
        "text": job.text,
        "group": job.group,
        "split": job.split,
        "phones": [(p.symbol, p.start, p.end) for p in phones],
    }
    if job.split == "eval":
        clip["audio"] = audio16k.astype(np.float32)
    return clip


def _work(args: tuple[Job, int]) -> list[dict] | None:
    import torch

    torch.set_num_threads(1)
    return synth_job(*args)


def run_jobs(jobs: list[tuple[Job, int]], workers: int = 2, log=print) -> list[list[dict] | None]:
    """``synth_job`` over jobs, each in a fresh worker process.

    libespeak-ng keeps state from one utterance to the next (voice variants, the Klatt noise
    generator), so the same text can come out a few samples different depending on what the
    process spoke before; a fresh process per utterance makes the corpus depend on the seed only.
    """
    results: list[list[dict] | None] = []
    with get_context("fork").Pool(max(1, workers), maxtasksperchild=1) as pool:
        for i, r in enumerate(pool.imap(_work, jobs, chunksize=1)):
            results.append(r)
            if (i + 1) % 200 == 0:
                log(f"corpus: {i + 1}/{len(jobs)} utterances")
    return results


def build_corpus(out_dir: Path, n_train: int, seed: int, copies: int = 2, workers: int = 2,
                 eval_per_group: int = 12, log=print) -> dict[str, Path]:
    """Synthesise, augment and label the corpus into ``out_dir`` (train.npz, eval.npz). Returns paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(n_train, seed, eval_per_group)
    jobs = [(j, copies) for j in plan.train + plan.eval]
    results = run_jobs(jobs, workers, log)
    train = [c for r, (j, _) in zip(results, jobs) if r and j.split == "train" for c in r]
    evals = [c for r, (j, _) in zip(results, jobs) if r and j.split == "eval" for c in r]
    paths = {"train": out_dir / "train.npz", "eval": out_dir / "eval.npz"}
    _save(paths["train"], train)
    _save(paths["eval"], evals)
    seconds = sum(len(c["targets"]) for c in train) / FPS
    log(f"corpus: {len(train)} training clips ({seconds / 60:.1f} min of audio), {len(evals)} evaluation clips")
    return paths


def _save(path: Path, clips: list[dict]) -> None:
    lengths = np.array([len(c["targets"]) for c in clips], np.int64)
    payload = {
        "lengths": lengths,
        "features": np.concatenate([c["features"] for c in clips]) if clips else np.zeros((0, 4, 80), np.float16),
        "targets": np.concatenate([c["targets"] for c in clips]) if clips else np.zeros((0, 35), np.float32),
        "controls": np.stack([c["controls"] for c in clips]) if clips else np.zeros((0, 3), np.float32),
        "voice": np.array([c["voice"] for c in clips]),
        "text": np.array([c["text"] for c in clips]),
        "group": np.array([c["group"] for c in clips]),
        "phones": np.array([repr(c["phones"]) for c in clips]),
    }
    if clips and "audio" in clips[0]:
        payload["audio_lengths"] = np.array([len(c["audio"]) for c in clips], np.int64)
        payload["audio"] = np.concatenate([c["audio"] for c in clips])
    np.savez(path, **payload)


@dataclass
class Corpus:
    """A saved corpus split, clips concatenated along time."""

    features: np.ndarray  # (N, 4, 80) float16
    targets: np.ndarray  # (N, C) float32
    lengths: np.ndarray  # (clips,)
    controls: np.ndarray  # (clips, 3)
    voice: np.ndarray
    text: np.ndarray
    group: np.ndarray
    phones: list[list[Phone]]
    audio: list[np.ndarray] | None = None

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def clip(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.features[a:b].astype(np.float32), self.targets[a:b]


def load_corpus(path: Path) -> Corpus:
    import ast

    with np.load(path, allow_pickle=False) as z:
        phones = [[Phone(s, float(a), float(b)) for s, a, b in ast.literal_eval(str(p))] for p in z["phones"]]
        audio = None
        if "audio" in z:
            ends = np.cumsum(z["audio_lengths"])
            audio = np.split(z["audio"], ends[:-1])
        return Corpus(z["features"], z["targets"], z["lengths"], z["controls"], z["voice"], z["text"], z["group"], phones, audio)


def phone_inventory(corpus: Corpus) -> dict[str, float]:
    """Seconds of each phone in a corpus."""
    seconds: dict[str, float] = {}
    for phones in corpus.phones:
        for p in phones:
            seconds[p.symbol] = seconds.get(p.symbol, 0.0) + p.duration
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def _stats_line(c: Corpus) -> str:
    return f"{len(c.lengths)} clips, {c.lengths.sum() / FPS / 60:.1f} min"





