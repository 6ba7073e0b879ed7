// Binary GEMM and implicit-GEMM convolution on CUDA cores, with fused epilogues.
//
// A holds M rows of packed activations, B holds N rows of packed weights, both
// Kw words long (bits along K, the NumPy engine's packing). Each block computes a
// 64 x 64 tile of C (grid x over rows, grid y over columns) with 16 x 16 threads and a 4 x 4 register tile per thread,
// staging 8 words of K at a time in shared memory. Out-of-range rows and words
// load as 0, which matches the zero padding bits of the packing, so any M, N, K work.
//
// Binary inputs:  C = K - 2 popc(a ^ w).
// 8-bit inputs (the first layer), bit-planes P_b:  C = sum_b 2^b (2 popc(P_b & w) - popc(P_b)).
//
// Epilogues:  raw int32 C;  thresholds (BatchNorm + sign folded) writing the next
// layer's packed bits;  float logits C * scale + shift, rounded like NumPy (no FMA).

#define TILE_M 64
#define TILE_N 64
#define TILE_K 8
#define THREADS 256

struct DenseRows {
    const unsigned int* a;  // (planes, M, Kw)
    int words;
    long long plane_stride;
    __device__ unsigned int load(int row, int word, int plane) const {
        return a[plane * plane_stride + (long long)row * words + word];
    }
};

// Rows are output pixels (image, oh, ow); words run over (kh, kw, channel word),
// the order of a Keras kernel. Pixels outside the image read the padding word.
struct ConvRows {
    const unsigned int* x;  // (planes, n, height, width, cw)
    int height, width, cw, out_h, out_w, kernel_w, stride_h, stride_w, pad_top, pad_left;
    int channels;           // true channels: the padding word of +1 sets only these bits
    int pad_positive;       // 1: pad with +1, 0: pad with -1 (or 0 for 8-bit inputs)
    long long plane_stride;
    __device__ unsigned int load(int row, int word, int plane) const {
        int ow = row % out_w;
        int oh = (row / out_w) % out_h;
        int image = row / (out_w * out_h);
        int channel_word = word % cw;
        int tap = word / cw;
        int h = oh * stride_h - pad_top + tap / kernel_w;
        int w = ow * stride_w - pad_left + tap % kernel_w;
        if (h < 0 || h >= height || w < 0 || w >= width) {
            if (!pad_positive) return 0u;
            int remaining = channels - channel_word * 32;
            return remaining >= 32 ? 0xffffffffu : ((1u << remaining) - 1u);
        }
        return x[plane * plane_stride + (((long long)image * height + h) * width + w) * cw
                 + channel_word];
    }
};

// acc[i][j] for rows row0 + ty + 16 i and columns col0 + tx + 16 j.
template <class Rows>
__device__ void accumulate(const Rows& rows, const unsigned int* __restrict__ b, int m, int n,
                           int words, int length, int planes, long long acc[4][4]) {
    __shared__ unsigned int a_tile[TILE_K][TILE_M];
    __shared__ unsigned int b_tile[TILE_K][TILE_N];
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    // rows on grid x (up to 2^31 - 1 blocks: conv layers have millions of rows)
    int row0 = blockIdx.x * TILE_M, col0 = blockIdx.y * TILE_N;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0;
    for (int plane = 0; plane < planes; ++plane) {
        int counted[4][4] = {{0}};  // mismatches (binary) or agreements (planes)
        int ones[4] = {0, 0, 0, 0};
        for (int k0 = 0; k0 < words; k0 += TILE_K) {
            for (int l = threadIdx.x; l < TILE_K * TILE_M; l += THREADS) {
                int r = l % TILE_M, k = l / TILE_M;
                int row = row0 + r, word = k0 + k;
                a_tile[k][r] = (row < m && word < words) ? rows.load(row, word, plane) : 0u;
            }
            for (int l = threadIdx.x; l < TILE_K * TILE_N; l += THREADS) {
                int c = l % TILE_N, k = l / TILE_N;
                int col = col0 + c, word = k0 + k;
                b_tile[k][c] = (col < n && word < words) ? b[(long long)col * words + word] : 0u;
            }
            __syncthreads();
            for (int k = 0; k < TILE_K; ++k) {
                unsigned int av[4], bv[4];
                for (int i = 0; i < 4; ++i) av[i] = a_tile[k][ty + 16 * i];
                for (int j = 0; j < 4; ++j) bv[j] = b_tile[k][tx + 16 * j];
                if (planes == 1) {
                    for (int i = 0; i < 4; ++i)
                        for (int j = 0; j < 4; ++j) counted[i][j] += __popc(av[i] ^ bv[j]);
                } else {
                    for (int i = 0; i < 4; ++i) {
                        ones[i] += __popc(av[i]);
                        for (int j = 0; j < 4; ++j) counted[i][j] += __popc(av[i] & bv[j]);
                    }
                }
            }
            __syncthreads();
        }
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
                if (planes == 1) acc[i][j] = (long long)length - 2LL * counted[i][j];
                // a multiply, not a shift: left-shifting a negative value is undefined in C++14
                else acc[i][j] += (2LL * counted[i][j] - ones[i]) * (1LL << plane);
            }
    }
}

