"""Text the corpus speaks: tables of sentences written for it, and text drawn from the
fortunes and word lists Debian ships (real sentences, word salad, pseudo-words)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
DICT = Path("/usr/share/dict")
_FORTUNES_SKIP = {"cs": ("klasik-sk",)}

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


def words(name: str) -> list[str]:
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


def word_salad(words: list[str], rng: random.Random) -> str:
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


def pseudo_text(lang: str, rng: random.Random) -> str:
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
