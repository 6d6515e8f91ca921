#!/bin/sh
# Create /work/main/.venv-nova (or $NOVA_VENV) with the real Nova 34 test box's
# requirements. Idempotent: does nothing if the venv exists and the requirements
# file has not changed since the last successful install (stamp file).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${NOVA_VENV:-$ROOT/.venv-nova}
REQ=$HERE/requirements.txt
STAMP=$VENV/.nova-box-requirements.sha256
PYTHON=${NOVA_BOX_PYTHON:-/usr/bin/python3}

want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "nova box venv up to date: $VENV"
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
echo "$want" > "$STAMP"
echo "nova box venv ready: $VENV"
