#!/usr/bin/env bash
# Installs everything emolive needs on a fresh Debian machine: system packages (TTS engines for
# test speech and training, Chromium for browser tests), then a virtual environment in .venv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(flite espeak-ng festival festvox-kallpc16k chromium sox
              festvox-us-slt-hts alsa-utils fortunes-min fortunes-de fortunes-es fortunes-it wamerican wngerman wfrench wspanish wportuguese wpolish wdutch wswedish
              # more training voices (training/corpus.py FESTIVAL_VOICES) and their text; festvox-ru is ~240 MB
              festvox-kdlpc16k festvox-ca-ona-hts festvox-czech-dita festvox-czech-krb festvox-czech-machac festvox-czech-ph
              festvox-suopuhe-lj festvox-suopuhe-mv festvox-ru fortunes-cs fortunes-ru wcatalan
              # real recorded speech with transcripts, for evaluation only (training/realspeech.py)
              pocketsphinx-testdata asterisk-core-sounds-en asterisk-core-sounds-en-wav)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "install.sh: please install these Debian packages first: ${missing[*]}" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned exactly: the local CPU wheel; any looser spec pulls CUDA builds.
"${pip[@]}" install torch==2.13.0
# protobuf 4.25.x, what mediapipe 0.10.21 declares; pyproject allows up to 6 for the pipecat /
# livekit extras, which need >=5 (face mesh runs the same on them).
"${pip[@]}" install -e ".[dev]" "protobuf>=4.25,<5"
"${pip[@]}" install --no-deps -r requirements/no-deps.txt
# The Pipecat / LiveKit extras, in .venv-integrations layered on .venv (they need protobuf >= 5;
# .venv keeps mediapipe's 4.25).
./scripts/install_integrations.sh
