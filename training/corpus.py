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
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from emolive.engine.audio import log_mel, video_frame_features
from emolive.engine.motion_space import FPS
from emolive.training.augment import augment, to_16k
from emolive.training.singing import SINGERS, eval_songs, random_song, sing
from emolive.training.targets import Controls, motion_targets
from emolive.training.tts import Phone, TTSError, Utterance, festival_encode, synthesize

FORTUNES = Path("/usr/share/games/fortunes")
DICT = Path("/usr/share/dict")

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
_FORTUNES_SKIP = {"cs": ("klasik-sk",)}
VARIANTS = ("", "", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
            "+klatt", "+klatt2", "+klatt3", "+croak", "+iven", "+benjamin", "+linda", "+steph", "+john")

# Written for this project: sentences dense in the visemes that matter most to a viewer.
COVER_SENTENCES = (
    "Bob, my papa bought a big map of Panama.",
    "Mom and Pam baked apple pie, and I am happy.",
    "Maybe a bumpy bus ride calms my mind.",
    "Palm trees bob above the bay.",
    "Five vivid violets flowered in the valley of fog.",
    "Who would want two blue boots on a cool moon?",
    "Show me the shop where she chose the cheap shoes.",
    "The thick thistles threw their thorns at the path.",
    "Judge Jones jogged past the huge orange church.",
    "We were wondering where the wet wool went.",
    "Peter Piper picked a peck of pickled peppers.",
    "A big black bug bit a big black bear.",
    "Over the rainbow, far away, the blue boat floats.",
    "Measure the pleasure of the azure lake at noon.",
    "I saw a sunny summer morning by the sea.",
    "Please pass the bread and the butter, Bill.",
    "Every few weeks, Fred fixes the old van.",
    "You should move your food off the blue spoon.",
    "My brother Ben plays bass in a brass band.",
    "Yes, the young yak yawned in the yellow yard.",
    "How now, brown cow, out of the house and down the town.",
    "Ruth rarely reads the rules of the royal room.",
    "Ahh, oh, ooh, ee, eh: all the vowels of the world.",
    "The mob moved the mop by the pump in the pub.",
    "Buy me a baby puppy, please, papa.",
    "Voodoo food was a whoopee for the crew.",
    "A quick zebra zips past the lazy fox.",
    "Sixty-six sheep sleep in the shed beside the shore.",
)
# Held-out English sentences (evaluation only), also written here: never in the training text.
# Catalan, written here (no Catalan text package but the word list): bilabials, labiodentals,
# rounded vowels; read by the Catalan HTS voice. Central Catalan says v as b.
CATALAN_SENTENCES = (
    "El pare i la mare mengen pa amb tomàquet.",
    "La Maria va comprar un barret blau al mercat.",
    "Bon dia, com estàs? Molt bé, gràcies.",
    "El meu avi fuma una pipa al balcó.",
    "Podem passejar pel parc aquest migdia?",
    "La bruixa bufa les bombolles de sabó.",
    "Un bou i un bisó beuen aigua a la bassa.",
    "M'agrada molt la música popular.",
    "El poble és a prop de la platja.",
    "Compra mig quilo de pomes i un meló.",
    "Els nens juguen a pilota a la plaça major.",
    "Hi ha un vaixell blanc al port de Palamós.",
    "La Montse porta un vestit vermell molt bonic.",
    "Tu i jo som amics des de fa molts anys.",
    "Vull un got d'aigua fresca, si us plau.",
    "El foc crema a la llar de la masia.",
    "La lluna plena brilla sobre el mar.",
    "Ahir vam menjar peix amb patates.",
    "Em fa mal el peu dret des de dimarts.",
    "Bufa un vent fort i plou a bots i barrals.",
    "El gos del veí borda tota la nit.",
    "Quin fred que fa avui al matí!",
    "La pluja mulla els camps de blat.",
    "Una papallona blava vola per sobre les flors.",
    "Mou-te una mica, que no hi veig bé.",
    "El metge m'ha dit que em quedi a casa.",
    "Ompliu les ampolles amb oli d'oliva.",
    "Obre la boca i mostra'm les dents.",
    "Aquesta ombra és bona per fer la migdiada.",
    "Un home vell ven mel i mantega al mercat.",
    "Fem una foto de la família a la font.",
    "Busco el meu mòbil, l'has vist?",
    "Febrer és un mes curt però fred.",
    "La nena dibuixa un mapa del món.",
    "Visc a Barcelona, prop de la Sagrada Família.",
    "El cambrer porta un plat de mongetes.",
    "Bombons, pomes i maduixes per postres.",
    "Molta gent espera l'autobús a la parada.",
    "Puc obrir la finestra? Fa molta calor.",
    "El pou és profund i l'aigua és molt bona.",
    "Les ovelles pasturen a la muntanya.",
    "Un ós bru dorm sota un pi.",
)
EVAL_SENTENCES = (
    "Bob, my papa bought a big map of Panama, and palm trees bob above the bay.",
    "Mom baked a plum pie, then Pam made a pumpkin mousse for the members.",
    "Maybe a bumpy bus ride by the beach will calm my mind before the probe.",
    "The lamp beams upon a damp blue map by my bed.",
    "Please bring me both bubbly and plain water from the market, Bob.",
    "Every morning, my brother paints pebbles, boats and maple leaves.",
    "A famous problem may be simple, but the proof must be complete.",
    "Perhaps the umpire will pause the match if the members complain.",
    "Biology is impossible without many maps, tables and samples.",
    "My neighbour's puppy jumped into the swimming pool with a bump.",
    "Imagine the empire built by people who simply stop and ponder.",
    "Ample amounts of maple syrup, apples and plums make me happy.",
)
EVAL_ITALIAN_SENTENCES = (
    "Il mio babbo ha comprato una mappa del mondo per la bambina.",
    "Piano piano, la pioggia bagna i campi e le piante di pomodoro.",
    "Mamma mia, che bella primavera sul mare di Palermo.",
    "Il bambino mangia una mela e beve una bibita fresca.",
    "Amo ballare sotto la luna piena con gli amici.",
    "Per favore, passami il pane e il burro, Paolo.",
)

