/*  safe_paths: see safe_paths.h.  */

#include "safe_paths.h"

#include <loom/errors.h>
#include <stdio.h>
#include <string.h>

#define S_HASH_SIZE 32

bool
loom_file_name_valid(const char *name)
{
    if (!name || !*name || name[0] == '.')
        return false;
    size_t n = 0;
    for (const char *c = name; *c; c++, n++) {
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '_' || *c == '-' || *c == '.';
        if (!ok || n >= 255)
            return false;
    }
    return true;
}

int
loom_blob_path(char *out, size_t cap, const char *dir, const uint8_t *hash, size_t hash_len)
{
    if (!out || !dir || !*dir || !hash || hash_len != S_HASH_SIZE)
        return LOOM_EINVAL;
    static const char hex[] = "0123456789abcdef";
    char h[2 * S_HASH_SIZE + 1];
    for (size_t i = 0; i < S_HASH_SIZE; i++) {
        h[2 * i] = hex[hash[i] >> 4];
        h[2 * i + 1] = hex[hash[i] & 15];
    }
    h[2 * S_HASH_SIZE] = 0;
    int n = snprintf(out, cap, "%s/%.2s/%s", dir, h, h);
    if (n < 0 || (size_t)n >= cap)
        return LOOM_ETOOBIG;
    return 0;
}
