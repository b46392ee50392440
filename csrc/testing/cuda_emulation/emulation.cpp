// The host emulation of CUDA: the scheduler of blocks and threads, the
// fibers, the launch checks and the runtime functions (see emulation.h).
#include "emulation.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace emu {
namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "\nCUDA EMULATION ERROR: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

std::string dims(dim3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// ---------------------------------------------------------------------------
// Fibers: one per thread of a block, on stacks reused by every block.
//
// A fiber is a stack and a saved stack pointer; a switch saves the
// callee-saved registers and the floating-point control words on one stack
// and restores them from the other (emu_switch below, x86-64 System V). Not
// swapcontext: glibc's swapcontext makes a signal-mask system call on every
// switch (0.8 us each on our VM, and a reduction block switches thousands of
// times), and ASan's swapcontext interceptor clears the shadow of the whole
// target stack each time. ASan is told about every switch
// (__sanitizer_start/finish_switch_fiber), and a reused stack is unpoisoned
// before a new fiber starts on it.

#if !defined(__x86_64__)
#error "the CUDA emulation's fibers are written for x86-64"
#endif

constexpr size_t kStackBytes = 128 * 1024;
constexpr int kMaxThreads = 1024;

enum class Wait { kNone, kBlock, kWarp };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack = nullptr;
  bool done = false;
  Wait wait = Wait::kNone;
  uint3 tid{0, 0, 0};
  // Its value in the last two warp exchanges. Double-buffered, so that an
  // exchange needs one barrier: a lane reuses a buffer only after passing the
  // next barrier, which every lane reaches only after reading this one.
  alignas(16) unsigned char slot[2][16];
};

struct Block {
  std::vector<Fiber> fibers;
  void* scheduler_sp = nullptr;
  const std::function<void()>* body = nullptr;
  int current = -1;
  std::vector<uint64_t> warp_generation;
  bool cooperative = false;  // some thread used a barrier or a shuffle
  bool on_fibers = false;
  int threads = 0;
#if EMU_ASAN
  const void* main_bottom = nullptr;
  size_t main_size = 0;
#endif
};

thread_local Block* g_block = nullptr;
thread_local LaunchStats g_stats;
thread_local uint64_t g_random = 0x9E3779B97F4A7C15ull;

uint64_t next_random() {
  g_random ^= g_random << 13;
  g_random ^= g_random >> 7;
  g_random ^= g_random << 17;
  return g_random;
}

void set_thread(const uint3& tid) { threadIdx = tid; }

}  // namespace
}  // namespace emu

extern "C" void emu_switch(void** save_sp, void* load_sp);
extern "C" void emu_fiber_start();
extern "C" [[noreturn]] void emu_fiber_main(int64_t index);

// emu_switch(save, load): push the callee-saved registers and MXCSR / the x87
// control word, store rsp in *save, load rsp from `load`, pop the same.
// emu_fiber_start: where a new fiber's first switch returns to; its index is
// in r12.
asm(R"(
  .text
  .globl emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch

  .globl emu_fiber_start
  .type emu_fiber_start, @function
emu_fiber_start:
  movq %r12, %rdi
  call emu_fiber_main
  ud2
  .size emu_fiber_start, .-emu_fiber_start
)");

namespace emu {
namespace {

// Switches from the scheduler into fiber `index` and back.
void resume(Block& b, int index) {
  Fiber& f = b.fibers[index];
  b.current = index;
  set_thread(f.tid);
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
  emu_switch(&b.scheduler_sp, f.sp);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  b.current = -1;
}

// From the current fiber back to the scheduler (until it resumes us).
void yield(Block& b, bool exiting) {
  Fiber& f = b.fibers[b.current];
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, b.main_bottom, b.main_size);
#endif
  emu_switch(&f.sp, b.scheduler_sp);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &b.main_bottom, &b.main_size);
#endif
  (void)exiting;
}

// A new fiber on f's stack that starts in emu_fiber_main(index): below the
// address of emu_fiber_start (entered with rsp 16-byte aligned, as after a
// call's return address is popped), the frame emu_switch pops: the control
// words and six registers, r12 = index.
void init_fiber(Fiber& f, int index) {
  f.done = false;
  f.wait = Wait::kNone;
#if EMU_ASAN
  __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
  const uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + kStackBytes) & ~uintptr_t{15};
  uint64_t* ret_slot = reinterpret_cast<uint64_t*>(top - 24);
  *ret_slot = reinterpret_cast<uint64_t>(&emu_fiber_start);
  uint64_t* frame = ret_slot - 7;  // control words, r15, r14, r13, r12, rbx, rbp
  uint32_t mxcsr;
  uint16_t fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  std::memcpy(frame, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(frame) + 4, &fcw, 2);
  for (int r = 1; r <= 6; ++r) frame[r] = 0;
  frame[4] = static_cast<uint64_t>(index);  // r12
  f.sp = frame;
}

