#!/usr/bin/env bash
# The whole GPU run of issue 16, in order, every figure written under $OUT (default gpu-out/):
#   1. the C++ driver with the CUDA kernels (sm_90a) against the CPU kernels, MOTE_REQUIRE_CUDA=1
#      (a skipped CUDA is a failure) and MOTE_CUDA_SYNC=1 (a fault names its kernel);
#   2. the addon with CUDA, built with plain cmake (no cmake-js: node-api-headers from the carry);
#   3. the Node test suite with MOTE_REQUIRE_BACKENDS=cpu,cuda (webgpu too when Dawn finds the GPU);
#   4. the benchmarks on cuda (lora, model, decode, train with the PyTorch baseline on the GPU),
#      and on webgpu when it found the GPU.
# Needs .device/ from `node scripts/gpu-pack.mjs` (Node, node_modules, dist). Each step logs to
# $OUT/<step>.log and the script goes on after a failure; $OUT/summary.txt lists every step's
# exit status. STEPS="1 3" runs only those steps (the addon, step 2, is rebuilt when missing).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
STEPS=${STEPS:-"1 2 3 4"}
ARCH=${MOTE_CUDA_ARCH:-90a-real}
summary="$OUT/summary.txt"
: > "$summary"
want() { [[ " $STEPS " == *" $1 "* ]]; }
step() { # name, command...
  local name=$1
  shift
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$OUT/$name.log"
  "$@" >> "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" >> "$summary"
  tail -n 5 "$OUT/$name.log"
  return $rc
}

{ nvidia-smi || true; nvcc --version || true; cmake --version | head -1; } > "$OUT/machine.txt" 2>&1

# Node and node_modules from the carry
if [ -f .device/node.xz ] && [ ! -x .device/node ]; then
  xz -dc .device/node.xz > .device/node && chmod +x .device/node
  mkdir -p node_modules && tar -C node_modules -xJf .device/modules.tar.xz
  tar -xJf .device/dist.tar.xz
fi
export PATH="$PWD/.device:$PATH"
have_node=0
command -v node > /dev/null && node --version > /dev/null 2>&1 && have_node=1
echo "node: $([ $have_node = 1 ] && node --version || echo missing)" >> "$OUT/machine.txt"

export MOTE_CUDA_SYNC=1
if want 1; then
  step ctest-build cmake -S . -B build-gpu-tests -G Ninja -DMOTE_TESTS=ON -DMOTE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_BUILD_TYPE=Release &&
    step ctest-build2 cmake --build build-gpu-tests -j "$(nproc)" &&
    MOTE_REQUIRE_CUDA=1 step ctest ctest --test-dir build-gpu-tests --output-on-failure
  cp build-gpu-tests/Testing/Temporary/LastTest.log "$OUT/ctest-full.log" 2> /dev/null || true
fi

addon=build-gpu-addon/mote.node
if [ $have_node = 1 ] && { want 2 || { [ ! -f $addon ] && { want 3 || want 4; }; }; }; then
  step addon-build cmake -S . -B build-gpu-addon -G Ninja -DMOTE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_JS_VERSION=manual -DCMAKE_JS_INC="$PWD/node_modules/node-api-headers/include" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build-gpu-addon" &&
    step addon-build2 cmake --build build-gpu-addon -j "$(nproc)" --target mote
fi
export MOTE_ADDON_PATH="$PWD/$addon"

if [ $have_node = 1 ]; then
  node -e "import('./dist/src/index.js').then(async m => console.log(JSON.stringify(await m.probeBackends(), null, 1)))" > "$OUT/backends.json" 2>&1
  req=cpu,cuda
  grep -q '"webgpu"' "$OUT/backends.json" && grep -A3 '"webgpu"' "$OUT/backends.json" | grep -q '"available": true' &&
    ! grep -A6 '"webgpu"' "$OUT/backends.json" | grep -qi 'swiftshader\|llvmpipe' && req=cpu,cuda,webgpu
  echo "required backends: $req" >> "$OUT/machine.txt"
fi

if want 3 && [ $have_node = 1 ]; then
  # test files that need what the carry leaves out (a browser, the openai client, the real tokenizers, npm pack)
  skip='browser|serve|real_tokenizers|packaging|consumer|cli'
  files=$(ls dist/test/*.test.js | grep -Ev "/($skip)\.test\.js$")
  MOTE_REQUIRE_BACKENDS=$req step node-tests node --test --test-reporter=spec $files
fi

if want 4 && [ $have_node = 1 ]; then
  mkdir -p "$OUT/results"
  for s in lora model decode; do
    step "bench-$s-cuda" node dist/bench/run.js --suite $s --backend cuda --out "$OUT/results/cuda.$s.json"
  done
  step bench-train-cuda node dist/bench/run.js --suite train --backend cuda --out "$OUT/results/cuda.train.json"
  if [[ $req == *webgpu* ]]; then
    for s in lora model decode; do
      step "bench-$s-webgpu" node dist/bench/run.js --suite $s --backend webgpu --full --out "$OUT/results/webgpu.$s.json"
    done
  fi
fi
cat "$summary"