_WORD_CHARS = re.compile(r"^[^\W\d_]+(?:['’-][^\W\d_]+)*$")


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


def _fortune_sentences(paths: Iterable[Path]) -> list[str]:
    """Sentences of 4-22 words from fortune files, attributions and odd lines dropped."""
    sentences: list[str] = []
    for path in paths:
        if not path.is_file():
            continue
        raw = path.read_bytes().decode("utf-8", "replace")
        for entry in raw.split("\n%\n"):
            lines = [ln.strip() for ln in entry.splitlines() if ln.strip() and not ln.strip().startswith("--")]
            text = re.sub(r"(^|\s)[QA]:\s*", " ", " ".join(lines)).strip()
            if any(ch in text for ch in "<>{}[]|\\#@$^*=_~`") or "http" in text:
                continue
            for sent in re.split(r"(?<=[.!?])\s+", text):
                words = sent.split()
                if 4 <= len(words) <= 22 and sum(c.isalpha() for c in sent) > 0.7 * len(sent.replace(" ", "")):
                    sentences.append(sent.strip(" \"'"))
    return sorted(set(sentences))


def _words(name: str) -> list[str]:
    path = DICT / name
    if not path.is_file():
        return []
    words = path.read_text("utf-8", "replace").split()
    return sorted({w for w in words if _WORD_CHARS.match(w) and 2 <= len(w) <= 12 and not w.isupper()})


def english_sentences() -> list[str]:
    names = ["fortunes", "literature", "riddles", "people", "wisdom", "humorists", "work", "science", "art", "food"]
    sentences = _fortune_sentences(FORTUNES / n for n in names)
    held = {s.lower() for s in EVAL_SENTENCES}
    return [s for s in sentences if s.lower() not in held]


