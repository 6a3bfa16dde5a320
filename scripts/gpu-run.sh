#!/usr/bin/env bash
# The whole GPU run of issue 16, in one call of the device tool, every figure written under $WORK
# (default gpu-out/) and packed into $PACK after every step:
#   build   one build of the CUDA kernels (sm_90a) for both the C++ driver and the Node addon
#           (plain cmake; node-api-headers from the carry);
#   ctest   the C++ driver, every CUDA kernel against the CPU kernels, MOTE_REQUIRE_CUDA=1 (a
#           skipped CUDA is a failure) and MOTE_CUDA_SYNC=1 (a fault names its kernel);
#   node    the Node test suite with MOTE_REQUIRE_BACKENDS=cpu,cuda (webgpu too when Dawn finds
#           the GPU), MOTE_CUDA_SYNC=1;
#   bench   the benchmarks on cuda without MOTE_CUDA_SYNC (lora, train with its per-op profile and
#           the PyTorch baseline on the GPU, model, decode), then on webgpu when it found the GPU.
#
# Here first:  npm run build && node scripts/gpu-pack.mjs        (writes .device/, git-ignored)
# Then, one call of the device tool (carry [".device"], timeout_s 600):
#   DEADLINE=540 PACK=$OUT bash scripts/gpu-run.sh
# What comes back: $OUT/summary.txt (each step's exit status and seconds), $OUT/machine.txt (GPU,
# driver, nvcc, node, the WebGPU adapter) and $OUT/gpu-out.tar.xz (every log, bench/results JSON).
# The device tool returns at most 8 files, so everything else travels in the tarball.
#
# DEADLINE: seconds after which no step starts, and a running one is stopped (keep it under the
#   call's timeout_s, so the packing runs). A step also stops at its own cap (CAP_<step>).
# STEPS: which steps, in order (default "build ctest node bench"); the build runs when missing.
# BENCH: which benchmark runs, in order (default below); each is <suite>-<backend>.
set -u
cd "$(dirname "$0")/.."
WORK=${WORK:-gpu-out}
PACK=${PACK:-}
DEADLINE=${DEADLINE:-540}
STEPS=${STEPS:-"build ctest node bench"}
BENCH=${BENCH:-"lora-cuda train-cuda model-cuda decode-cuda lora-webgpu model-webgpu decode-webgpu"}
ARCH=${MOTE_CUDA_ARCH:-90a-real}
mkdir -p "$WORK/results"
summary="$WORK/summary.txt"
: > "$summary"
want() { [[ " $STEPS " == *" $1 "* ]]; }

pack() {
  [ -n "$PACK" ] || return 0
  mkdir -p "$PACK"
  cp "$summary" "$WORK/machine.txt" "$PACK/" 2> /dev/null
  tar -C "$WORK" -cJf "$PACK/gpu-out.tar.xz.tmp" . 2> /dev/null && mv "$PACK/gpu-out.tar.xz.tmp" "$PACK/gpu-out.tar.xz"
}
trap pack EXIT

# step NAME CAP COMMAND...: runs COMMAND with its output in $WORK/NAME.log, stopped at
# min(CAP, time to DEADLINE); a step with under 20 s left is not started (rc 125 in the summary).
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  ((left < cap)) && cap=$left
  if ((cap < 20)); then
    echo "$name rc=125 not started: ${left}s left before the deadline" >> "$summary"
    return 125
  fi
  local t0=$SECONDS
  echo "== $name (cap ${cap}s): $*" > "$WORK/$name.log"
  timeout --kill-after=10 "$cap" "$@" >> "$WORK/$name.log" 2>&1
  local rc=$?
  local why=""
  ((rc == 124 || rc == 137)) && why=" stopped at ${cap}s"
  echo "$name rc=$rc $((SECONDS - t0))s$why" >> "$summary"
  tail -n 4 "$WORK/$name.log"
  pack
  return $rc
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || echo "nvidia-smi failed"
  nvcc --version | tail -2 || echo "no nvcc"
  cmake --version | head -1
  echo "cores: $(nproc)"
} > "$WORK/machine.txt" 2>&1

