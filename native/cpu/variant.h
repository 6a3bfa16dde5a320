// Which namespace the kernel definitions live in. CMakeLists.txt (MOTE_CPU_DISPATCH) compiles the
// kernel files once per x86-64 level with MOTE_CPU_VARIANT=v1|v3|v4: each copy is then
// mote::cpu::<variant>::<kernel>, and dispatch.cc forwards mote::cpu::<kernel> to the copy this CPU
// runs. Elsewhere (binding.gyp, -march=native builds) the kernels are mote::cpu::<kernel> themselves.
// Header-only helpers (half.h) follow the kernels, so no inline function compiled for AVX-512 can
// be shared with (and picked by the linker for) the baseline copy.
#pragma once

#ifdef MOTE_CPU_VARIANT
#define MOTE_CPU_KERNEL_NS mote::cpu::MOTE_CPU_VARIANT
#else
#define MOTE_CPU_KERNEL_NS mote::cpu
#endif
