// A CPU stand-in for the parts of CUDA that fastln's kernels use, so that tests without a GPU
// run the real kernel source (src/fastln/cuda/layer_norm.cu) compiled by the host compiler.
//
// Each CUDA thread of a block runs as a fiber (ucontext) on one host thread, the blocks one after
// another. __syncthreads and full-warp shuffles are barriers: a fiber that reaches one yields, and
// the scheduler releases the barrier once every thread of the block (or warp) waits at it. What
// CUDA would hang on or leave undefined -- a barrier some threads never reach, a shuffle with lanes
// missing -- ends the launch with an error instead. So does any global memory access, made through
// the kernels' load/store helpers (FASTLN_CHECK_ACCESS), that is not inside an array passed to the
// launch, or that is a misaligned vector access.
//
// Launches come from Python (tests/fake_cupy.py) through fastln_emu::launch, which checks each
// argument's size and kind (pointer, integer, float) against the kernel's parameter list, as the
// driver would not.
#ifndef FASTLN_CUDA_EMULATOR_H
#define FASTLN_CUDA_EMULATOR_H

#include <ucontext.h>

#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#define FASTLN_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time, so one copy serves each block in turn

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace fastln_emu {

enum class State { ready, at_warp, at_block, done, failed };

struct Fiber {
    ucontext_t context;
    dim3 thread;
    State state;
    uint64_t slot;  // a value offered to the warp's current shuffle
};

struct Range {
    uintptr_t begin, end;
};

struct Launch {
    std::vector<Fiber> fibers;
    std::vector<char> stacks;
    ucontext_t scheduler;
    size_t current = 0;
    dim3 block, grid, block_dim, grid_dim;
    std::function<void()> body;
    std::vector<Range> ranges;
    char error[1024] = "";
};

inline Launch& state() {
    static Launch launch;
    return launch;
}

constexpr size_t STACK_BYTES = 64 * 1024;

inline Fiber& self() { return state().fibers[state().current]; }

// Ends the launch: records the message and parks this fiber for good.
[[noreturn]] inline void fail(const char* format, ...) {
    Launch& l = state();
    if (!l.error[0]) {
        int used = snprintf(l.error, sizeof l.error, "block %u, thread %u: ", l.block.x,
                            self().thread.x);
        va_list args;
        va_start(args, format);
        vsnprintf(l.error + used, sizeof l.error - used, format, args);
        va_end(args);
    }
    self().state = State::failed;
    swapcontext(&self().context, &l.scheduler);
    abort();  // never resumed
}

inline void wait(State at) {
    Fiber& f = self();
    f.state = at;
    swapcontext(&f.context, &state().scheduler);
}

inline void sync_block() { wait(State::at_block); }

template <typename V> V shfl_xor(unsigned mask, V value, int lane_mask) {
    static_assert(sizeof(V) <= sizeof(uint64_t), "shuffled values are at most 8 bytes");
    if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated, got mask %#x", mask);
    if (lane_mask < 0 || lane_mask > 31) fail("shuffle lane mask %d is not a lane", lane_mask);
    Launch& l = state();
    const size_t me = l.current;
    memcpy(&l.fibers[me].slot, &value, sizeof(V));
    wait(State::at_warp);
    V result;
    memcpy(&result, &l.fibers[me ^ (size_t)lane_mask].slot, sizeof(V));
    wait(State::at_warp);  // no lane offers its next value before every lane has read this one
    return result;
}

inline void check_access(const void* p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p;
    const size_t align = bytes < 16 ? bytes : 16;
    if (a % align) fail("%zu-byte access at %p is not %zu-byte aligned", bytes, p, align);
    for (const Range& r : state().ranges) {
        if (a >= r.begin && a + bytes <= r.end) return;
    }
    fail("%zu-byte access at %p is outside every array passed to the kernel", bytes, p);
}

inline void run_fiber() {
    state().body();
    self().state = State::done;
}

// Releases the barriers that every live thread of their warp (or block) has reached. False if
// none could be released: the launch cannot go on.
inline bool release() {
    Launch& l = state();
    const size_t n = l.fibers.size();
    bool released = false;
    for (size_t w = 0; w < n; w += 32) {
        size_t waiting = 0;
        for (size_t i = w; i < w + 32; ++i) waiting += l.fibers[i].state == State::at_warp;
        if (waiting == 32) {
            for (size_t i = w; i < w + 32; ++i) l.fibers[i].state = State::ready;
            released = true;
        }
    }
    if (released) return true;
    size_t at_block = 0, done = 0;
    for (const Fiber& f : l.fibers) {
        at_block += f.state == State::at_block;
        done += f.state == State::done;
    }
    if (at_block == n) {
        for (Fiber& f : l.fibers) f.state = State::ready;
        return true;
    }
    snprintf(l.error, sizeof l.error,
             "block %u: deadlock: %zu of %zu threads wait at __syncthreads, %zu have exited, "
             "the others wait at a shuffle that not all 32 lanes of their warp reach",
             l.block.x, at_block, n, done);
    return false;
}

// Runs the block l.block; false on an error (in l.error).
inline bool run_block() {
    Launch& l = state();
    const size_t n = l.fibers.size();
    for (size_t i = 0; i < n; ++i) {
        Fiber& f = l.fibers[i];
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = l.stacks.data() + i * STACK_BYTES;
        f.context.uc_stack.ss_size = STACK_BYTES;
        f.context.uc_link = &l.scheduler;
        makecontext(&f.context, run_fiber, 0);
        f.thread.x = (unsigned)i;
        f.state = State::ready;
    }
    for (;;) {
        bool ran = false, live = false;
        for (size_t i = 0; i < n; ++i) {
            if (l.fibers[i].state != State::ready) continue;
            l.current = i;
            swapcontext(&l.scheduler, &l.fibers[i].context);
            if (l.fibers[i].state == State::failed) return false;
            ran = true;
        }
        for (const Fiber& f : l.fibers) live = live || f.state != State::done;
        if (!live) return true;
        if (!ran && !release()) return false;
    }
}

template <typename A> constexpr char kind_of() {
    return std::is_pointer<A>::value          ? 'p'
           : std::is_floating_point<A>::value ? 'f'
           : std::is_signed<A>::value         ? 'i'
                                              : 'u';
}

template <typename... A, size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}