# Node and node_modules from the carry
if [ -f .device/node.xz ] && [ ! -x .device/node ]; then
  xz -dc .device/node.xz > .device/node && chmod +x .device/node
  mkdir -p node_modules && tar -C node_modules -xJf .device/modules.tar.xz
  tar -xJf .device/dist.tar.xz
fi
export PATH="$PWD/.device:$PATH"
have_node=0
node --version > /dev/null 2>&1 && have_node=1
echo "node: $([ $have_node = 1 ] && node --version || echo missing)" >> "$WORK/machine.txt"

# Vulkan for Dawn: the loader from the carry when the machine has none; the NVIDIA ICD where the
# device tool's machines keep it.
if ! ldconfig -p 2> /dev/null | grep -q 'libvulkan.so.1' && [ -d .device/vulkan ]; then
  export LD_LIBRARY_PATH="$PWD/.device/vulkan${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "vulkan loader: from the carry" >> "$WORK/machine.txt"
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f $icd ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* > /dev/null 2>&1; then
  export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
  echo "vulkan ICD: $icd" >> "$WORK/machine.txt"
fi

build=build-gpu
addon=$build/mote.node
if want build || [ ! -f $addon ]; then
  cfg=(-DMOTE_TESTS=ON -DMOTE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_BUILD_TYPE=Release)
  # the addon too, when Node is here (CMakeLists.txt asks node for node-addon-api's folder)
  [ $have_node = 1 ] && cfg+=(-DCMAKE_JS_VERSION=manual -DCMAKE_JS_INC="$PWD/node_modules/node-api-headers/include"
    -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/$build")
  step configure "${CAP_configure:-120}" cmake -S . -B $build -G Ninja "${cfg[@]}" &&
    step build "${CAP_build:-300}" cmake --build $build -j "$(nproc)"
fi
export MOTE_ADDON_PATH="$PWD/$addon"

if want ctest; then
  MOTE_CUDA_SYNC=1 MOTE_REQUIRE_CUDA=1 step ctest "${CAP_ctest:-180}" ctest --test-dir $build --output-on-failure -j "$(nproc)"
  cp $build/Testing/Temporary/LastTest.log "$WORK/ctest-full.log" 2> /dev/null
fi

req=cpu,cuda
if [ $have_node = 1 ]; then
  timeout 120 node -e "import('./dist/src/index.js').then(async m => console.log(JSON.stringify(await m.probeBackends(), null, 1)))" > "$WORK/backends.json" 2>&1
  # webgpu is required only when Dawn found a hardware adapter
  node -e "const w = JSON.parse(require('fs').readFileSync(process.argv[1], 'utf8')).find((b) => b.kind === 'webgpu'); process.exit(w?.available && w.info?.software === false ? 0 : 1)" "$WORK/backends.json" 2> /dev/null &&
    req=cpu,cuda,webgpu
  echo "required backends: $req" >> "$WORK/machine.txt"
  grep -i -A8 '"webgpu"' "$WORK/backends.json" | head -12 >> "$WORK/machine.txt"
fi

if want node && [ $have_node = 1 ]; then
  # test files that need what the carry leaves out (a browser, the openai client, the real tokenizers, npm pack)
  skip='browser|serve|real_tokenizers|packaging|consumer|cli'
  files=$(ls dist/test/*.test.js | grep -Ev "/($skip)\.test\.js$")
  MOTE_CUDA_SYNC=1 MOTE_REQUIRE_BACKENDS=$req step node "${CAP_node:-300}" node --test --test-reporter=spec $files
fi

if want bench && [ $have_node = 1 ]; then
  for b in $BENCH; do
    suite=${b%-*} backend=${b##*-}
    [ "$backend" = webgpu ] && [[ $req != *webgpu* ]] && continue
    extra=()
    [ "$suite" = lora ] && extra=(--quick) # the decode shapes (T 1 and 64, 1 and 64 adapters); FULL_LORA=1 for all rows
    [ "$suite" = lora ] && [ "${FULL_LORA:-0}" = 1 ] && extra=()
    step "bench-$b" "${CAP_bench:-150}" node dist/bench/run.js --suite "$suite" --backend "$backend" "${extra[@]}" --out "$WORK/results/$backend.$suite.json"
  done
fi
cat "$summary"
