#!/usr/bin/env bash
# Sets up everything imgcls needs on a fresh machine: a virtual environment in .venv with the pinned
# torch/torchvision pair, the package itself (editable) and, where apt is usable, the Debian
# Fashion-MNIST package so the default dataset works offline. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]"

# Fashion-MNIST offline: the Debian package ships the IDX files. Without it imgcls downloads them.
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -d "$FMNIST" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=skip; fi
  fi
  if [ "$SUDO" != skip ]; then
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "note: could not install dataset-fashion-mnist; imgcls will download Fashion-MNIST instead" >&2
  fi
fi
touch "$VENV/.installed"
