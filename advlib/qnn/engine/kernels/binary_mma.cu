// Binary GEMM on tensor cores: mma.sync m16n8k256 with .b1 operands and .and.popc
// (sm_80 and newer; Hopper has no XOR form in hardware, so AND is used throughout).
// This file compiles only for sm_80 and newer, so it is a module of its own: older GPUs
// never load it and run the CUDA-core kernels of binary_gemm.cu.
//
// With bit 1 = +1 and K true bits (padding bits 0 in both operands):
//     a . w = 4 popc(a & w) - 2 popc(a) - 2 popc(w) + K.
// Each warp computes a 16 x 8 tile of C, 256 bits of K per instruction; a block of
// 4 warps covers 16 rows x 32 columns (grid x over rows, grid y over columns). The row
// popcounts popc(a) and popc(w) come from `row_popcounts` (packing.cu).

#define WARPS 4

__device__ __forceinline__ unsigned int word_at(const unsigned int* m, int rows, int words,
                                                int row, int word) {
    return (row < rows && word < words) ? m[(long long)row * words + word] : 0u;
}

// acc[r] for the fragment layout of the C/D registers of m16n8k256:
// c0, c1 at (row g, cols 2t, 2t+1); c2, c3 at (row g + 8, cols 2t, 2t+1),
// with g = lane / 4 and t = lane % 4.
__device__ void mma_tile(const unsigned int* __restrict__ a, const unsigned int* __restrict__ b,
                         int m, int n, int words, int row0, int col0, int acc[4]) {
    int lane = threadIdx.x % 32;
    int g = lane / 4, t = lane % 4;
    acc[0] = acc[1] = acc[2] = acc[3] = 0;
    for (int k = 0; k < words; k += 8) {
        unsigned int a0 = word_at(a, m, words, row0 + g, k + t);
        unsigned int a1 = word_at(a, m, words, row0 + g + 8, k + t);
        unsigned int a2 = word_at(a, m, words, row0 + g, k + t + 4);
        unsigned int a3 = word_at(a, m, words, row0 + g + 8, k + t + 4);
        unsigned int b0 = word_at(b, n, words, col0 + g, k + t);
        unsigned int b1 = word_at(b, n, words, col0 + g, k + t + 4);
        asm volatile(
            "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

#define FOR_EACH_FRAGMENT(STORE)                                                     \
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;                            \
    int row0 = blockIdx.x * 16, col0 = (blockIdx.y * WARPS + warp) * 8;              \
    int acc[4];                                                                      \
    mma_tile(a, b, m, n, words, row0, col0, acc);                                    \
    for (int r = 0; r < 4; ++r) {                                                    \
        int row = row0 + lane / 4 + (r >= 2 ? 8 : 0);                                \
        int col = col0 + 2 * (lane % 4) + (r % 2);                                   \
        if (row < m && col < n) {                                                    \
            long long dot = 4LL * acc[r] - 2LL * a_ones[row] - 2LL * b_ones[col] + length; \
            STORE;                                                                   \
        }                                                                            \
    }

extern "C" __global__ void __launch_bounds__(WARPS * 32)
mma_int(const unsigned int* a, const unsigned int* b, const int* a_ones, const int* b_ones,
        int* out, int m, int n, int words, int length) {
    FOR_EACH_FRAGMENT(out[(long long)row * n + col] = (int)dot)
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
mma_bits(const unsigned int* a, const unsigned int* b, const int* a_ones, const int* b_ones,
         unsigned int* out, int m, int n, int words, int length, const long long* threshold,
         const unsigned char* flip, int out_words) {
    FOR_EACH_FRAGMENT(
        if (flip[col] ? (dot <= threshold[col]) : (dot >= threshold[col]))
            atomicOr(&out[(long long)row * out_words + col / 32], 1u << (col % 32)))
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
mma_logits(const unsigned int* a, const unsigned int* b, const int* a_ones, const int* b_ones,
           float* out, int m, int n, int words, int length, const float* scale,
           const float* shift) {
    FOR_EACH_FRAGMENT(
        out[(long long)row * n + col] = __fadd_rn(__fmul_rn((float)dot, scale[col]), shift[col]))
}