def language_sentences(source: str) -> list[str]:
    kind, _, name = source.partition(":")
    if kind == "fortunes":
        folder = FORTUNES / name
        skip = _FORTUNES_SKIP.get(name, ())
        kept = [p for p in sorted(folder.glob("*")) if p.is_file() and p.stem not in skip]
        files = [p for p in kept if p.suffix not in (".dat", ".u8")]
        utf8 = [p for p in kept if p.suffix == ".u8"]
        return _fortune_sentences(utf8 or files)
    return []


def _word_salad(words: list[str], rng: random.Random) -> str:
    n = rng.randint(4, 12)
    text = " ".join(rng.choice(words) for _ in range(n))
    if n > 7 and rng.random() < 0.6:
        cut = rng.randint(3, n - 3)
        parts = text.split()
        text = " ".join(parts[:cut]) + ", " + " ".join(parts[cut:])
    return text[0].upper() + text[1:] + rng.choice([".", ".", "?", "!"])


# Letters each pseudo-word language spells with (its own orthography, so espeak's rules apply).
_PSEUDO_LETTERS = {
    "default": ("aeiou", "bcdfghjklmnprstvz"),
    "cs": ("aeiouyáéíóúůý", "bcčdďfghjklmnňprřsštťvzž"), "sk": ("aeiouyáäéíóôú", "bcčdďfghjklľmnňprsštťvzž"),
    "fi": ("aeiouyäö", "dhjklmnprstv"), "et": ("aeiouõäöü", "dghjklmnprstv"), "hu": ("aeiouáéíóöőúüű", "bcdfghjklmnprstvz"),
    "tr": ("aeıioöuü", "bcçdfgğhjklmnprsştvyz"), "ro": ("aeiouăâî", "bcdfghjlmnprsștțvz"), "pl": ("aeiouyąę", "bcćdfghjklłmnńprsśtwzźż"),
    "lv": ("aeiouāēīū", "bcčdfgģjkķlļmnņprsštvzž"), "lt": ("aeiouyąęėįųū", "bcčdfghjklmnprsštvzž"),
    "hr": ("aeiou", "bcčćdđfghjklmnprsštvzž"), "sl": ("aeiou", "bcčdfghjklmnprsštvzž"), "da": ("aeiouyæøå", "bdfghjklmnprstv"),
    "nb": ("aeiouyæøå", "bdfghjklmnprstv"), "is": ("aeiouyáéíóúýæö", "bdðfghjklmnprstvþ"), "cy": ("aeiouwy", "bcdfghllmnprstdd"),
    "haw": ("aeiou", "hklmnpw"), "mi": ("aeiou", "hkmnprtw"), "sw": ("aeiou", "bdfghjklmnprstvwyz"), "eu": ("aeiou", "bdfgjklmnprstxz"),
}


def _pseudo_text(lang: str, rng: random.Random) -> str:
    vowels, consonants = _PSEUDO_LETTERS.get(lang, _PSEUDO_LETTERS["default"])
    words = []
    for _ in range(rng.randint(4, 10)):
        syllables = rng.choice([1, 2, 2, 3, 3, 4])
        w = ""
        for _ in range(syllables):
            if rng.random() < 0.85:
                w += rng.choice(consonants)
            w += rng.choice(vowels)
            if rng.random() < 0.25:
                w += rng.choice(consonants)
        words.append(w)
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


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
        words = _words(what) if kind == "dict" else []

        def readable(text: str) -> bool:
            if lang == "ru" and not re.search("[\u0400-\u04ff]", text):
                return False
            try:
                festival_encode(text, name)
            except ValueError:
                return False
            return True

        out[lang] = ([t for t in sentences if readable(t)], [w for w in words if readable(w)])
    return out


