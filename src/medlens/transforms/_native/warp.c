/* medlens resampling kernels: affine pull-back warps of (B, C, [D,] H, W) tensors.
 *
 * Compiled on first use by medlens.transforms._native (cc -O3, -march=native where the compiler
 * takes it) and called through ctypes. Conventions match medlens.transforms._warp: index
 * coordinates (x along the last axis) with voxel centres at integers; rows[b] is the top of the
 * (n+1)x(n+1) matrix mapping an output voxel's index to the input's; values outside the input are
 * zero ("zeros" padding). Linear interpolation gives each of the 2^n neighbours the weight of its
 * share, and neighbours outside the input contribute nothing, exactly as grid_sample does.
 *
 * The AVX2 path treats 8 voxels of a row at once: neighbour indices are clamped into the input
 * and the weights of neighbours outside it set to zero, so no block needs a scalar border path;
 * the two x-neighbours are adjacent in memory and are fetched together as one 64-bit gather.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MEDLENS_AVX2 1
#endif

#define MAX_THREADS 256

typedef struct {
    const void *in;
    void *out;
    const float *rows;
    long B, C, D, H, W, OD, OH, OW, elem;
    long start, stop;
} job_t;

typedef void (*row_fn)(const job_t *j, long b, long z, long y);

/* ------------------------------------------------------------------ scalar reference paths */
static inline float linear_scalar_3d(const float *p, long D, long H, long W, float cx, float cy,
                                     float cz) {
    float flx = floorf(cx), fly = floorf(cy), flz = floorf(cz);
    float tx = cx - flx, ty = cy - fly, tz = cz - flz;
    long ix = (long)flx, iy = (long)fly, iz = (long)flz;
    float wx[2] = {1 - tx, tx}, wy[2] = {1 - ty, ty}, wz[2] = {1 - tz, tz};
    float acc = 0.0f;
    for (int dz = 0; dz < 2; dz++) {
        long zz = iz + dz;
        if (zz < 0 || zz >= D) continue;
        for (int dy = 0; dy < 2; dy++) {
            long yy = iy + dy;
            if (yy < 0 || yy >= H) continue;
            for (int dx = 0; dx < 2; dx++) {
                long xx = ix + dx;
                if (xx < 0 || xx >= W) continue;
                acc += wz[dz] * wy[dy] * wx[dx] * p[(zz * H + yy) * W + xx];
            }
        }
    }
    return acc;
}

static inline float linear_scalar_2d(const float *p, long H, long W, float cx, float cy) {
    float flx = floorf(cx), fly = floorf(cy);
    float tx = cx - flx, ty = cy - fly;
    long ix = (long)flx, iy = (long)fly;
    float wx[2] = {1 - tx, tx}, wy[2] = {1 - ty, ty};
    float acc = 0.0f;
    for (int dy = 0; dy < 2; dy++) {
        long yy = iy + dy;
        if (yy < 0 || yy >= H) continue;
        for (int dx = 0; dx < 2; dx++) {
            long xx = ix + dx;
            if (xx < 0 || xx >= W) continue;
            acc += wy[dy] * wx[dx] * p[yy * W + xx];
        }
    }
    return acc;
}

#ifdef MEDLENS_AVX2
/* Per axis: the clamped low index i' in [0, size - 2] and the weights of i' and i' + 1. */
static inline void axis_terms(__m256 c, long size, __m256i *lo, __m256 *wa, __m256 *wb) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    __m256 f = _mm256_floor_ps(c);
    __m256 t = _mm256_sub_ps(c, f), u = _mm256_sub_ps(one, t);
    /* clamp in float first so huge coordinates cannot overflow the integer conversion */
    __m256 fc = _mm256_min_ps(_mm256_max_ps(f, zero), _mm256_set1_ps((float)(size - 2)));
    __m256 d = _mm256_sub_ps(f, fc); /* 0 inside; 1 at the last voxel; -1 just before the first */
    __m256 is0 = _mm256_cmp_ps(d, zero, _CMP_EQ_OQ);
    __m256 is1 = _mm256_cmp_ps(d, one, _CMP_EQ_OQ);
    __m256 ism1 = _mm256_cmp_ps(d, _mm256_set1_ps(-1.0f), _CMP_EQ_OQ);
    *wa = _mm256_or_ps(_mm256_and_ps(is0, u), _mm256_and_ps(ism1, t));
    *wb = _mm256_or_ps(_mm256_and_ps(is0, t), _mm256_and_ps(is1, u));
    *lo = _mm256_cvtps_epi32(fc);
}

/* Gather the pairs (p[o], p[o + 1]) for 8 offsets and blend them along x: lanes 0 1 4 5 2 3 6 7. */
static inline __m256 pair_lerp(const float *p, __m256i o, __m256 wa, __m256 wb) {
    const double *q = (const double *)p;
    __m256 lo = _mm256_castpd_ps(_mm256_i32gather_pd(q, _mm256_castsi256_si128(o), 4));
    __m256 hi = _mm256_castpd_ps(_mm256_i32gather_pd(q, _mm256_extracti128_si256(o, 1), 4));
    __m256 a = _mm256_shuffle_ps(lo, hi, 0x88), b = _mm256_shuffle_ps(lo, hi, 0xDD);
    return _mm256_fmadd_ps(wb, b, _mm256_mul_ps(wa, a));
}

