// A CPU execution model of the CUDA that advlib's kernels use, for host g++ (C++14).
//
// Each CUDA thread of a block is a std::thread; the blocks of a grid run one after
// another. __syncthreads is a barrier over the block's live threads (a thread that
// returns leaves it, as on hardware); shared memory is refilled with 0xA5 before every
// block, so a read before a write shows up. The binary tensor-core instruction
// mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc is emulated from the PTX ISA's
// fragment layouts, with the 32 lanes of a warp exchanging their registers.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

thread_local dim3 thread_index, block_index;
dim3 block_dim, grid_dim;

class Barrier {
  public:
    void reset(int live) { live_ = live; waiting_ = 0; }
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        long generation = generation_;
        if (++waiting_ == live_) {
            open_next();
        } else {
            changed_.wait(lock, [&] { return generation != generation_; });
        }
    }
    void leave() {  // a returning thread no longer takes part
        std::unique_lock<std::mutex> lock(mutex_);
        --live_;
        if (waiting_ > 0 && waiting_ == live_) open_next();
    }

  private:
    void open_next() { waiting_ = 0; ++generation_; changed_.notify_all(); }
    std::mutex mutex_;
    std::condition_variable changed_;
    int live_ = 0, waiting_ = 0;
    long generation_ = 0;
};

Barrier block_barrier;

// Shared-memory objects: registered where they are declared, refilled before each block.
std::mutex shared_mutex;
std::vector<std::pair<void*, size_t>> shared_objects;

// Every thread registers an object before it touches it, so poisoning it at its first
// registration happens before any use, in the first block as in every later one.
inline void shared_object(void* address, size_t size) {
    std::lock_guard<std::mutex> lock(shared_mutex);
    for (auto& entry : shared_objects)
        if (entry.first == address) return;
    shared_objects.emplace_back(address, size);
    std::memset(address, 0xA5, size);
}

inline void poison_shared() {
    std::lock_guard<std::mutex> lock(shared_mutex);
    for (auto& entry : shared_objects) std::memset(entry.first, 0xA5, entry.second);
}

// The registers of one warp's lanes, for warp-wide instructions.
struct WarpExchange {
    Barrier barrier;
    unsigned int a[32][4], b[32][2];
    int c[32][4];
};
std::unique_ptr<WarpExchange[]> warps;  // mutexes cannot live in a vector
int warp_count = 0;

}  // namespace emu

#define threadIdx (::emu::thread_index)
#define blockIdx (::emu::block_index)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
// one object per kernel for the whole process: blocks run one at a time
#define __shared__ static

