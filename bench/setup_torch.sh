#!/usr/bin/env bash
# Installs Debian's python3-torch (+ python3-numpy) for the PyTorch training
# baseline (bench/train_torch.py) when no Python on this machine can import torch.
#
# Idempotent: does nothing if torch already imports. Prints one line saying what
# it did (apt output goes to a log file). Exits non-zero with a message if it
# cannot install (no apt-get, not root, apt failure).
#
# Note: Debian's package installs into /usr/lib/python3/dist-packages, i.e. for
# the *system* interpreter /usr/bin/python3. A pyenv/venv `python3` first on
# PATH will not see it; the line printed at the end names the interpreter to use.
#
# Usage: bash bench/setup_torch.sh        (env PYTHON=... to check another python first)
set -u

log="${TMPDIR:-/tmp}/setup_torch.apt.log"

find_torch_python() {
  local py
  for py in "${PYTHON:-python3}" /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import torch' >/dev/null 2>&1; then
      command -v "$py"
      return 0
    fi
  done
  return 1
}

torch_version() { "$1" -c 'import torch; print(torch.__version__)' 2>/dev/null; }

if py="$(find_torch_python)"; then
  echo "setup_torch: nothing to do: torch $(torch_version "$py") already importable by $py"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_torch: ERROR: torch is not importable and apt-get is not available; install PyTorch yourself (e.g. pip install torch)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup_torch: ERROR: torch is not importable and installing python3-torch with apt needs root; re-run as root (sudo bash $0)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
pkgs="python3-torch python3-numpy"
start=$(date +%s)
: >"$log"
if ! apt-get install -y --no-install-recommends $pkgs >>"$log" 2>&1; then
  # Package lists may be missing or stale: refresh once and retry.
  if ! { apt-get update >>"$log" 2>&1 && apt-get install -y --no-install-recommends $pkgs >>"$log" 2>&1; }; then
    echo "setup_torch: ERROR: apt-get install $pkgs failed; see $log" >&2
    exit 1
  fi
fi
secs=$(( $(date +%s) - start ))

if py="$(find_torch_python)"; then
  echo "setup_torch: installed $pkgs with apt in ${secs}s: torch $(torch_version "$py"); run the baseline with: $py bench/train_torch.py"
  exit 0
fi
echo "setup_torch: ERROR: apt installed $pkgs in ${secs}s but neither ${PYTHON:-python3} nor /usr/bin/python3 can import torch; see $log" >&2
exit 1
