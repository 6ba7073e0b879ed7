// Bit packing, with the NumPy engine's convention (advlib/qnn/engine/packing.py):
// +1 (x >= 0) is bit 1, -1 is bit 0; element i of a row is bit i % 32 of word i / 32;
// unused bits of a row's last word are 0.

// One thread per output word, over rows * words (1-D: rows can number millions).
extern "C" __global__ void pack_signs(const float* __restrict__ x, unsigned int* __restrict__ out,
                                      long long rows, int length, int words) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= rows * words) return;
    long long row = index / words;
    int word = index % words;
    const float* source = x + (long long)row * length;
    unsigned int bits = 0u;
    int first = word * 32;
    int count = min(32, length - first);
    for (int i = 0; i < count; ++i) {
        bits |= (source[first + i] >= 0.0f ? 1u : 0u) << i;
    }
    out[row * words + word] = bits;
}

// The 8 bit-planes of uint8 inputs: out[plane][row][word], planes LSB first.
extern "C" __global__ void pack_bit_planes(const unsigned char* __restrict__ x,
                                           unsigned int* __restrict__ out,
                                           long long rows, int length, int words) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= rows * words) return;
    long long row = index / words;
    int word = index % words;
    const unsigned char* source = x + (long long)row * length;
    unsigned int planes[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
    int first = word * 32;
    int count = min(32, length - first);
    for (int i = 0; i < count; ++i) {
        unsigned int value = source[first + i];
        for (int b = 0; b < 8; ++b) planes[b] |= ((value >> b) & 1u) << i;
    }
    long long plane_stride = rows * words;
    for (int b = 0; b < 8; ++b) out[b * plane_stride + row * words + word] = planes[b];
}

// Max-pooling of +-1 values: the bitwise OR of packed words; padding is -1 (bit 0).
extern "C" __global__ void max_pool_words(const unsigned int* __restrict__ x,
                                          unsigned int* __restrict__ out,
                                          int n, int height, int width, int words,
                                          int out_h, int out_w, int pool_h, int pool_w,
                                          int stride_h, int stride_w, int pad_top, int pad_left) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)n * out_h * out_w * words;
    if (index >= total) return;
    int word = index % words;
    long long pixel = index / words;
    int ow = pixel % out_w;
    int oh = (pixel / out_w) % out_h;
    int image = pixel / ((long long)out_w * out_h);
    unsigned int bits = 0u;
    for (int i = 0; i < pool_h; ++i) {
        int h = oh * stride_h - pad_top + i;
        if (h < 0 || h >= height) continue;
        for (int j = 0; j < pool_w; ++j) {
            int w = ow * stride_w - pad_left + j;
            if (w < 0 || w >= width) continue;
            bits |= x[(((long long)image * height + h) * width + w) * words + word];
        }
    }
    out[index] = bits;
}

// Set bits per packed row (the popcounts that the tensor-core GEMM needs).
extern "C" __global__ void row_popcounts(const unsigned int* __restrict__ rows, int* out,
                                         int count, int words) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= count) return;
    int total = 0;
    for (int w = 0; w < words; ++w) total += __popc(rows[(long long)row * words + w]);
    out[row] = total;
}

// Packed rows back to one byte per element (1 for +1, 0 for -1): out (rows, length).
extern "C" __global__ void unpack_words(const unsigned int* __restrict__ x,
                                        unsigned char* __restrict__ out, long long rows,
                                        int length, int words) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= rows * length) return;
    long long row = index / length;
    int i = index % length;
    out[index] = (unsigned char)((x[row * words + i / 32] >> (i % 32)) & 1u);
}

// Keras's Flatten on packed feature maps: (n, pixels, channel words) packed per pixel to
// (n, out_words) packed over pixels * channels, in (pixel, channel) order. One thread per
// output word.
extern "C" __global__ void flatten_words(const unsigned int* __restrict__ x,
                                         unsigned int* __restrict__ out, int n, int pixels,
                                         int channels, int cw, int out_words) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= (long long)n * out_words) return;
    long long image = index / out_words;
    long long first = (index % out_words) * 32;
    long long total = (long long)pixels * channels;
    const unsigned int* source = x + image * pixels * cw;
    unsigned int bits = 0u;
    for (int i = 0; i < 32 && first + i < total; ++i) {
        long long flat = first + i;
        long long pixel = flat / channels;
        int channel = flat % channels;
        bits |= ((source[pixel * cw + channel / 32] >> (channel % 32)) & 1u) << i;
    }
    out[index] = bits;
}

// The epilogue of a layer with ternary (masked) weights, which runs as 2N units of
// +-1 weights: unit u's accumulator is half the sum of columns u and N + u of acc
// (M, 2N), then thresholded as store_bits does. One thread per output word, which
// it writes whole: out (M, out_words) needs no zeroing.
extern "C" __global__ void threshold_pairs(const int* __restrict__ acc,
                                           unsigned int* __restrict__ out,
                                           const long long* __restrict__ threshold,
                                           const unsigned char* __restrict__ flip,
                                           long long rows, int units, int out_words) {
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= rows * out_words) return;
    long long row = index / out_words;
    int word = index % out_words;
    const int* pairs = acc + row * 2LL * units;
    unsigned int bits = 0u;
    int first = word * 32;
    int count = min(32, units - first);
    for (int i = 0; i < count; ++i) {
        int unit = first + i;
        // the two halves' sum is twice an integer: exact
        long long value = ((long long)pairs[unit] + pairs[units + unit]) / 2;
        bool bit = flip[unit] ? (value <= threshold[unit]) : (value >= threshold[unit]);
        bits |= (bit ? 1u : 0u) << i;
    }
    out[index] = bits;
}