__device__ __forceinline__ void store_int(int* out, int n, int row, int col, long long acc) {
    out[(long long)row * n + col] = (int)acc;
}

__device__ __forceinline__ void store_bits(unsigned int* out, int out_words, int row, int col,
                                           long long acc, const long long* threshold,
                                           const unsigned char* flip) {
    bool bit = flip[col] ? (acc <= threshold[col]) : (acc >= threshold[col]);
    if (bit) atomicOr(&out[(long long)row * out_words + col / 32], 1u << (col % 32));
}

__device__ __forceinline__ void store_logits(float* out, int n, int row, int col, long long acc,
                                             const float* scale, const float* shift) {
    out[(long long)row * n + col] = __fadd_rn(__fmul_rn((float)acc, scale[col]), shift[col]);
}

#define FOR_EACH_OUTPUT(STORE)                                                   \
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;                            \
    for (int i = 0; i < 4; ++i) {                                                \
        int row = blockIdx.x * TILE_M + ty + 16 * i;                             \
        if (row >= m) continue;                                                  \
        for (int j = 0; j < 4; ++j) {                                            \
            int col = blockIdx.y * TILE_N + tx + 16 * j;                         \
            if (col < n) STORE;                                                  \
        }                                                                        \
    }

// ---- dense layers --------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(THREADS)
gemm_int(const unsigned int* a, const unsigned int* b, int* out, int m, int n, int words,
         int length, int planes) {
    DenseRows rows = {a, words, (long long)m * words};
    long long acc[4][4];
    accumulate(rows, b, m, n, words, length, planes, acc);
    FOR_EACH_OUTPUT(store_int(out, n, row, col, acc[i][j]))
}

extern "C" __global__ void __launch_bounds__(THREADS)
gemm_bits(const unsigned int* a, const unsigned int* b, unsigned int* out, int m, int n,
          int words, int length, int planes, const long long* threshold,
          const unsigned char* flip, int out_words) {
    DenseRows rows = {a, words, (long long)m * words};
    long long acc[4][4];
    accumulate(rows, b, m, n, words, length, planes, acc);
    FOR_EACH_OUTPUT(store_bits(out, out_words, row, col, acc[i][j], threshold, flip))
}

extern "C" __global__ void __launch_bounds__(THREADS)
gemm_logits(const unsigned int* a, const unsigned int* b, float* out, int m, int n, int words,
            int length, int planes, const float* scale, const float* shift) {
    DenseRows rows = {a, words, (long long)m * words};
    long long acc[4][4];
    accumulate(rows, b, m, n, words, length, planes, acc);
    FOR_EACH_OUTPUT(store_logits(out, n, row, col, acc[i][j], scale, shift))
}

// ---- convolutions as implicit GEMMs ------------------------------------------------
#define CONV_ARGS                                                                        \
    const unsigned int* x, const unsigned int* b, int images, int height, int width,     \
    int cw, int channels, int out_h, int out_w, int kernel_h, int kernel_w, int stride_h, \
    int stride_w, int pad_top, int pad_left, int pad_positive, int n, int planes
#define CONV_ROWS                                                                        \
    ConvRows rows = {x, height, width, cw, out_h, out_w, kernel_w, stride_h, stride_w,    \
                     pad_top, pad_left, channels, pad_positive,                           \
                     (long long)images * height * width * cw};                            \
    int m = images * out_h * out_w;                                                      \
    int words = kernel_h * kernel_w * cw;                                                \
    int length = kernel_h * kernel_w * channels;                                         \
    long long acc[4][4];                                                                 \
    accumulate(rows, b, m, n, words, length, planes, acc);

extern "C" __global__ void __launch_bounds__(THREADS) conv_int(CONV_ARGS, int* out) {
    CONV_ROWS
    FOR_EACH_OUTPUT(store_int(out, n, row, col, acc[i][j]))
}

extern "C" __global__ void __launch_bounds__(THREADS)
conv_bits(CONV_ARGS, unsigned int* out, const long long* threshold, const unsigned char* flip,
          int out_words) {
    CONV_ROWS
    FOR_EACH_OUTPUT(store_bits(out, out_words, row, col, acc[i][j], threshold, flip))
}

extern "C" __global__ void __launch_bounds__(THREADS)
conv_logits(CONV_ARGS, float* out, const float* scale, const float* shift) {
    CONV_ROWS
    FOR_EACH_OUTPUT(store_logits(out, n, row, col, acc[i][j], scale, shift))
}