Block& block_of_current_thread(const char* what) {
  Block* b = g_block;
  if (b == nullptr) fail(std::string(what) + " called outside a kernel");
  b->cooperative = true;
  if (!b->on_fibers) {
    fail(std::string(what) +
         " in a block that runs without fibers: the kernel's first block used no barrier or "
         "shuffle but block " + dims(dim3(blockIdx.x, blockIdx.y, blockIdx.z)) +
         " does (set FUSEDOPT_EMU_FIBERS=all)");
  }
  return *b;
}

// Waits at a barrier until the scheduler releases it.
void wait_at(Block& b, Wait kind) {
  b.fibers[b.current].wait = kind;
  yield(b, false);
}

void run_block_on_fibers(Block& b) {
  const int n = b.threads;
  for (int i = 0; i < n; ++i) init_fiber(b.fibers[i], i);
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  const int warps = (n + 31) / 32;
  b.warp_generation.assign(warps, 0);
  while (true) {
    // One round: every runnable fiber runs until it finishes or waits, in a
    // fresh random order.
    for (int i = n - 1; i > 0; --i) std::swap(order[i], order[next_random() % (i + 1)]);
    bool ran = false;
    for (int i : order) {
      Fiber& f = b.fibers[i];
      if (f.done || f.wait != Wait::kNone) continue;
      resume(b, i);
      ran = true;
    }
    // Release the barriers every thread has reached.
    int live = 0;
    int at_block = 0;
    for (int i = 0; i < n; ++i) {
      const Fiber& f = b.fibers[i];
      if (f.done) continue;
      ++live;
      if (f.wait == Wait::kBlock) ++at_block;
    }
    if (live == 0) break;
    bool released = false;
    if (at_block == live) {
      if (live != n) {
        fail("__syncthreads reached by " + std::to_string(live) + " of " + std::to_string(n) +
             " threads of block " + dims(dim3(blockIdx.x, blockIdx.y, blockIdx.z)) +
             " (the others have returned): a divergent barrier");
      }
      for (int i = 0; i < n; ++i) b.fibers[i].wait = Wait::kNone;
      released = true;
    }
    for (int w = 0; w < warps; ++w) {
      const int end = std::min(n, w * 32 + 32);
      int waiting = 0;
      for (int l = w * 32; l < end; ++l) waiting += b.fibers[l].wait == Wait::kWarp ? 1 : 0;
      if (waiting == 0 || waiting != end - w * 32) continue;
      ++b.warp_generation[w];
      for (int l = w * 32; l < end; ++l) b.fibers[l].wait = Wait::kNone;
      released = true;
    }
    if (!ran && !released) {
      std::string state;
      for (int i = 0; i < n; ++i) {
        const Fiber& f = b.fibers[i];
        state += f.done ? 'd' : f.wait == Wait::kBlock ? 'b' : f.wait == Wait::kWarp ? 'w' : 'r';
      }
      fail("deadlock in block " + dims(dim3(blockIdx.x, blockIdx.y, blockIdx.z)) +
           ": threads (d done, b at __syncthreads, w at a shuffle): " + state);
    }
  }
}

bool all_fibers() {
  const char* env = std::getenv("FUSEDOPT_EMU_FIBERS");
  return env != nullptr && std::string(env) == "all";
}

Block& block_storage() {
  static thread_local Block b;
  if (b.fibers.empty()) {
    b.fibers.resize(kMaxThreads);
    for (Fiber& f : b.fibers) {
      void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
      if (p == MAP_FAILED) fail("mmap of a fiber stack failed");
      f.stack = static_cast<char*>(p);
    }
  }
  return b;
}

thread_local cudaError_t g_last_error = cudaSuccess;

}  // namespace

LaunchStats& stats() { return g_stats; }

cudaError_t func_attributes(cudaFuncAttributes* attr) {
  const char* no_code = std::getenv("FUSEDOPT_EMU_NO_KERNEL_CODE");
  if (no_code != nullptr && std::string(no_code) == "1") return cudaErrorInvalidDeviceFunction;
  std::memset(attr, 0, sizeof(*attr));
  const char* threads = std::getenv("FUSEDOPT_EMU_MAX_THREADS");
  attr->maxThreadsPerBlock = threads != nullptr ? std::atoi(threads) : 1024;
  return cudaSuccess;
}

int lane_id() {
  const int linear = static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  return linear % 32;
}

void syncthreads() { wait_at(block_of_current_thread("__syncthreads"), Wait::kBlock); }

void warp_exchange(unsigned mask, const void* value, void* out, size_t bytes, int src_lane) {
  Block& b = block_of_current_thread("a warp shuffle");
  if (mask != 0xffffffffu) fail("warp shuffles with a partial mask are not emulated");
  if (b.threads % 32 != 0) fail("a warp shuffle in a block whose size is not a multiple of 32");
  const int warp = b.current / 32;
  const int buffer = static_cast<int>(b.warp_generation[warp] % 2);
  std::memcpy(b.fibers[b.current].slot[buffer], value, bytes);
  wait_at(b, Wait::kWarp);
  std::memcpy(out, b.fibers[warp * 32 + src_lane].slot[buffer], bytes);
}

