#!/usr/bin/env python3
"""check_includes: the architecture's arrows, checked over the #include lines.

The build already keeps each part to the include directories it may use
(DESIGN.md section 1; runtime/*/meson.build), so a forbidden include fails
to compile there. This names every include that crosses a forbidden edge
even where an include path would let it slip (a header found next to the
file, a part given more directories than it needs): each header an
#include names is found in the tree by its path, its part looked up, and
the edge checked against ALLOWED below. Tests may include anything.

    tests/layout/check_includes.py [ROOT]     exit status 1 if any edge is forbidden
"""
import os
import re
import sys

# Part of a file: the first prefix (of its path from the root) that matches.
PARTS = [
    ("runtime/include/", "public"),   # loom.h: the client API
    ("runtime/base/", "base"),
    ("runtime/wire/", "wire"),
    ("runtime/blob/", "blob"),
    ("runtime/client/", "client"),
    ("runtime/worker/", "worker"),
    ("broker/include/", "broker_iface"),  # broker.h: what embedded mode and tools use
    ("broker/", "broker"),
    ("sdk/", "sdk"),
    ("plugins/", "plugins"),
    ("tools/", "tools"),
]

# What each part may include (besides system headers): base <- wire <- blob
# <- {client, worker, broker}; the client reaches the broker through
# broker.h only; plugins and the SDK see only sdk/include.
ALLOWED = {
    "base": {"base", "sdk", "public"},   # errors.c defines loom.h's loom_strerror, loom_version
    "wire": {"base", "wire", "sdk", "generated"},
    "blob": {"base", "wire", "blob", "sdk"},
    "client": {"base", "wire", "blob", "client", "broker_iface", "public", "sdk"},
    "worker": {"base", "wire", "blob", "worker", "sdk"},
    "broker": {"base", "wire", "blob", "broker", "broker_iface", "sdk"},
    "broker_iface": {"base", "wire", "sdk"},
    "public": {"public", "sdk"},
    "sdk": {"sdk"},
    "plugins": {"sdk"},
    "tools": {"base", "wire", "blob", "worker", "broker_iface", "public", "sdk", "tools"},
}

GENERATED = {"loom_generated.h"}  # flatc's output, in the build tree (runtime/wire)
SOURCE = re.compile(r"\.(c|cc|h)$")
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def part_of(rel):
    for prefix, part in PARTS:
        if rel.startswith(prefix):
            return part
    return None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(__file__), "..", ".."))
    files = []
    by_name = {}
    for top in ("runtime", "broker", "sdk", "plugins", "tools"):
        for d, _, names in os.walk(os.path.join(root, top)):
            for n in names:
                if SOURCE.search(n):
                    rel = os.path.relpath(os.path.join(d, n), root)
                    files.append(rel)
                    by_name.setdefault(n, []).append(rel)
    bad = []
    checked = 0
    for rel in sorted(files):
        src = part_of(rel)
        if src is None:
            continue
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                kind, name = m.groups()
                if os.path.basename(name) in GENERATED:
                    dst = "generated"
                elif kind == "<":
                    if not name.startswith("loom/"):
                        continue  # a system or library header
                    hits = [h for h in (os.path.join("runtime/include", name),
                                        os.path.join("sdk/include", name))
                            if os.path.exists(os.path.join(root, h))]
                    if not hits:
                        bad.append("%s:%d: <%s> is no header of loom's" % (rel, lineno, name))
                        continue
                    dst = part_of(hits[0])
                else:
                    here = os.path.normpath(os.path.join(os.path.dirname(rel), name))
                    if os.path.exists(os.path.join(root, here)):
                        target = here
                    else:
                        hits = by_name.get(os.path.basename(name), [])
                        if len(hits) != 1:
                            bad.append('%s:%d: "%s" is %s' % (
                                rel, lineno, name,
                                "not in the tree" if not hits else "ambiguous: " + " ".join(hits)))
                            continue
                        target = hits[0]
                    dst = part_of(target)
                checked += 1
                if dst not in ALLOWED[src]:
                    bad.append('%s:%d: %s includes "%s" of %s: %s may use only %s' % (
                        rel, lineno, src, name, dst, src, ", ".join(sorted(ALLOWED[src]))))
    for b in bad:
        print(b)
    print("check_includes: %d includes checked in %d files, %d forbidden" %
          (checked, len(files), len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
