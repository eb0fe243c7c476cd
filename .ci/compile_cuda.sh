#!/usr/bin/env bash
# Compile every custom CUDA op without a GPU, so that a CUDA syntax or API error fails CI:
#   * each torch_utils/ops/*.cu with nvcc for sm_80 and sm_90, object files only (in a temp dir);
#   * each torch_utils/ops/*.cpp (the pybind bindings) with the host compiler, -fsyntax-only,
#     against torch's headers.
# Flags mirror torch's JIT build (torch.utils.cpp_extension: its C++ standard and COMMON_NVCC_FLAGS)
# plus torch_utils.custom_ops' own. With a CPU-only torch wheel, the CMake-generated
# c10/cuda/impl/cuda_cmake_macros.h is missing; a one-line stub (torch_utils/ops/_stub_include)
# stands in for it, here only. Skips (exit 0) only when nvcc is absent.
# Usage: .ci/compile_cuda.sh   (from anywhere; needs the python with torch on PATH)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v nvcc >/dev/null 2>&1; then
  echo "compile_cuda: nvcc not found on PATH; skipping the CUDA compile check"
  exit 0
fi
PYTHON=${PYTHON:-python}

# torch include paths, the python include, the C++ standard torch's JIT uses, torch's nvcc flags
# and ours, and the C++ ABI flag — all from the python that runs the tests.
mapfile -t PYINFO < <("$PYTHON" - <<'PY'
import inspect, sysconfig
import torch
import torch.utils.cpp_extension as ce
from torch_utils import custom_ops
std = "c++20" if "-std=c++20" in inspect.getsource(ce) else "c++17"
print(" ".join(ce.include_paths()))
print(sysconfig.get_paths()["include"])
print(std)
print(" ".join(ce.COMMON_NVCC_FLAGS + list(custom_ops.EXTRA_CUDA_CFLAGS)))
print(" ".join(list(custom_ops.EXTRA_CFLAGS) + [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]))
PY
)
read -r -a TORCH_INC <<<"${PYINFO[0]}"
PY_INC=${PYINFO[1]}
STD=${PYINFO[2]}
read -r -a NVCC_FLAGS <<<"${PYINFO[3]}"
read -r -a HOST_FLAGS <<<"${PYINFO[4]}"

INCLUDES=()
for dir in "${TORCH_INC[@]}"; do INCLUDES+=(-I "$dir"); done
INCLUDES+=(-I "$PY_INC")
if [[ ! -f "${TORCH_INC[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  INCLUDES+=(-I "$PWD/torch_utils/ops/_stub_include")  # CPU-only wheel: stand-in for the generated header
fi

# The CUDA runtime headers for the host compiler (the bindings include c10/cuda/CUDAStream.h).
CUDA_INC=""
NVCC_REAL=$(readlink -f "$(command -v nvcc)")
for root in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "$(dirname "$(dirname "$NVCC_REAL")")" /usr/local/cuda; do
  if [[ -n "$root" && -f "$root/include/cuda_runtime_api.h" ]]; then CUDA_INC="$root/include"; break; fi
done
if [[ -z "$CUDA_INC" ]]; then
  # nvcc may be a wrapper script: ask it where its toolkit lives.
  top=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
  [[ -n "$top" && -f "$top/include/cuda_runtime_api.h" ]] && CUDA_INC="$top/include"
fi
CXX=${CXX:-c++}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

compile_cu() {  # $1 source, $2 log
  local obj
  obj="$TMP/$(basename "$1").o"
  nvcc -c "-std=$STD" "${NVCC_FLAGS[@]}" -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    "${INCLUDES[@]}" -o "$obj" "$1" >"$2" 2>&1
}

compile_cpp() {  # $1 source, $2 log
  "$CXX" -fsyntax-only "-std=$STD" "${HOST_FLAGS[@]}" -DTORCH_EXTENSION_NAME=compile_check \
    -DTORCH_API_INCLUDE_EXTENSION_H "${INCLUDES[@]}" -I "$CUDA_INC" "$1" >"$2" 2>&1
}

elapsed() {  # seconds since $1 (a `date +%s.%N` stamp), one decimal
  awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

run_one() {  # $1 kind (cu|cpp), $2 source; prints one line, leaves the status in $TMP/<name>.rc
  local name log start rc
  name=$(basename "$2")
  log="$TMP/$name.log"
  start=$(date +%s.%N)
  rc=0
  "compile_$1" "$2" "$log" || rc=$?
  printf '%-8s %-28s %6.1fs\n' "$([[ $rc -eq 0 ]] && echo ok || echo FAILED)" "$name" "$(elapsed "$start")"
  if [[ $rc -ne 0 ]]; then cat "$log"; fi
  echo "$rc" >"$TMP/$name.rc"
}

shopt -s nullglob
CU=(torch_utils/ops/*.cu)
CPP=(torch_utils/ops/*.cpp)
if [[ ${#CU[@]} -eq 0 ]]; then
  echo "compile_cuda: no .cu sources found under torch_utils/ops" >&2
  exit 1
fi
if [[ -z "$CUDA_INC" && ${#CPP[@]} -gt 0 ]]; then
  echo "compile_cuda: cannot find the CUDA include folder (cuda_runtime_api.h); set CUDA_HOME" >&2
  exit 1
fi

echo "compile_cuda: $(nvcc --version | tail -n 1); host $("$CXX" --version | head -n 1); -std=$STD"
JOBS=${JOBS:-$(nproc)}
total_start=$(date +%s.%N)
# The binding checks (~30 CPU-s each: torch/extension.h) go first so the job slots pack well.
for src in "${CPP[@]}" "${CU[@]}"; do
  while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do wait -n || true; done
  run_one "${src##*.}" "$src" &
done
wait

failed=0
for src in "${CU[@]}" "${CPP[@]}"; do
  rc=$(cat "$TMP/$(basename "$src").rc" 2>/dev/null || echo 1)
  [[ "$rc" -eq 0 ]] || failed=$((failed + 1))
done
printf 'compile_cuda: %d file(s), %d failed, %ss\n' $((${#CU[@]} + ${#CPP[@]})) "$failed" "$(elapsed "$total_start")"
[[ $failed -eq 0 ]]
