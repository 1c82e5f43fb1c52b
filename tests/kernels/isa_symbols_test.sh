#!/usr/bin/env bash
# The per-ISA kernel objects (kernels/cpu/isa/*.cc, compiled once per level)
# may define global or weak symbols only inside their own level's namespace.
# Anything else, say an inline function from a shared header emitted out of
# line, is one definition the linker keeps for the whole program: if it kept the
# AVX-512 copy, code meant for any CPU would carry AVX-512 instructions and die
# with SIGILL on an AVX2 machine. Arguments: the object files.
set -euo pipefail
bad=0
[[ $# -gt 0 ]] || { echo "no object files given"; exit 2; }
for obj in "$@"; do
  [[ -f "$obj" ]] || { echo "no object file '$obj'"; exit 2; }
  level="$(echo "$obj" | sed -n 's#.*deepshard_kernels_\([a-z0-9_]*\)\.dir/.*#\1#p')"
  [[ -n "$level" ]] || { echo "cannot tell the level of $obj"; exit 2; }
  while IFS= read -r line; do
    echo "$(basename "$obj") [$level]: symbol outside deepshard::cpu::$level: $line"
    bad=1
  done < <(nm -C --defined-only "$obj" | awk '$2 ~ /^[A-Z]$|^[uvw]$/' |
           grep -v " deepshard::cpu::${level}::" | grep -v " DW\.ref\.__gxx_personality_v0$" || true)
done
if [[ $bad -ne 0 ]]; then
  echo "FAILED: keep everything in kernels/cpu/isa/*.cc inside deepshard::cpu::DS_ISA_NS (see kernels/cpu/isa/simd.h)"
  exit 1
fi
echo "OK: $# objects, every global symbol in its level's namespace"
