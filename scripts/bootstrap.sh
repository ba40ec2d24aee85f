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

# Debian packages, where apt is usable: Fashion-MNIST's IDX files (the default dataset, offline; without
# it imgcls downloads them) and, for the test suite, headless Chromium + its WebDriver (report pages).
PKGS=""
[ -d /usr/share/datasets/fashion-mnist ] || PKGS="$PKGS dataset-fashion-mnist"
command -v chromedriver >/dev/null 2>&1 || PKGS="$PKGS chromium chromium-driver"
if [ -n "$PKGS" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=skip; fi
  fi
  if [ "$SUDO" != skip ]; then
    # shellcheck disable=SC2086
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq $PKGS >/dev/null) \
      || echo "note: could not install$PKGS (Fashion-MNIST then downloads; browser tests are skipped)" >&2
  fi
fi
touch "$VENV/.installed"
