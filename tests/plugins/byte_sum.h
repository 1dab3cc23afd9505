/*  byte_sum: the sum of a buffer's bytes, as testkit's shared_sum task
    reports it and as bench_share's in-process baseline computes it.  */

#ifndef LOOM_TEST_BYTE_SUM_H
#define LOOM_TEST_BYTE_SUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

//  The sum of n bytes mod 2^32, eight at a time (a byte-at-a-time loop
//  runs at ~2.5 GB/s a core: the shares benchmark would time the loop, not
//  the share): the even and odd bytes of each word add into 16-bit lanes,
//  which are folded into the sum before they can overflow (255 words of at
//  most 255 each).
static inline unsigned
loom_test_byte_sum(const unsigned char *p, size_t n)
{
    const uint64_t lanes = 0x00FF00FF00FF00FFull;
    unsigned sum = 0;
    size_t i = 0;
    while (n - i >= 8) {
        uint64_t even = 0, odd = 0;
        for (int k = 0; k < 255 && n - i >= 8; k++, i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            even += w & lanes;
            odd += (w >> 8) & lanes;
        }
        for (int s = 0; s < 64; s += 16)
            sum += (unsigned)((even >> s) & 0xFFFF) + (unsigned)((odd >> s) & 0xFFFF);
    }
    for (; i < n; i++)
        sum += p[i];
    return sum;
}

#endif
