/*  loom keygen: make a CURVE certificate for a broker, worker or client.

    loom keygen NAME

    Writes NAME (the public certificate: copy it into the broker's
    --curve-dir to let this peer in, or hand the broker's to its clients as
    --server-key) and NAME_secret (both keys, mode 0600: keep it where only
    this peer can read it). Refuses to overwrite either.  */

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"

int
loom_cmd_keygen(int argc, char **argv)
{
    bool help = argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"));
    if (help || argc != 2 || !*argv[1] || argv[1][0] == '-') {
        fprintf(stderr, "usage: loom keygen NAME   (writes NAME and NAME_secret)\n");
        return help ? 0 : 2;
    }
    const char *name = argv[1];
    char secret[4096];
    if ((size_t)snprintf(secret, sizeof secret, "%s_secret", name) >= sizeof secret) {
        fprintf(stderr, "loom keygen: name too long\n");
        return 2;
    }
    if (access(name, F_OK) == 0 || access(secret, F_OK) == 0) {
        fprintf(stderr, "loom keygen: %s or %s already exists: not overwriting a key\n", name,
                secret);
        return 1;
    }
    zcert_t *cert = zcert_new();
    if (!cert) {
        fprintf(stderr, "loom keygen: cannot make a key pair\n");
        return 1;
    }
    zcert_set_meta(cert, "name", "%s", name);
    zcert_set_meta(cert, "created-by", "loom keygen");
    //  zcert_save writes NAME (public) and NAME_secret; the secret file is
    //  created with the process umask: tighten both the umask and the mode.
    mode_t old = umask(077);
    int rc = zcert_save(cert, name);
    umask(old);
    if (rc == 0) {
        chmod(secret, 0600);
        chmod(name, 0644);
    }
    if (rc != 0) {
        fprintf(stderr, "loom keygen: cannot write %s: %s\n", name, strerror(errno));
        zcert_destroy(&cert);
        return 1;
    }
    printf("%s\n", zcert_public_txt(cert));
    fprintf(stderr, "loom keygen: wrote %s (public) and %s (secret, keep it private)\n", name,
            secret);
    zcert_destroy(&cert);
    return 0;
}
