/*  safe_paths: names from peers made safe before they touch the filesystem.

    Plugin and task names are checked by loom_name_valid (base.h). This is
    for the names of shares, attached files and output files, which become
    file names in a worker's directories, and for blob paths, which are
    built only from a verified digest, never from a name a peer chose.  */

#ifndef LOOM_SAFE_PATHS_H
#define LOOM_SAFE_PATHS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  A share or file name: 1 to 255 bytes of [A-Za-z0-9._-], not starting
//  with '.' (so never ".", ".." or a hidden file) and without '/'.
bool loom_file_name_valid(const char *name);

//  The path of a blob in store directory dir: DIR/HH/HHHH...(64 hex), from
//  a hash of exactly hash_len == 32 bytes (SHA-256). Returns 0, or
//  LOOM_EINVAL (no hash, wrong length, no dir), LOOM_ETOOBIG (does not fit
//  in cap bytes).
int loom_blob_path(char *out, size_t cap, const char *dir, const uint8_t *hash, size_t hash_len);

#endif
