#!/bin/bash
# test_install: `meson install` puts loom, libloom.so, the public headers,
# loom.pc and loom-plugin.pc in place, and they work from there: a plugin
# builds with `pkg-config --cflags loom-plugin`, a client program builds with
# `pkg-config --cflags --libs loom` and runs a map on the embedded cluster
# with the installed `loom` and plugins. Usage: test_install.sh BUILD_DIR
set -euo pipefail

BUILD=${1:?usage: test_install.sh BUILD_DIR}
TMP=$(mktemp -d "/tmp/loom-test-$$-install-XXXXXX")
trap 'rm -rf "$TMP"' EXIT

meson install -C "$BUILD" --destdir "$TMP/root" --no-rebuild --quiet >"$TMP/install.log" 2>&1 ||
    { cat "$TMP/install.log"; exit 1; }

prefix=$(meson introspect "$BUILD" --buildoptions |
    python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"))')
root="$TMP/root$prefix"
status=0
need() {
    local found
    found=$(find "$root" -path "*/$1" | head -n 1)
    if [[ -z $found ]]; then
        echo "not installed: $1"
        status=1
    fi
}
need bin/loom
need "libloom.so"
need include/loom/loom.h
need include/loom/plugin.h
need include/loom/errors.h
need pkgconfig/loom.pc
need pkgconfig/loom-plugin.pc
need loom/plugins/wordcount.so
need loom/plugins/squares.so
[[ $status == 0 ]] || exit 1

pcdir=$(dirname "$(find "$root" -name loom-plugin.pc | head -n 1)")
libdir=$(dirname "$(find "$root" -name libloom.so | head -n 1)")
export PKG_CONFIG_PATH=$pcdir
pc() { pkg-config --define-variable=prefix="$root" "$@"; }

# A plugin, built as a user would, against the installed SDK only.
cflags=$(pc --cflags loom-plugin)
[[ $cflags == *"$root"* ]] || { echo "loom-plugin cflags do not point into the install: $cflags"; exit 1; }
tpl=$(find "$root" -path '*loom/template/plugin.c' | head -n 1)
[[ -n $tpl ]] || { echo "plugin template not installed"; exit 1; }
# shellcheck disable=SC2086
cc -std=c11 -shared -fPIC $cflags "$tpl" -o "$TMP/template.so"
"$root/bin/loom" plugin inspect "$TMP/template.so" >"$TMP/inspect.out"
grep -q "abi" "$TMP/inspect.out" || { cat "$TMP/inspect.out"; exit 1; }

# A client program against the installed libloom, on the embedded cluster
# with the installed loom and plugins.
cat >"$TMP/client.c" <<'C'
#include <loom/loom.h>
#include <stdio.h>
#include <string.h>
int
main(void)
{
    loom_client_opts o = {.local_workers = 2};
    loom_client *c = loom_client_new(NULL, &o);
    if (!c)
        return 1;
    loom_pipeline *p = loom_pipeline_new(c, "install");
    loom_map_opts mo = {.reduce = true};
    loom_map *m = loom_map_new(p, "squares", "square_text", &mo);
    char buf[16];
    for (int i = 1; i <= 100; i++) {
        int n = snprintf(buf, sizeof buf, "%d", i);
        if (loom_map_submit(m, buf, (size_t)n) != 0)
            return 1;
    }
    loom_map_close(m);
    loom_result r;
    int rc;
    while ((rc = loom_map_next(m, &r, 10000)) == 1)
        if (r.index == LOOM_REDUCED_INDEX)
            printf("%.*s\n", (int)r.len, (const char *)r.data);
    loom_map_destroy(&m);
    loom_pipeline_destroy(&p);
    loom_client_destroy(&c);
    return rc == 0 ? 0 : 1;
}
C
# shellcheck disable=SC2046
cc -std=c11 "$TMP/client.c" -o "$TMP/client" $(pc --cflags --libs loom)
plugdir=$(dirname "$(find "$root" -name squares.so | head -n 1)")
out=$(LD_LIBRARY_PATH=$libdir LOOM_EXE="$root/bin/loom" LOOM_PLUGIN_PATH=$plugdir \
    timeout -k 5 60 "$TMP/client")
[[ $out == 338350 ]] || { echo "installed client printed [$out], want 338350"; exit 1; }
echo "install ok: $root"