static inline __m256 to_pair_order(__m256 v) {
    return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
}

static inline __m256 from_pair_order(__m256 v) {
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
}
#endif

/* ------------------------------------------------------------------------------ linear 3D */
static void linear_row_3d(const job_t *j, long b, long z, long y) {
    const long D = j->D, H = j->H, W = j->W, OW = j->OW;
    const long plane = D * H * W, oplane = j->OD * j->OH * OW;
    const float *m = j->rows + b * 12;
    const float bx = m[1] * y + m[2] * z + m[3];
    const float by = m[5] * y + m[6] * z + m[7];
    const float bz = m[9] * y + m[10] * z + m[11];
    const float *src = (const float *)j->in + b * j->C * plane;
    float *dst = (float *)j->out + b * j->C * oplane + (z * j->OH + y) * OW;
    long x = 0;
#ifdef MEDLENS_AVX2
    if (D >= 2 && H >= 2 && W >= 2) {
        const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i vW = _mm256_set1_epi32((int)W), vHW = _mm256_set1_epi32((int)(H * W));
        for (; x + 8 <= OW; x += 8) {
            __m256 xv = _mm256_add_ps(_mm256_set1_ps((float)x), lane);
            __m256 cx = _mm256_fmadd_ps(_mm256_set1_ps(m[0]), xv, _mm256_set1_ps(bx));
            __m256 cy = _mm256_fmadd_ps(_mm256_set1_ps(m[4]), xv, _mm256_set1_ps(by));
            __m256 cz = _mm256_fmadd_ps(_mm256_set1_ps(m[8]), xv, _mm256_set1_ps(bz));
            __m256i ix, iy, iz;
            __m256 xa, xb, ya, yb, za, zb;
            axis_terms(cx, W, &ix, &xa, &xb);
            axis_terms(cy, H, &iy, &ya, &yb);
            axis_terms(cz, D, &iz, &za, &zb);
            __m256 wy0 = to_pair_order(ya), wy1 = to_pair_order(yb);
            __m256 wz0 = to_pair_order(za), wz1 = to_pair_order(zb);
            xa = to_pair_order(xa);
            xb = to_pair_order(xb);
            __m256i o00 = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_mullo_epi32(iz, vHW), _mm256_mullo_epi32(iy, vW)), ix);
            __m256i o01 = _mm256_add_epi32(o00, vW), o10 = _mm256_add_epi32(o00, vHW);
            __m256i o11 = _mm256_add_epi32(o10, vW);
            for (long c = 0; c < j->C; c++) {
                const float *p = src + c * plane;
                __m256 e0 = _mm256_fmadd_ps(wy1, pair_lerp(p, o01, xa, xb),
                                            _mm256_mul_ps(wy0, pair_lerp(p, o00, xa, xb)));
                __m256 e1 = _mm256_fmadd_ps(wy1, pair_lerp(p, o11, xa, xb),
                                            _mm256_mul_ps(wy0, pair_lerp(p, o10, xa, xb)));
                __m256 v = _mm256_fmadd_ps(wz1, e1, _mm256_mul_ps(wz0, e0));
                _mm256_storeu_ps(dst + c * oplane + x, from_pair_order(v));
            }
        }
    }
#endif
    for (; x < OW; x++) {
        float cx = bx + m[0] * x, cy = by + m[4] * x, cz = bz + m[8] * x;
        for (long c = 0; c < j->C; c++)
            dst[c * oplane + x] = linear_scalar_3d(src + c * plane, D, H, W, cx, cy, cz);
    }
}

/* ------------------------------------------------------------------------------ linear 2D */
static void linear_row_2d(const job_t *j, long b, long z, long y) {
    (void)z;
    const long H = j->H, W = j->W, OW = j->OW;
    const long plane = H * W, oplane = j->OH * OW;
    const float *m = j->rows + b * 6;
    const float bx = m[1] * y + m[2];
    const float by = m[4] * y + m[5];
    const float *src = (const float *)j->in + b * j->C * plane;
    float *dst = (float *)j->out + b * j->C * oplane + y * OW;
    long x = 0;
#ifdef MEDLENS_AVX2
    if (H >= 2 && W >= 2) {
        const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i vW = _mm256_set1_epi32((int)W);
        for (; x + 8 <= OW; x += 8) {
            __m256 xv = _mm256_add_ps(_mm256_set1_ps((float)x), lane);
            __m256 cx = _mm256_fmadd_ps(_mm256_set1_ps(m[0]), xv, _mm256_set1_ps(bx));
            __m256 cy = _mm256_fmadd_ps(_mm256_set1_ps(m[3]), xv, _mm256_set1_ps(by));
            __m256i ix, iy;
            __m256 xa, xb, ya, yb;
            axis_terms(cx, W, &ix, &xa, &xb);
            axis_terms(cy, H, &iy, &ya, &yb);
            __m256 wy0 = to_pair_order(ya), wy1 = to_pair_order(yb);
            xa = to_pair_order(xa);
            xb = to_pair_order(xb);
            __m256i o0 = _mm256_add_epi32(_mm256_mullo_epi32(iy, vW), ix);
            __m256i o1 = _mm256_add_epi32(o0, vW);
            for (long c = 0; c < j->C; c++) {
                const float *p = src + c * plane;
                __m256 v = _mm256_fmadd_ps(wy1, pair_lerp(p, o1, xa, xb),
                                           _mm256_mul_ps(wy0, pair_lerp(p, o0, xa, xb)));
                _mm256_storeu_ps(dst + c * oplane + x, from_pair_order(v));
            }
        }
    }
#endif
    for (; x < OW; x++) {
        float cx = bx + m[0] * x, cy = by + m[3] * x;
        for (long c = 0; c < j->C; c++)
            dst[c * oplane + x] = linear_scalar_2d(src + c * plane, H, W, cx, cy);
    }
}