// Runs kernel<<<grid, block>>>(args...) with args as cuLaunchKernel takes them (pointers to the
// values), after checking their sizes and kinds; `ranges` are the (begin, size) of the arrays
// passed. Returns 0, or -1 with the reason in `error`.
template <typename... A>
int launch(void (*kernel)(A...), unsigned grid, unsigned block, void** args,
           const size_t* sizes, const char* kinds, int nargs, const uintptr_t* ranges,
           int nranges, char* error, size_t error_size) {
    Launch& l = state();
    l.error[0] = 0;
    const size_t want_sizes[] = {sizeof(A)..., 0};
    const char want_kinds[] = {kind_of<A>()..., 0};
    if (nargs != (int)sizeof...(A)) {
        snprintf(error, error_size, "the kernel takes %zu arguments, got %d", sizeof...(A), nargs);
        return -1;
    }
    for (int i = 0; i < nargs; ++i) {
        if (sizes[i] != want_sizes[i] || kinds[i] != want_kinds[i]) {
            snprintf(error, error_size,
                     "argument %d: the kernel takes a %zu-byte '%c' value, got a %zu-byte '%c'",
                     i, want_sizes[i], want_kinds[i], sizes[i], kinds[i]);
            return -1;
        }
    }
    if (block == 0 || block > 1024 || block % 32) {
        snprintf(error, error_size, "block of %u threads: want a multiple of 32 up to 1024", block);
        return -1;
    }
    l.ranges.clear();
    for (int i = 0; i < nranges; ++i) l.ranges.push_back({ranges[2 * i], ranges[2 * i] + ranges[2 * i + 1]});
    l.fibers.assign(block, Fiber());
    if (l.stacks.size() < block * STACK_BYTES) l.stacks.resize(block * STACK_BYTES);
    l.block_dim.x = block;
    l.grid_dim.x = grid;
    l.body = [&] { call(kernel, args, std::index_sequence_for<A...>{}); };
    for (unsigned b = 0; b < grid; ++b) {
        l.block.x = b;
        if (!run_block()) {
            snprintf(error, error_size, "%s", l.error);
            return -1;
        }
    }
    return 0;
}

}  // namespace fastln_emu

#define threadIdx (::fastln_emu::self().thread)
#define blockIdx (::fastln_emu::state().block)
#define blockDim (::fastln_emu::state().block_dim)
#define gridDim (::fastln_emu::state().grid_dim)
#define __syncthreads() ::fastln_emu::sync_block()
#define __shfl_xor_sync(mask, value, lane_mask) ::fastln_emu::shfl_xor(mask, value, lane_mask)
#define FASTLN_CHECK_ACCESS(ptr, bytes) ::fastln_emu::check_access((const void*)(ptr), (bytes))

inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}

// IEEE binary16 <-> binary32, round to nearest even, as PTX cvt.f32.f16 / cvt.rn.f16.f32.
inline float fastln_emu_half_to_float(unsigned short h) {
    const unsigned sign = (unsigned)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float magnitude;
    if (exp == 0x1f) {
        magnitude = man ? NAN : INFINITY;
    } else if (exp == 0) {
        magnitude = std::ldexp((float)man, -24);
    } else {
        magnitude = std::ldexp((float)(man | 0x400), (int)exp - 25);
    }
    return __uint_as_float(__float_as_uint(magnitude) | sign);
}

inline unsigned short fastln_emu_float_to_half(float f) {
    const unsigned u = __float_as_uint(f);
    const unsigned short sign = (unsigned short)((u >> 16) & 0x8000);
    const float a = std::fabs(f);
    if (std::isnan(f)) return sign | 0x7e00;
    if (a >= 65520.0f) return sign | 0x7c00;  // rounds to infinity
    if (a < std::ldexp(1.0f, -14)) {          // subnormal (or zero): a multiple of 2^-24
        return sign | (unsigned short)std::nearbyint(std::ldexp(a, 24));  // ties to even
    }
    int e;
    std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    // 11 significant bits: round a / 2^(e-11) to an integer, ties to even.
    const float q = std::nearbyint(std::ldexp(a, 11 - e));
    int biased = e - 1 + 15;
    unsigned mant = (unsigned)q;
    if (mant == 2048) {  // rounded up to the next power of two
        mant = 1024;
        ++biased;
    }
    if (biased >= 31) return sign | 0x7c00;
    return sign | (unsigned short)(biased << 10) | (unsigned short)(mant - 1024);
}

#endif
