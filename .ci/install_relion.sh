#!/usr/bin/env bash
# Install RELION 3.1 (Debian package) and its Scipion plugin for the side-by-side
# benchmarks/tests. Idempotent and non-interactive; run it (do not source it).
#
# Usage: .ci/install_relion.sh [VENV]      (VENV defaults to ./.venv)
# Prints, as its last line:  export RELION_HOME=<folder named relion-3.1>
set -euo pipefail

VENV="${1:-.venv}"
PY="$VENV/bin/python"
RELION_PLUGIN_VERSION="4.0.20"   # 5.x drives RELION 4/5 options that RELION 3.1 rejects
RELION_ROOT="${SIMCRYO_RELION_ROOT:-${HOME:-/tmp}/.simcryo-relion}"
RELION_HOME_DIR="$RELION_ROOT/relion-3.1"   # the plugin reads its version from this name

log() { echo "[install_relion] $*" >&2; }
start=$(date +%s)

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root (or sudo) to run: $*"; return 1; fi
}

if command -v relion_refine >/dev/null 2>&1; then
    log "relion_refine present: $(relion_refine --version 2>/dev/null | head -1)"
else
    log "installing Debian package relion"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q relion >&2
fi

if [ ! -x "$PY" ]; then
    log "no python at $PY"; exit 1
fi
have=$("$PY" - <<'PYEOF'
try:
    from importlib.metadata import version
    print(version("scipion-em-relion"))
except Exception:
    print("")
PYEOF
)
if [ "$have" = "$RELION_PLUGIN_VERSION" ]; then
    log "scipion-em-relion $have present"
else
    # --no-deps: its only requirements (scipion-em, emtable) are already pinned in the venv;
    # resolving them again could move numpy/scipy.
    log "installing scipion-em-relion==$RELION_PLUGIN_VERSION (was: '${have:-none}')"
    "$PY" -m pip install -q --no-deps "scipion-em-relion==$RELION_PLUGIN_VERSION" >&2
    "$PY" -c "import emtable" 2>/dev/null || "$PY" -m pip install -q --no-deps "emtable>=0.0.14" >&2
fi

# Scipion's relion plugin runs $RELION_HOME/bin/relion_*; point a versioned folder at /usr/bin.
mkdir -p "$RELION_HOME_DIR/bin"
for exe in /usr/bin/relion_*; do
    ln -sfn "$exe" "$RELION_HOME_DIR/bin/$(basename "$exe")"
done

log "done in $(( $(date +%s) - start )) s"
echo "export RELION_HOME=$RELION_HOME_DIR"
