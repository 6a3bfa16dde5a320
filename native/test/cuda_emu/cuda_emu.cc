// The CUDA emulator's scheduler and runtime API (see cuda_emu.h for what it checks and what not).
// A fiber starts with makecontext/swapcontext and switches afterwards with _setjmp/_longjmp,
// which do not save the signal mask (swapcontext makes a system call per switch).
#undef _FORTIFY_SOURCE  // its longjmp check rejects a jump to another stack
#include "cuda_emu.h"

#include <setjmp.h>
#include <signal.h>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace mote_emu {

thread_local Thread* g_thread = nullptr;
thread_local Block* g_block = nullptr;

constexpr size_t kPage = 4096;

namespace {

thread_local cudaError_t g_last_error = cudaSuccess;

enum State { READY, AT_BARRIER, AT_SHUFFLE, DONE };

constexpr size_t kStack = 256 * 1024;  // per fiber; the lowest page is a guard

struct Fiber {
  Thread t;
  ucontext_t ctx;
  jmp_buf jb;
  bool started = false;
  State state = READY;
  unsigned char* stack = nullptr;
  // where it waits
  const char* file = nullptr;
  int line = 0;
  int kind = 0, arg = 0, width = 32;
  unsigned mask = 0;
  uint64_t value = 0;
};

struct Run {
  const char* kernel;
  Block block;
  std::vector<Fiber> fibers;
  std::vector<unsigned char> shared;
  ucontext_t sched;
  jmp_buf sched_jb;
  void (*body)(void*);
  void* ctx;
  Fiber* current = nullptr;
  bool reverse = false;  // run the fibers last to first between switch points
  std::string error;     // set by a fiber that threw
};
thread_local Run* g_run = nullptr;

// Stacks are kept between launches (mmap'ed once, guard page below each).
thread_local std::vector<unsigned char*> g_stacks;
unsigned char* stack_for(size_t i) {
  while (g_stacks.size() <= i) {
    void* p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuda emulator: cannot map a fiber stack");
    mprotect(p, kPage, PROT_NONE);
    g_stacks.push_back(static_cast<unsigned char*>(p));
  }
  return g_stacks[i];
}

void fiber_main() {
  Run* r = g_run;
  try {
    r->body(r->ctx);
  } catch (const std::exception& ex) {
    if (r->error.empty()) r->error = ex.what();
  }
  r->current->state = DONE;
  _longjmp(r->sched_jb, 1);
}

void yield_to_scheduler() {
  Run* r = g_run;
  Fiber* f = r->current;
  if (_setjmp(f->jb) == 0) _longjmp(r->sched_jb, 1);
  g_thread = &f->t;  // resumed
}

// Watchdog: a launch that runs longer than the limit is an unbounded loop.
std::atomic<int64_t> g_launch_start{0};  // steady-clock ms, 0 = none running
std::atomic<const char*> g_launch_name{nullptr};
int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
// A fault inside a launch (a read or write outside the buffers) names the kernel before the
// process dies.
void on_fault(int sig) {
  const char* name = g_launch_start.load() ? g_launch_name.load() : nullptr;
  const char* a = "cuda emulator: memory fault in kernel ";
  (void)!write(2, a, std::strlen(a));
  if (name)
    (void)!write(2, name, std::strlen(name));
  else
    (void)!write(2, "(none: outside a launch)", 24);
  const char* b = " (an access outside its buffers?)\n";
  (void)!write(2, b, std::strlen(b));
  signal(sig, SIG_DFL);
  raise(sig);
}

void start_watchdog() {
  static std::once_flag once;
  std::call_once(once, [] {
    static unsigned char alt[64 * 1024];  // the fault may be a fiber's stack overflow
    stack_t ss{};
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    double limit = 120;
    if (const char* s = std::getenv("MOTE_EMU_TIMEOUT")) limit = std::atof(s);
    std::thread([limit] {
      for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
        const int64_t t0 = g_launch_start.load();
        if (t0 && double(now_ms() - t0) > limit * 1000) {
          std::fprintf(stderr, "cuda emulator: kernel %s did not finish within %g s (an unbounded loop?)\n",
                       g_launch_name.load(), limit);
          std::fflush(stdout);
          _exit(3);
        }
      }
    }).detach();
  });
}

std::string where(const Fiber& f) {
  const char* base = f.file ? std::strrchr(f.file, '/') : nullptr;
  return std::string(base ? base + 1 : (f.file ? f.file : "?")) + ":" + std::to_string(f.line);
}

std::string thread_name(const Fiber& f) {
  return "thread (" + std::to_string(f.t.idx.x) + "," + std::to_string(f.t.idx.y) + "," + std::to_string(f.t.idx.z) +
         ")";
}