cudaError_t check_launch(dim3 grid, dim3 block, size_t shared_bytes, size_t param_bytes,
                         cudaStream_t /*stream*/) {
  cudaError_t err = cudaSuccess;
  const unsigned long long threads =
      static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) {
    err = cudaErrorInvalidConfiguration;
  } else if (shared_bytes > 48 * 1024) {
    err = cudaErrorInvalidValue;
  } else if (param_bytes > 32764) {
    err = cudaErrorInvalidValue;
  }
  g_last_error = err;
  return err;
}

void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread) {
  Block& b = block_storage();
  b.body = &thread;
  b.threads = static_cast<int>(block.x * block.y * block.z);
  int linear = 0;
  for (unsigned z = 0; z < block.z; ++z) {
    for (unsigned y = 0; y < block.y; ++y) {
      for (unsigned x = 0; x < block.x; ++x) b.fibers[linear++].tid = uint3{x, y, z};
    }
  }
  gridDim = grid;
  blockDim = block;
  ++g_stats.launches;
  const bool every_block_on_fibers = all_fibers();
  bool first = true;
  bool cooperative = false;
  Block* previous = g_block;
  g_block = &b;
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
        ++g_stats.blocks;
        g_stats.threads += b.threads;
        b.on_fibers = first || cooperative || every_block_on_fibers;
        b.cooperative = false;
        if (b.on_fibers) {
          ++g_stats.fiber_blocks;
          run_block_on_fibers(b);
        } else {
          for (int i = 0; i < b.threads; ++i) {
            set_thread(b.fibers[i].tid);
            thread();
          }
        }
        if (first) cooperative = b.cooperative;
        first = false;
      }
    }
  }
  g_block = previous;
}

// ---------------------------------------------------------------------------
// 16-bit conversions, as CUDA does them: exact widening; narrowing rounds to
// nearest even, overflow to Inf, NaN to the canonical 0x7FFF.

float half_bits_to_float(uint16_t h) {
  const int sign = h >> 15;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  double value;
  if (exponent == 0x1F) {
    value = mantissa != 0 ? std::nan("") : INFINITY;
  } else if (exponent == 0) {
    value = std::ldexp(static_cast<double>(mantissa), -24);
  } else {
    value = std::ldexp(static_cast<double>(mantissa + 1024), exponent - 25);
  }
  return static_cast<float>(sign ? -value : value);
}

uint16_t float_to_half_bits_rn(float f) {
  if (std::isnan(f)) return 0x7FFF;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7C00;  // rounds to Inf (65504 + half a step)
  if (a < std::ldexp(1.0, -14)) {
    // Subnormal (or zero): in units of 2^-24; may round up to the smallest normal.
    const double q = std::nearbyint(std::ldexp(a, 24));
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(q));
  }
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  e -= 1;             // a = m' * 2^e, m' in [1, 2)
  double q = std::nearbyint(std::ldexp(a, 10 - e));  // 1024 .. 2048
  if (q == 2048.0) {
    q = 1024.0;
    ++e;
  }
  if (e + 15 >= 31) return sign | 0x7C00;
  return static_cast<uint16_t>(sign | ((e + 15) << 10) | (static_cast<int>(q) - 1024));
}

float bfloat16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

uint16_t float_to_bfloat16_bits_rn(float f) {
  if (std::isnan(f)) return 0x7FFF;
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  // Round the low 16 bits to nearest, ties to even (overflow carries to Inf).
  const uint32_t low = u & 0xFFFFu;
  uint32_t high = u >> 16;
  if (low > 0x8000u || (low == 0x8000u && (high & 1u))) ++high;
  return static_cast<uint16_t>(high);
}

}  // namespace emu

extern "C" void emu_fiber_main(int64_t index) {
  emu::Block& b = *emu::g_block;
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.main_bottom, &b.main_size);
#endif
  (*b.body)();
  b.fibers[index].done = true;
  emu::yield(b, /*exiting=*/true);
  emu::fail("a finished fiber was resumed");
}

// ---------------------------------------------------------------------------
// Runtime functions.

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver:
      return "cudaErrorInsufficientDriver";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorLaunchOutOfResources:
      return "cudaErrorLaunchOutOfResources";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidValue:
      return "invalid argument";
    default:
      return "emulated error";
  }
}

cudaError_t cudaGetLastError() {
  const cudaError_t err = emu::g_last_error;
  emu::g_last_error = cudaSuccess;
  return err;
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return cudaErrorInvalidValue;
  const char* env = std::getenv("FUSEDOPT_EMU_DRIVER_VERSION");
  *version = env != nullptr ? std::atoi(env) : CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return cudaErrorInvalidValue;
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  if (bytes > 0) std::memset(dst, value, bytes);
  return cudaSuccess;
}