def _festival_text(lang: str, texts: dict[str, tuple[list[str], list[str]]], rng: random.Random) -> str:
    """Text for one of the non-English ``FESTIVAL_VOICES``."""
    sentences, words = texts.get(lang, ([], []))
    if lang == "ca" and rng.random() < 0.4:
        return rng.choice(CATALAN_SENTENCES)
    if sentences and rng.random() < 0.85:
        return rng.choice(sentences)
    if words:
        return _word_salad(words, rng)
    if sentences:
        return rng.choice(sentences)
    return _pseudo_text(lang, rng)


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
    lang_words = {lang: _words(src.partition(":")[2]) for lang, src in ESPEAK_TEXT_LANGUAGES.items() if src.startswith("dict:")}
    english_words = _words("american-english")
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
                text = _word_salad(english_words, rng)
            else:
                text = next(e_iter, None) or _word_salad(english_words, rng)
        elif voice in FESTIVAL_VOICES:
            text = _festival_text(lang, fest_texts, rng)
        elif lang in lang_text and lang_text[lang] and rng.random() < 0.85:
            text = rng.choice(lang_text[lang])
        elif lang in lang_words and lang_words[lang]:
            text = _word_salad(lang_words[lang], rng)
        else:
            text = _pseudo_text(lang, rng)
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


if __name__ == "__main__":  # pragma: no cover - handy for inspection
    import sys

    plan = plan_corpus(int(sys.argv[1]) if len(sys.argv) > 1 else 20, 0)
    for j in plan.train[:40] + plan.eval[:6]:
        print(j.voice, "|", j.text)
    _ = math


def _rms_10ms(audio: np.ndarray, rate: int) -> np.ndarray:
    """RMS of each whole 10 ms block of ``audio``."""
    x = np.asarray(audio, np.float64)
    hop = max(1, rate // 100)
    frames = len(x) // hop
    return np.sqrt((x[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1))


def repair_pauses(phones: list[Phone], audio: np.ndarray, rate: int) -> list[Phone]:
    """Voiced 'pau' segments inside speech become part of the phone before them.

    espeak-ng reports some phonemes with no IPA name (vowel transitions, linking sounds) with an
    empty name, which ``emolive.training.tts`` reads as silence; real pauses are quiet, these are not.
    A 'pau' whose RMS is over 12 % of the utterance's loud level (90th percentile of 10 ms RMS)
    is merged into the phone before it.
    """
    rms = _rms_10ms(audio, rate)
    frames = len(rms)
    if frames < 2:
        return list(phones)
    loud = float(np.percentile(rms, 90)) + 1e-9
    out: list[Phone] = []
    for p in phones:
        a, b = int(p.start * 100), max(int(p.start * 100) + 1, int(p.end * 100))
        level = float(rms[a:b].mean()) if a < frames else 0.0
        if p.symbol == "pau" and out and out[-1].symbol != "pau" and level > 0.12 * loud:
            out[-1] = Phone(out[-1].symbol, out[-1].start, p.end)
        elif out and p.symbol == "pau" and out[-1].symbol == "pau":
            out[-1] = Phone("pau", out[-1].start, p.end)
        else:
            out.append(p)
    return out


STOPS = frozenset({"p", "b", "t", "d", "k", "g", "ch", "jh"})


def repair_stop_closures(phones: list[Phone], audio: np.ndarray, rate: int) -> list[Phone]:
    """Give each stop its closure: espeak-ng fires a stop's phoneme event at the burst, so the
    silent closure before it is counted in the phone before. The quiet run (10 ms RMS under 5 %
    of the loud level) at the end of the phone before a stop is moved into the stop."""
    rms = _rms_10ms(audio, rate)
    frames = len(rms)
    if frames < 2:
        return list(phones)
    quiet = rms < 0.05 * (float(np.percentile(rms, 90)) + 1e-9)
    out = list(phones)
    for i in range(1, len(out)):
        stop, prev = out[i], out[i - 1]
        if stop.symbol not in STOPS or prev.symbol == "pau":
            continue
        k = min(frames, int(round(stop.start * 100)))
        first = k
        while first - 1 >= 0 and quiet[first - 1] and (first - 1) / 100 > prev.start + 0.03:
            first -= 1
        if first < k:
            cut = first / 100
            out[i - 1] = Phone(prev.symbol, prev.start, cut)
            out[i] = Phone(stop.symbol, cut, stop.end)
    return out


def repair_espeak_phones(phones: list[Phone], audio: np.ndarray, rate: int) -> list[Phone]:
    return repair_stop_closures(repair_pauses(phones, audio, rate), audio, rate)
