#!/usr/bin/env bash
# Installs the system packages the tests need, once (Debian and Ubuntu):
#   nginx                            the scale-out test puts two servers behind it
#   mesa-vulkan-drivers, libvulkan1  lavapipe, a software Vulkan driver, for the wgpu tests
#   chromium, fonts-dejavu-core      headless browser tests of the chat page
# Runs apt-get as root, or through `sudo -n` when that needs no password; otherwise it says
# what to install and fails, so `just test` never fails later with a puzzling message.
# `just setup` and `just test` call it; so does CI (.ci/run).
set -euo pipefail

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
compgen -G '/usr/share/vulkan/icd.d/lvp_icd.*.json' >/dev/null || missing+=(mesa-vulkan-drivers libvulkan1)
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: the tests need these system packages (Debian names): ${missing[*]}." >&2
  echo "       This system has no apt-get: install their equivalents, then run just test again." >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "error: the tests need these system packages: ${missing[*]}." >&2
  echo "       Install them, then run just test again:" >&2
  echo "       sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages for the tests: ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
