#!/bin/sh
# install-tensorrt.sh MODE VENV WHEEL: TensorRT into the GPU builder's venv, or a plain record
# of why not. MODE: auto (install where NVIDIA's index is reachable, else build without it),
# yes (fail the build when it cannot be installed), no (do not try).
# The outcome is written to VENV/TENSORRT, which the image keeps, so nobody has to guess.
set -eu
mode="$1" venv="$2" wheel="$3"
record="$venv/TENSORRT"
case "$mode" in
  no)
    echo "TensorRT: not installed (build argument TENSORRT=no)" | tee "$record"
    exit 0 ;;
  auto|yes) ;;
  *)
    echo "install-tensorrt.sh: TENSORRT must be auto, yes or no, not '$mode'" >&2
    exit 2 ;;
esac
log=/tmp/tensorrt-install.log
if "$venv/bin/pip" install --no-cache-dir "$wheel[tensorrt]" >"$log" 2>&1 \
   && "$venv/bin/python" -c "import tensorrt" >>"$log" 2>&1; then
  version="$("$venv/bin/python" -c "import tensorrt; print(tensorrt.__version__)")"
  echo "TensorRT: installed, version $version" | tee "$record"
  exit 0
fi
if [ "$mode" = yes ]; then
  tail -n 20 "$log" >&2
  echo "TensorRT: could not be installed and TENSORRT=yes: failing the build" >&2
  exit 1
fi
# Undo a partial install (a stub package without its libraries would look installed).
"$venv/bin/pip" uninstall --yes --quiet tensorrt tensorrt-cu12 tensorrt-cu13 \
  tensorrt_cu12_libs tensorrt_cu12_bindings tensorrt_cu13_libs tensorrt_cu13_bindings \
  >/dev/null 2>&1 || true
# The stub packages say which library failed and why (usually: NVIDIA's index unreachable).
what="$(grep -m1 -o -E 'The installation of [^ ]+ for version [^ ]+ failed' "$log" || true)"
why="$(grep -m1 -o -E 'urlopen error [^>]*|No matching distribution found for [^ ]+' "$log" || true)"
reason="$(printf '%s%s%s' "$what" "${what:+${why:+: }}" "$why" | cut -c1-200)"
[ -n "$reason" ] || reason="$(grep -i -E 'error' "$log" | tail -n 1 | cut -c1-200 || true)"
echo "TensorRT: NOT installed: its packages could not be installed here (${reason:-see the build log}); TENSORRT=auto builds without it, and the builder reports TensorRT candidates SKIPPED" | tee "$record"
