// OpenBLAS, when this machine has it, found at load time rather than linked: the addon (and a
// prebuilt one shipped in the package) loads without it and then uses mote's own f32 matmul.
// MOTE_BLAS=0 in the environment skips it; the build option MOTE_BLAS=OFF compiles it out.
#include "blas.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "kernels.h"

#if !defined(MOTE_NO_BLAS) && !defined(_WIN32)
#include <dlfcn.h>
#endif

namespace mote::cpu {
namespace {

SgemmFn load_sgemm() {
#if defined(MOTE_NO_BLAS) || defined(_WIN32)
  return nullptr;
#else
  const char* env = std::getenv("MOTE_BLAS");
  if (env && (std::strcmp(env, "0") == 0 || std::strcmp(env, "OFF") == 0)) return nullptr;
  // libopenblas.so.0: the runtime name on Debian/Ubuntu/Fedora; libopenblas.so: a source install.
  for (const char* name : {"libopenblas.so.0", "libopenblas.so"}) {
    if (void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
      if (void* f = dlsym(h, "cblas_sgemm")) return reinterpret_cast<SgemmFn>(f);
      dlclose(h);
    }
  }
  return nullptr;
#endif
}

}  // namespace

const SgemmFn blas_sgemm = load_sgemm();

bool blas_loaded() { return blas_sgemm != nullptr; }

}  // namespace mote::cpu
