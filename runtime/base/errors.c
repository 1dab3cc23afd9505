/*  errors: names of the LOOM_E* codes.  */

#include <loom/loom.h>

const char *
loom_strerror(int err)
{
    switch (err) {
    case LOOM_OK: return "success";
    case LOOM_EINVAL: return "invalid argument";
    case LOOM_ENOMEM: return "out of memory or over a size limit";
    case LOOM_EPROTO: return "malformed or unexpected message";
    case LOOM_EABI: return "plugin ABI mismatch";
    case LOOM_ENOENT: return "no such plugin, task, share or file";
    case LOOM_ETIMEDOUT: return "timed out";
    case LOOM_ETASK: return "task failed";
    case LOOM_ECRASHED: return "worker process crashed";
    case LOOM_ENOTSUP: return "not supported";
    case LOOM_EIO: return "input/output error";
    case LOOM_ECANCELED: return "cancelled";
    case LOOM_EVERSION: return "plugin version mismatch";
    case LOOM_ECONNECT: return "broker unreachable or lost";
    case LOOM_ETOOBIG: return "over the size limit";
    case LOOM_EAGAIN: return "nothing ready in time";
    case LOOM_ESTATE: return "not valid in this state";
    case LOOM_EACCES: return "refused by the broker (CURVE key or mechanism)";
    case LOOM_EINIT: return "plugin init failed";
    default: return "unknown error";
    }
}

const char *
loom_version(void)
{
    return "0.1.0";
}