inline void __syncthreads() { ::emu::block_barrier.arrive_and_wait(); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline float __fmul_rn(float a, float b) { return a * b; }  // built with -ffp-contract=off
inline float __fadd_rn(float a, float b) { return a + b; }
using std::max;
using std::min;

inline unsigned int atomicOr(unsigned int* address, unsigned int value) {
    return __atomic_fetch_or(address, value, __ATOMIC_RELAXED);
}
inline int atomicAdd(int* address, int value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

namespace emu_ptx {

// mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc, by the PTX ISA's layouts:
// with g = lane / 4 and t = lane % 4,
//   A (16 x 256 bits, row-major): a0 = row g, bits 32t..32t+31; a1 = row g + 8, same bits;
//                                 a2, a3 = rows g, g + 8, bits 128 + 32t..;
//   B (256 x 8 bits, column-major): b0 = column g, bits 32t..; b1 = column g, bits 128 + 32t..;
//   C, D (16 x 8): c0, c1 = row g, columns 2t, 2t + 1; c2, c3 = row g + 8, same columns.
inline void mma_m16n8k256_and_popc(int* d0, int* d1, int* d2, int* d3, unsigned int a0,
                                   unsigned int a1, unsigned int a2, unsigned int a3,
                                   unsigned int b0, unsigned int b1, int c0, int c1, int c2,
                                   int c3) {
    int linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int lane = linear % 32;
    ::emu::WarpExchange& warp = ::emu::warps[linear / 32];
    unsigned int mine_a[4] = {a0, a1, a2, a3};
    int mine_c[4] = {c0, c1, c2, c3};
    std::memcpy(warp.a[lane], mine_a, sizeof mine_a);
    warp.b[lane][0] = b0;
    warp.b[lane][1] = b1;
    std::memcpy(warp.c[lane], mine_c, sizeof mine_c);
    warp.barrier.arrive_and_wait();
    // the 256-bit rows of A and columns of B, as 8 words, gathered from the lanes
    auto a_word = [&](int row, int word) {  // word 0..7 of row 0..15
        int t = word % 4, high = word / 4, g = row % 8, lower = row < 8 ? 0 : 1;
        return warp.a[4 * g + t][2 * high + lower];
    };
    auto b_word = [&](int column, int word) { return warp.b[4 * column + word % 4][word / 4]; };
    int g = lane / 4, t = lane % 4;
    int* outputs[4] = {d0, d1, d2, d3};
    int results[4];
    for (int r = 0; r < 4; ++r) {
        int row = g + (r >= 2 ? 8 : 0), column = 2 * t + (r % 2);
        int sum = mine_c[r];
        for (int word = 0; word < 8; ++word) sum += __popc(a_word(row, word) & b_word(column, word));
        results[r] = sum;
    }
    warp.barrier.arrive_and_wait();  // nobody overwrites the exchange while others read it
    for (int r = 0; r < 4; ++r) *outputs[r] = results[r];
}

}  // namespace emu_ptx

namespace emu {

template <class T> struct ArgCode {
    static std::string code() {
        if (std::is_pointer<T>::value)
            return "p" + std::to_string(sizeof(typename std::remove_pointer<T>::type));
        return (std::is_floating_point<T>::value ? "f" : "i") + std::to_string(sizeof(T));
    }
};

// "p4,i4,i8,...": each parameter as pointer-to-size or scalar kind and size
template <class... A> std::string signature(void (*)(A...)) {
    std::string out;
    int unused[] = {0, (out += (out.empty() ? "" : ",") + ArgCode<A>::code(), 0)...};
    (void)unused;
    return out;
}

template <class... A, size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}

// Runs the grid; returns 0, or 1 with `error` set if a thread threw.
template <class... A>
int launch(void (*kernel)(A...), dim3 grid, dim3 block, void** args, char* error, size_t size) {
    grid_dim = grid;
    block_dim = block;
    int threads = block.x * block.y * block.z;
    warp_count = (threads + 31) / 32;
    warps.reset(new WarpExchange[warp_count]);
    std::string failure;
    std::mutex failure_mutex;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                poison_shared();
                block_barrier.reset(threads);
                for (int w = 0; w < warp_count; ++w)
                    warps[w].barrier.reset(std::min(32, threads - 32 * w));
                std::vector<std::thread> team;
                team.reserve(threads);
                for (int linear = 0; linear < threads; ++linear) {
                    team.emplace_back([&, linear] {
                        block_index = dim3(bx, by, bz);
                        thread_index = dim3(linear % block.x, (linear / block.x) % block.y,
                                            linear / (block.x * block.y));
                        try {
                            call(kernel, args, std::index_sequence_for<A...>{});
                        } catch (const std::exception& caught) {
                            std::lock_guard<std::mutex> lock(failure_mutex);
                            failure = caught.what();
                        }
                        block_barrier.leave();
                    });
                }
                for (auto& member : team) member.join();
                if (!failure.empty()) {
                    std::snprintf(error, size, "block (%u, %u, %u): %s", bx, by, bz,
                                  failure.c_str());
                    return 1;
                }
            }
    return 0;
}

}  // namespace emu

// Exports launch_<kernel> and signature_<kernel> with C linkage for ctypes.
#define EMU_EXPORT __attribute__((visibility("default")))
#define EMU_REGISTER(name)                                                                   \
    extern "C" EMU_EXPORT int launch_##name(unsigned int gx, unsigned int gy, unsigned int gz,         \
                                 unsigned int bx, unsigned int by, unsigned int bz,         \
                                 void** args, char* error, size_t size) {                   \
        return ::emu::launch(name, dim3(gx, gy, gz), dim3(bx, by, bz), args, error, size);  \
    }                                                                                        \
    extern "C" EMU_EXPORT const char* signature_##name() {                                              \
        static std::string text = ::emu::signature(name);                                    \
        return text.c_str();                                                                 \
    }