[[noreturn]] void fail(const Run& r, const std::string& what) {
  const Block& b = r.block;
  throw std::runtime_error("cuda emulator: kernel " + std::string(r.kernel) + ", block (" + std::to_string(b.idx.x) +
                           "," + std::to_string(b.idx.y) + "," + std::to_string(b.idx.z) + "): " + what);
}

// Resolves the shuffles whose lanes have all arrived; returns whether any did.
bool resolve_shuffles(Run& r) {
  bool any = false;
  const size_t n = r.fibers.size();
  for (size_t w0 = 0; w0 < n; w0 += 32) {
    const size_t w1 = std::min(n, w0 + 32);
    Fiber* first = nullptr;
    bool all = true;
    for (size_t i = w0; i < w1; i++) {
      Fiber& f = r.fibers[i];
      if (f.state == AT_SHUFFLE && !first) first = &f;
    }
    if (!first) continue;
    const unsigned mask = first->mask;
    for (size_t i = w0; i < w1; i++)
      if ((mask >> (i - w0)) & 1u) all = all && r.fibers[i].state == AT_SHUFFLE;
    if (!all) continue;
    if (w0 + 32 > n && (mask >> (n - w0)) != 0)
      fail(r, "shuffle at " + where(*first) + " names lanes past the end of the block (mask " + std::to_string(mask) +
                  ")");
    uint64_t out[32];
    for (size_t i = w0; i < w1; i++) {
      const int lane = int(i - w0);
      if (!((mask >> lane) & 1u)) continue;
      Fiber& f = r.fibers[i];
      if (f.mask != mask || f.kind != first->kind || f.line != first->line || f.file != first->file)
        fail(r, "lanes of one warp meet at different shuffles (" + where(*first) + " and " + where(f) + ")");
      const int width = f.width, base = lane - lane % width, in = lane % width;
      int src = lane;
      switch (f.kind) {
        case 0:
          src = base + ((in ^ f.arg) < width ? (in ^ f.arg) : in);
          break;
        case 1:
          src = in + f.arg < width ? lane + f.arg : lane;
          break;
        case 2:
          src = in - f.arg >= 0 ? lane - f.arg : lane;
          break;
        default:
          src = base + ((f.arg % width) + width) % width;
          break;
      }
      if (!((mask >> src) & 1u))
        fail(r, "shuffle at " + where(f) + " reads lane " + std::to_string(src) + ", not in the mask");
      out[lane] = r.fibers[w0 + src].value;
    }
    for (size_t i = w0; i < w1; i++)
      if ((mask >> (i - w0)) & 1u) {
        r.fibers[i].value = out[i - w0];
        r.fibers[i].state = READY;
      }
    any = true;
  }
  return any;
}

void run_block(Run& r) {
  const size_t n = r.fibers.size();
  for (size_t i = 0; i < n; i++) {
    Fiber& f = r.fibers[i];
    f.state = READY;
    f.file = nullptr;
    f.line = 0;
    f.started = false;
  }
  size_t done = 0;
  for (;;) {
    for (size_t j = 0; j < n; j++) {
      Fiber& f = r.fibers[r.reverse ? n - 1 - j : j];
      if (f.state != READY) continue;
      r.current = &f;
      g_thread = &f.t;
      if (_setjmp(r.sched_jb) == 0) {
        if (f.started) _longjmp(f.jb, 1);
        f.started = true;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack + kPage;
        f.ctx.uc_stack.ss_size = kStack - kPage;
        f.ctx.uc_link = nullptr;  // fiber_main never returns
        makecontext(&f.ctx, fiber_main, 0);
        swapcontext(&r.sched, &f.ctx);
      }
      if (!r.error.empty()) fail(r, thread_name(f) + " threw: " + r.error);
      if (f.state == DONE) done++;
    }
    if (done == n) return;
    if (resolve_shuffles(r)) continue;
    // nothing ready: a barrier every live thread has reached releases, anything else is a deadlock
    const Fiber* waiting = nullptr;
    const Fiber* exited = nullptr;
    const Fiber* other = nullptr;
    for (const Fiber& f : r.fibers) {
      if (f.state == AT_BARRIER && !waiting) waiting = &f;
      if (f.state == DONE && !exited) exited = &f;
      if (f.state == AT_SHUFFLE && !other) other = &f;
    }
    if (other)
      fail(r, thread_name(*other) + " waits at the shuffle at " + where(*other) + " for lanes that never reach it" +
                  (waiting ? " (some wait at the barrier at " + where(*waiting) + ")" : std::string()));
    if (exited)
      fail(r, thread_name(*waiting) + " waits at the barrier at " + where(*waiting) + " that " + thread_name(*exited) +
                  " never reaches (it exited)");
    for (const Fiber& f : r.fibers)
      if (f.line != waiting->line || f.file != waiting->file)
        fail(r, "threads wait at different barriers (" + where(*waiting) + " and " + where(f) + ")");
    for (Fiber& f : r.fibers) f.state = READY;
  }
}

}  // namespace

