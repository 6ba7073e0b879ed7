// The baseline of the QNN paper's speed claims: a plain float32 GEMM tiled
// through shared memory (16 x 16 tiles, one output per thread), C = A B^T with
// A (M, K) and B (N, K) row-major. Used by benchmarks/binary_gemm.py only.

#define TILE 16

extern "C" __global__ void float_gemm(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ c, int m, int n, int k) {
    __shared__ float a_tile[TILE][TILE];
    __shared__ float b_tile[TILE][TILE + 1];
    int row = blockIdx.x * TILE + threadIdx.y;
    int col = blockIdx.y * TILE + threadIdx.x;
    float sum = 0.0f;
    for (int k0 = 0; k0 < k; k0 += TILE) {
        a_tile[threadIdx.y][threadIdx.x] =
            (row < m && k0 + threadIdx.x < k) ? a[(long long)row * k + k0 + threadIdx.x] : 0.0f;
        int b_row = blockIdx.y * TILE + threadIdx.y;
        b_tile[threadIdx.y][threadIdx.x] =
            (b_row < n && k0 + threadIdx.x < k) ? b[(long long)b_row * k + k0 + threadIdx.x] : 0.0f;
        __syncthreads();
        for (int i = 0; i < TILE; ++i) sum += a_tile[threadIdx.y][i] * b_tile[threadIdx.x][i];
        __syncthreads();
    }
    if (row < m && col < n) c[(long long)row * n + col] = sum;
}
