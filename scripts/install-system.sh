#!/usr/bin/env bash
# Debian packages the tests need: Chromium for the browser tests; codec2-examples for its
# recordings of human speech (/usr/share/codec2/wav/hts1a.wav: a man reading "The Navy
# attacked the big task force.", 8 kHz), which the speech recognition tests transcribe.
# Idempotent: does nothing when already present.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -f /usr/share/codec2/wav/hts1a.wav ] || missing+=(codec2-examples)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system: need root to apt-get install ${missing[*]}; run: sudo $0" >&2
  exit 1
fi
echo "install-system: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
