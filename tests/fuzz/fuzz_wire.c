/*  fuzz_wire: libFuzzer target for the wire codec's decoder.

    Any input must be refused with LOOM_EPROTO (or LOOM_ENOMEM) or decode;
    a decoded message must encode again, decode again, and encode to the
    same bytes the second time (encoding is deterministic, so decode and
    encode agree on every field). Encoding reads every decoded string and
    span, so ASan sees any pointer the decoder let out of its buffer. The
    fast reader of plain batches must agree with the FlatBuffers verifier:
    the same answer, and the same message (the same bytes once encoded).
    A received frame (loom_wire_decode_frame, which verifies an aligned
    frame where it is) must agree with both the same way.  */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

#include <zmq.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
s_die(const char *what, int rc)
{
    fprintf(stderr, "fuzz_wire: %s (rc %d)\n", what, rc);
    abort();
}

//  Another decoder's answer (rc, got) must be m's: refused both (m NULL),
//  or both decoded to messages that encode to the same bytes. who names
//  the other decoder. Frees got.
static void
s_agree(int rc, loom_msg *got, const loom_msg *m, const char *who)
{
    if (rc == LOOM_ENOMEM)
        return;
    if ((rc == 0) != (m != NULL)) {
        fprintf(stderr, "fuzz_wire: %s: ", who);
        s_die("decodes differently", rc);
    }
    if (!m)
        return;
    void *ea = NULL, *eb = NULL;
    size_t alen = 0, blen = 0;
    if (loom_wire_encode(m, &ea, &alen) != 0 || loom_wire_encode(got, &eb, &blen) != 0)
        s_die("a decoded message does not encode", 0);
    if (alen != blen || memcmp(ea, eb, alen) != 0) {
        fprintf(stderr, "fuzz_wire: %s: ", who);
        s_die("reads a different message", 0);
    }
    free(ea);
    free(eb);
    loom_msg_destroy(&got);
}

//  The verifier alone against m (the fast reader's answer, NULL: refused).
static void
s_check_verified(const uint8_t *data, size_t size, const loom_msg *m)
{
    loom_msg *v = NULL;
    int rc = loom__wire_decode_verified(data, size, &v);
    s_agree(rc, v, m, "the verifier, against the fast reader");
}

//  Data as a received frame (aligned: libzmq's own buffer, so every size
//  takes the in-place path) against m, a copy's answer.
static void
s_check_frame(const uint8_t *data, size_t size, const loom_msg *m)
{
    loom__wire_in_place_min = 0;
    zmq_msg_t frame;
    if (zmq_msg_init_size(&frame, size) != 0)
        return;
    if (size)
        memcpy(zmq_msg_data(&frame), data, size);
    loom_msg *f = NULL;
    int rc = loom_wire_decode_frame(&frame, &f);
    zmq_msg_close(&frame);
    s_agree(rc, f, m, "a received frame, against a copy");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    loom_msg *m = NULL;
    int rc = loom_wire_decode(data, size, &m);
    if (rc != LOOM_ENOMEM) {
        s_check_verified(data, size, m);
        s_check_frame(data, size, m);
    }
    if (rc != 0) {
        if (rc != LOOM_EPROTO && rc != LOOM_ENOMEM)
            s_die("decode returned an unexpected code", rc);
        if (m)
            s_die("refused message handed out", rc);
        return 0;
    }
    if (m->type <= LOOM_MSG_NONE || m->type >= LOOM_MSG_COUNT_)
        s_die("decoded an unknown type", m->type);

    void *buf1 = NULL, *buf2 = NULL;
    size_t len1, len2;
    rc = loom_wire_encode(m, &buf1, &len1);
    if (rc != 0)
        s_die("a decoded message does not encode", rc);
    loom_msg *m2 = NULL;
    rc = loom_wire_decode(buf1, len1, &m2);
    if (rc != 0)
        s_die("our own encoding does not decode", rc);
    if (m2->type != m->type || m2->proto != LOOM_PROTO_VERSION)
        s_die("type or proto changed on the way", m2->type);
    rc = loom_wire_encode(m2, &buf2, &len2);
    if (rc != 0)
        s_die("re-encoding failed", rc);
    if (len1 != len2 || memcmp(buf1, buf2, len1) != 0)
        s_die("decode and encode disagree", 0);
    free(buf1);
    free(buf2);
    loom_msg_destroy(&m2);
    loom_msg_destroy(&m);
    return 0;
}