void syncthreads(const char* file, int line) {
  Fiber* f = g_run->current;
  f->state = AT_BARRIER;
  f->file = file;
  f->line = line;
  yield_to_scheduler();
}

uint64_t shuffle(const char* file, int line, int kind, unsigned mask, uint64_t value, int arg, int width) {
  Fiber* f = g_run->current;
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail(*g_run, "shuffle width " + std::to_string(width) + " is not a power of two ≤ 32");
  const unsigned lane = unsigned(f - g_run->fibers.data()) % 32;
  if (!((mask >> lane) & 1u)) fail(*g_run, thread_name(*f) + " calls a shuffle whose mask leaves it out");
  f->state = AT_SHUFFLE;
  f->kind = kind;
  f->mask = mask;
  f->value = value;
  f->arg = arg;
  f->width = width;
  f->file = file;
  f->line = line;
  yield_to_scheduler();
  return f->value;
}

void run_grid(const char* kernel, dim3 grid, dim3 block, size_t shmem, void (*body)(void*), void* ctx) {
  const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 ||
      threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || shmem > 48 * 1024) {
    if (std::getenv("MOTE_EMU_VERBOSE"))
      std::fprintf(stderr, "cuda emulator: %s: invalid configuration grid (%u,%u,%u) block (%u,%u,%u) shmem %zu\n",
                   kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z, shmem);
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (g_run) throw std::runtime_error(std::string("cuda emulator: kernel ") + kernel + " launched from device code");
  start_watchdog();
  Run r;
  r.kernel = kernel;
  // Every other launch runs a block's threads in the opposite order between barriers: a read of
  // shared memory that a missing __syncthreads leaves racing then differs between two runs of
  // the same call (the driver compares reruns bit for bit).
  static thread_local unsigned long long launches = 0;
  r.reverse = (launches++ & 1) != 0;
  r.body = body;
  r.ctx = ctx;
  r.block.grid = grid;
  r.block.dim = block;
  r.fibers.resize(threads);
  for (size_t i = 0; i < threads; i++) {
    Fiber& f = r.fibers[i];
    f.t.idx = {unsigned(i % block.x), unsigned(i / block.x % block.y), unsigned(i / block.x / block.y)};
    f.stack = stack_for(i);
  }
  r.shared.resize(shmem + 16);
  r.block.dynamic_shared = r.shared.data();
  g_launch_name = kernel;
  g_launch_start = now_ms();
  g_run = &r;
  g_block = &r.block;
  try {
    for (unsigned z = 0; z < grid.z; z++)
      for (unsigned y = 0; y < grid.y; y++)
        for (unsigned x = 0; x < grid.x; x++) {
          r.block.idx = {x, y, z};
          // dynamic shared memory starts as NaN bytes: a read before a write shows in the results
          std::memset(r.shared.data(), 0xff, r.shared.size());
          run_block(r);
        }
  } catch (...) {
    g_run = nullptr;
    g_block = nullptr;
    g_thread = nullptr;
    g_launch_start = 0;
    throw;
  }
  g_run = nullptr;
  g_block = nullptr;
  g_thread = nullptr;
  g_launch_start = 0;
}

}  // namespace mote_emu

// ---- runtime API -------------------------------------------------------------

using mote_emu::g_last_error;
using mote_emu::kPage;

cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    case cudaErrorNotSupported:
      return "operation not supported";
  }
  return "unknown error";
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "mote CPU emulation");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 1;
  p->totalGlobalMem = size_t(1) << 32;
  return cudaSuccess;
}
// A buffer ends (256-byte aligned, as cudaMalloc aligns) just below an inaccessible page, with
// another below its start: a read or write a little past either end faults.
namespace {
std::mutex g_alloc_mutex;
std::unordered_map<void*, std::pair<void*, size_t>> g_allocs;  // pointer -> mapping
}  // namespace
cudaError_t cudaMalloc(void** p, size_t bytes) {
  const size_t size = (bytes + 255) / 256 * 256, span = (size + kPage - 1) / kPage * kPage + 2 * kPage;
  void* m = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return cudaErrorMemoryAllocation;
  unsigned char* base = static_cast<unsigned char*>(m);
  mprotect(base, kPage, PROT_NONE);
  mprotect(base + span - kPage, kPage, PROT_NONE);
  *p = base + span - kPage - size;
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  g_allocs[*p] = {m, span};
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  auto it = g_allocs.find(p);
  if (it == g_allocs.end()) return cudaErrorInvalidValue;
  munmap(it->second.first, it->second.second);
  g_allocs.erase(it);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind k, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, k);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) { return cudaMemset(dst, value, bytes); }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
