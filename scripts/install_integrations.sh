#!/usr/bin/env bash
# The Pipecat and LiveKit extras in their own environment, .venv-integrations, layered on .venv
# (run scripts/install.sh first): both frameworks need protobuf >= 5, and .venv keeps the
# protobuf 4.25 that mediapipe 0.10.21 declares. .venv's packages stay visible underneath
# (a .pth file), so only the extras and what they upgrade (protobuf 6, soxr 1.0) are installed.
#
#   scripts/install_integrations.sh
#   .venv-integrations/bin/python -m pytest tests/test_integrations.py
#   .venv-integrations/bin/python examples/pipecat_bot.py
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "install_integrations.sh: run scripts/install.sh first" >&2; exit 1; }
if [ ! -x .venv-integrations/bin/python ]; then
    .venv/bin/python -m venv .venv-integrations
fi
base=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
layer=$(.venv-integrations/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# After the layer's own packages (its protobuf wins), with .venv's own .pth files (the editable
# emolive install) processed too.
echo "import site; site.addsitedir('$base')" > "$layer/zz_emolive_base.pth"
.venv-integrations/bin/python -m pip --disable-pip-version-check -q install "pipecat-ai[webrtc]>=1.14,<2" "livekit-agents>=1.8,<2"