/* ------------------------------------------------------------------------ nearest, any dtype */
/* floor(c + 0.5): exact halves round up, as the compiled torch kernel does */
static void nearest_row(const job_t *j, long b, long z, long y) {
    const int three = j->D > 0;
    const long D = three ? j->D : 1, H = j->H, W = j->W, OW = j->OW, e = j->elem;
    const long plane = D * H * W, oplane = (three ? j->OD : 1) * j->OH * OW;
    const float *m = j->rows + b * (three ? 12 : 6);
    float bx, by, bz = 0.0f, ax, ay, az = 0.0f;
    if (three) {
        ax = m[0]; ay = m[4]; az = m[8];
        bx = m[1] * y + m[2] * z + m[3];
        by = m[5] * y + m[6] * z + m[7];
        bz = m[9] * y + m[10] * z + m[11];
    } else {
        ax = m[0]; ay = m[3];
        bx = m[1] * y + m[2];
        by = m[4] * y + m[5];
    }
    const char *src = (const char *)j->in + b * j->C * plane * e;
    char *dst = (char *)j->out + (b * j->C * oplane + ((three ? z : 0) * j->OH + y) * OW) * e;
    for (long x = 0; x < OW; x++) {
        long ix = (long)floorf(bx + ax * x + 0.5f), iy = (long)floorf(by + ay * x + 0.5f);
        long iz = three ? (long)floorf(bz + az * x + 0.5f) : 0;
        int ok = ix >= 0 && ix < W && iy >= 0 && iy < H && iz >= 0 && iz < D;
        long o = ((iz * H + iy) * W + ix) * e;
        for (long c = 0; c < j->C; c++) {
            char *to = dst + (c * oplane + x) * e;
            if (ok)
                memcpy(to, src + c * plane * e + o, (size_t)e);
            else
                memset(to, 0, (size_t)e);
        }
    }
}

/* ------------------------------------------------------------------------------- threading */
typedef struct {
    job_t job;
    row_fn fn;
} task_t;

static void *run_rows(void *arg) {
    const task_t *t = (const task_t *)arg;
    const job_t *j = &t->job;
    const long oz = j->OD > 0 ? j->OD : 1;
    for (long r = j->start; r < j->stop; r++) {
        long b = r / (oz * j->OH), zy = r % (oz * j->OH);
        t->fn(j, b, zy / j->OH, zy % j->OH);
    }
    return NULL;
}

static void run_parallel(job_t job, row_fn fn, int threads) {
    const long total = job.B * (job.OD > 0 ? job.OD : 1) * job.OH;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > total) threads = (int)(total > 0 ? total : 1);
    task_t tasks[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        tasks[t].job = job;
        tasks[t].fn = fn;
        tasks[t].job.start = total * t / threads;
        tasks[t].job.stop = total * (t + 1) / threads;
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, run_rows, &tasks[t]) == 0;
    run_rows(&tasks[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            run_rows(&tasks[t]); /* could not start a thread: do its share here */
    }
}

/* ---------------------------------------------------------------------------- entry points */
int medlens_has_avx2(void) {
#ifdef MEDLENS_AVX2
    return 1;
#else
    return 0;
#endif
}

void medlens_warp_linear_3d(const float *in, float *out, const float *rows, long B, long C,
                            long D, long H, long W, long OD, long OH, long OW, int threads) {
    job_t job = {in, out, rows, B, C, D, H, W, OD, OH, OW, 4, 0, 0};
    run_parallel(job, linear_row_3d, threads);
}

void medlens_warp_linear_2d(const float *in, float *out, const float *rows, long B, long C,
                            long H, long W, long OH, long OW, int threads) {
    job_t job = {in, out, rows, B, C, 0, H, W, 0, OH, OW, 4, 0, 0};
    run_parallel(job, linear_row_2d, threads);
}

void medlens_warp_nearest(const void *in, void *out, const float *rows, long elem, long B, long C,
                          long D, long H, long W, long OD, long OH, long OW, int threads) {
    /* D == 0 and OD == 0 select the 2D case */
    job_t job = {in, out, rows, B, C, D, H, W, OD, OH, OW, elem, 0, 0};
    run_parallel(job, nearest_row, threads);
}
