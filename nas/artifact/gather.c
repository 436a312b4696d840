/* The row gather of embnas's packed serving layout (nas/artifact/serving.py).
 *
 * A packed table keeps its rows' values back to back, each row's size (one byte, or two
 * in tables wider than 255 values), and the offset of every 16th row: row r starts at
 * base[r / 16] plus the sizes of the rows before it in its block of 16.  A lookup writes each requested row into the output,
 * zero-padded to d_max values: the bytes of its values, then all-zero bytes (+0.0 in
 * every IEEE dtype), which are the vectors the eager path of serving.py computes.
 *
 * Plain C99 and the C library only, so that any C compiler builds it when a serving
 * process first loads an export (nas/artifact/native.py).
 */
#include <stdint.h>
#include <string.h>

enum { BLOCK = 16 };

/* Sum of blk[0] .. blk[j - 1] for j < 16, without a loop: the 16 one-byte sizes as two 64-bit
 * words, the bytes from j on masked off, added in 16-bit lanes (at most 4 * 255 a lane,
 * 16 * 255 in all). */
static inline uint64_t sum_before_u8(const uint8_t *blk, unsigned j) {
    uint64_t lo, hi;
    memcpy(&lo, blk, 8);
    memcpy(&hi, blk + 8, 8);
    lo &= j >= 8 ? ~0ull : (1ull << (8 * j)) - 1;
    hi &= j <= 8 ? 0ull : (1ull << (8 * (j - 8))) - 1;
    const uint64_t even = 0x00FF00FF00FF00FFull;
    const uint64_t lanes = (lo & even) + ((lo >> 8) & even) + (hi & even) + ((hi >> 8) & even);
    return (lanes * 0x0001000100010001ull) >> 48;
}

/* The same for two-byte sizes (tables wider than 255 values): four words of four sizes,
 * added in 32-bit lanes. */
static inline uint64_t sum_before_u16(const uint16_t *blk, unsigned j) {
    const uint64_t even = 0x0000FFFF0000FFFFull;
    uint64_t lanes = 0;
    for (unsigned k = 0; k < 4; ++k) {
        uint64_t word;
        memcpy(&word, blk + 4 * k, 8);
        const unsigned kept = j <= 4 * k ? 0 : j - 4 * k >= 4 ? 4 : j - 4 * k;
        word &= kept == 4 ? ~0ull : (1ull << (16 * kept)) - 1;
        lanes += (word & even) + ((word >> 16) & even);
    }
    return (lanes & 0xFFFFFFFFull) + (lanes >> 32);
}

/* One gather: BASE_T is the offsets' type, SIZE_T the sizes', SUM their block sum.  It is
 * inlined with `width` a constant for the common row widths, so that a full row's copy
 * compiles to a few vector moves instead of a call. */
#define DEFINE_ROWS(NAME, BASE_T, SIZE_T, SUM)                                                  \
    static inline int64_t NAME(const int64_t *ids, int64_t n, int64_t rows, const BASE_T *base, \
                               const SIZE_T *sizes, const char *values, int64_t elem,          \
                               int64_t width, char *out) {                                     \
        for (int64_t i = 0; i < n; ++i) {                                                      \
            const uint64_t r = (uint64_t)ids[i];                                               \
            if (r >= (uint64_t)rows) return i;                                                 \
            const int64_t start = (int64_t)base[r / BLOCK]                                     \
                                + (int64_t)SUM(sizes + (r & ~(uint64_t)(BLOCK - 1)),           \
                                               (unsigned)(r & (BLOCK - 1)));                   \
            const int64_t kept = (int64_t)sizes[r] * elem;                                     \
            char *row = out + i * width;                                                       \
            if (kept == width) {                                                               \
                memcpy(row, values + start * elem, width);                                     \
            } else {                                                                           \
                memcpy(row, values + start * elem, kept);                                      \
                memset(row + kept, 0, width - kept);                                           \
            }                                                                                  \
        }                                                                                      \
        return -1;                                                                             \
    }

/* The exported entry points: embnas_gather_<size bits>_<offset bits>.  Each writes rows
 * ids[0 .. n) of the table into out (n * d_max elements of elem bytes) and returns -1, or
 * the position in ids of the first id outside [0, rows), having written the rows before it. */
#define DEFINE_GATHER(NAME, BASE_T, SIZE_T, SUM)                                                \
    DEFINE_ROWS(NAME##_rows, BASE_T, SIZE_T, SUM)                                              \
    int64_t NAME(const int64_t *ids, int64_t n, int64_t rows, const BASE_T *base,               \
                 const SIZE_T *sizes, const char *values, int64_t elem, int64_t d_max,         \
                 char *out) {                                                                  \
        const int64_t width = d_max * elem;                                                    \
        switch (width) {                                                                       \
            case 128: return NAME##_rows(ids, n, rows, base, sizes, values, elem, 128, out);   \
            case 256: return NAME##_rows(ids, n, rows, base, sizes, values, elem, 256, out);   \
            case 512: return NAME##_rows(ids, n, rows, base, sizes, values, elem, 512, out);   \
            default: return NAME##_rows(ids, n, rows, base, sizes, values, elem, width, out);  \
        }                                                                                      \
    }

DEFINE_GATHER(embnas_gather_8_32, int32_t, uint8_t, sum_before_u8)
DEFINE_GATHER(embnas_gather_8_64, int64_t, uint8_t, sum_before_u8)
DEFINE_GATHER(embnas_gather_16_32, int32_t, uint16_t, sum_before_u16)
DEFINE_GATHER(embnas_gather_16_64, int64_t, uint16_t, sum_before_u16)
