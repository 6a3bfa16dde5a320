// Run-time choice of the kernels' SIMD level. A shipped (prebuilt) addon must run on every x86-64
// CPU, so CMakeLists.txt (MOTE_CPU_DISPATCH) compiles the kernel files three times: for x86-64
// (SSE2), x86-64-v3 (AVX2, FMA, F16C) and x86-64-v4 (AVX-512 F/BW/DQ/VL), into mote::cpu::v1/v3/v4.
// At load this file picks the best copy the CPU (and OS) supports, once; mote::cpu::<kernel> then
// forwards to it through one table. MOTE_CPU_VARIANT=x86-64|x86-64-v3 forces a lower level (tests,
// benchmarks); a level the CPU lacks is never chosen.
#include <cstdlib>
#include <cstring>

#include "kernels.h"

#ifdef MOTE_CPU_DISPATCH
#include "kernel_list.h"

namespace mote::cpu {

#define MOTE_DECLARE(ret, name, params, args) ret name params;
namespace v1 {
MOTE_CPU_KERNELS(MOTE_DECLARE)
}
namespace v3 {
MOTE_CPU_KERNELS(MOTE_DECLARE)
}
namespace v4 {
MOTE_CPU_KERNELS(MOTE_DECLARE)
}
#undef MOTE_DECLARE

namespace {

struct Table {
  const char* name;
#define MOTE_FIELD(ret, name, params, args) ret(*name) params;
  MOTE_CPU_KERNELS(MOTE_FIELD)
#undef MOTE_FIELD
};

#define MOTE_ENTRY_V1(ret, name, params, args) &v1::name,
#define MOTE_ENTRY_V3(ret, name, params, args) &v3::name,
#define MOTE_ENTRY_V4(ret, name, params, args) &v4::name,
const Table kTables[] = {
    {"x86-64", MOTE_CPU_KERNELS(MOTE_ENTRY_V1)},
    {"x86-64-v3", MOTE_CPU_KERNELS(MOTE_ENTRY_V3)},
    {"x86-64-v4", MOTE_CPU_KERNELS(MOTE_ENTRY_V4)},
};

// The compiler's own level checks (libgcc): they test CPUID and that the OS saves the AVX /
// AVX-512 registers (XGETBV), so a CPU with AVX-512 under an OS that disabled it gets v3.
int best_supported() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return 2;
  if (__builtin_cpu_supports("x86-64-v3")) return 1;
  return 0;
}

const Table* choose() {
  int level = best_supported();
  if (const char* want = std::getenv("MOTE_CPU_VARIANT")) {
    for (int i = 0; i < level; i++)
      if (std::strcmp(want, kTables[i].name) == 0) level = i;
  }
  return &kTables[level];
}

// Chosen while the addon loads (static initialisation), before any kernel can be called.
const Table* const kChosen = choose();

}  // namespace

#define MOTE_FORWARD(ret, name, params, args) \
  ret name params { return kChosen->name args; }
MOTE_CPU_KERNELS(MOTE_FORWARD)
#undef MOTE_FORWARD

const char* simd_variant() { return kChosen->name; }

}  // namespace mote::cpu

#else

namespace mote::cpu {
#ifdef MOTE_CPU_NATIVE
const char* simd_variant() { return "native"; }
#else
const char* simd_variant() { return "generic"; }
#endif
}  // namespace mote::cpu

#endif
