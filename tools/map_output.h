/*  map_output: `loom map --output-files DIR`: the output files of each result
    (loom_task_output_file) copied out of the client's private directory,
    which loom_map_destroy removes, into DIR/INDEX/NAME. A reduce map's
    combined result names its files "INDEX/NAME" already (loom.h): they go
    to the same places.  */

#ifndef LOOM_MAP_OUTPUT_H
#define LOOM_MAP_OUTPUT_H

#include <stddef.h>

#include <loom/loom.h>

//  Copy r's files under dir (made if missing). Returns 0, or a LOOM_E*
//  code with err (cap bytes) naming the file that could not be written.
int loom__map_output_save(const char *dir, const loom_result *r, char *err, size_t cap);

#endif
