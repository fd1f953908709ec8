#!/usr/bin/env bash
# Compile `mtq windows scan --fix` output with nvcc, to check that the mechanical CUDA
# rewrites (__align__, asm volatile, int4, isinf, __forceinline__, unsigned, positional
# initializers, portable builtins, _USE_MATH_DEFINES) are still valid CUDA.
#
# Usage (on a Linux machine with nvcc; run from the repository root):
#   scripts/check_scan_fix_nvcc.sh               # synthetic sample covering every CUDA rewrite
#   scripts/check_scan_fix_nvcc.sh VLLM_TREE     # also real kernels of a pristine vLLM tree
#
# With VLLM_TREE, each sampled .cu file is compiled before and after `scan --fix` with torch's
# include dirs (PYTHON must import a CUDA build of torch). A file fails the check only if the
# pristine file compiles and the fixed one does not. Env: NVCC, PYTHON, ARCH (default sm_80).
set -euo pipefail

NVCC=${NVCC:-nvcc}
PYTHON=${PYTHON:-python3}
ARCH=${ARCH:-sm_80}
TREE=${1:-}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FLAGS=(-c -std=c++17 "-arch=$ARCH" --expt-relaxed-constexpr --expt-extended-lambda -o /dev/null)

command -v "$NVCC" >/dev/null || { echo "error: nvcc not found (set NVCC)" >&2; exit 2; }
scan_fix() { "$PYTHON" -m multi_turboquant.windows.scanner "$1" --fix --all-paths >/dev/null || true; }

# ---------------------------------------------------------------- synthetic sample
cat > "$WORK/sample.cu" <<'EOF'
#include <cmath>
#include <cstdint>
#include <limits>
#define MY_INLINE inline __attribute__((always_inline)) __device__
struct Params { const float* input; int64_t stride; };
struct Raw { unsigned short x; };
template <typename T>
__device__ static constexpr T kMax = T(448);
MY_INLINE float twice(float v) { return 2.f * v; }
template <const uint NUM_THREADS>
__global__ void sample(float* out, const float* lse, const uint n, Params p) {
  extern __shared__ __align__(16) __int128_t smem[];
  __shared__ float __attribute((aligned(128))) scores[NUM_THREADS];
  float v = lse[threadIdx.x];
  v = std::isinf(v) ? -std::numeric_limits<float>::infinity() : v;
  if (n > 0 and not std::isnan(v)) scores[threadIdx.x] = twice(v) * M_LOG2E + kMax<float>;
  __int64_t* words = reinterpret_cast<__int64_t*>(smem);
  unsigned int addr;
  __asm__ __volatile__("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }\n"
                       : "=r"(addr) : "l"(smem));
  out[threadIdx.x] = scores[threadIdx.x] + float(words[0] + addr + p.stride);
}
Params make(const float* in) { return Params{.input = in, .stride = 4}; }
Raw raw() { return Raw{.x = 17376}; }
int clz(unsigned x) { return __builtin_clz(x); }
template __global__ void sample<128>(float*, const float*, const unsigned, Params);
EOF
scan_fix "$WORK/sample.cu"
echo "== synthetic sample after scan --fix (kept: variable template, reported only)"
grep -n 'align__\|asm volatile\|int4\|isinf\|forceinline\|unsigned\|Params{\|mtq_clz\|_USE_MATH' "$WORK/sample.cu" | head -20
"$NVCC" "${FLAGS[@]}" "$WORK/sample.cu"
echo "ok: fixed synthetic sample compiles"

# ---------------------------------------------------------------- real kernels
[ -n "$TREE" ] || exit 0
[ -d "$TREE/csrc" ] || { echo "error: $TREE is not a vLLM source tree" >&2; exit 2; }
TORCH_INC=$("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join(include_paths("cuda")))')
PY_INC=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
DEFS=(-DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1 -DENABLE_FP8 -U__CUDA_NO_HALF_OPERATORS__
      -U__CUDA_NO_HALF_CONVERSIONS__ -U__CUDA_NO_BFLOAT16_CONVERSIONS__ -U__CUDA_NO_HALF2_OPERATORS__)
SAMPLE=(merge_attn_states.cu grouped_topk_kernels.cu gemm_kernels.cu topk.cu
        fused_layernorm_dynamic_per_token_quant.cu selective_scan_fwd.cu fused_qknorm_rope_kernel.cu)

compile() {  # compile CSRC_ROOT REL LOG: nvcc -c one file against that csrc copy's headers
  local includes=(-I"$1" -I"$1/libtorch_stable" -I"$PY_INC")
  for dir in $TORCH_INC; do includes+=(-I"$dir"); done
  "$NVCC" "${FLAGS[@]}" "${includes[@]}" "${DEFS[@]}" "$1/$2" >"$3" 2>&1
}

check() {  # check REL: 0 unless the pristine file compiles and the fixed one does not
  local log="$WORK/$(echo "$1" | tr / _).log"
  if ! compile "$WORK/pristine-csrc" "$1" "$log"; then
    echo "skip: pristine $1 does not compile with these flags:"; tail -3 "$log"; return 0
  fi
  if compile "$WORK/fixed-csrc" "$1" "$log"; then
    echo "ok: $1 compiles after scan --fix"
  else
    echo "FAIL: $1 compiles pristine but not after scan --fix"; cat "$log"; return 1
  fi
}

cp -r "$TREE/csrc" "$WORK/pristine-csrc"
cp -r "$TREE/csrc" "$WORK/fixed-csrc"
scan_fix "$WORK/fixed-csrc"
pids=()
for name in "${SAMPLE[@]}"; do
  while IFS= read -r src; do
    rel=${src#"$WORK/pristine-csrc/"}
    check "$rel" >"$WORK/$(echo "$rel" | tr / _).out" &  # files compile in parallel
    pids+=("$!:$rel")
  done < <(find "$WORK/pristine-csrc" -name "$name" -not -path '*/rocm/*' -not -path '*/cpu/*')
done
status=0
for entry in "${pids[@]}"; do
  wait "${entry%%:*}" || status=1
  cat "$WORK/$(echo "${entry#*:}" | tr / _).out"
done
exit $status
