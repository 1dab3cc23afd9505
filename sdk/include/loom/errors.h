/*  loom error codes, shared by the runtime, the client API and plugins.

    Every error in loom is one of these negative codes. They travel in
    Error messages and in result status fields, so their values are frozen:
    new codes are appended, none is renumbered or removed.
    loom_strerror() (in libloom) names each one.  */

#ifndef LOOM_ERRORS_H
#define LOOM_ERRORS_H

#define LOOM_OK 0
#define LOOM_EINVAL -1     /* invalid argument or name */
#define LOOM_ENOMEM -2     /* out of memory, or a size over a limit */
#define LOOM_EPROTO -3     /* malformed or unexpected message */
#define LOOM_EABI -4       /* plugin built for another ABI, or no loom descriptor */
#define LOOM_ENOENT -5     /* no such plugin, task, share or file */
#define LOOM_ETIMEDOUT -6  /* the item ran past its timeout */
#define LOOM_ETASK -7      /* the task reported failure (loom_task_fail) */
#define LOOM_ECRASHED -8   /* the worker process died running the item */
#define LOOM_ENOTSUP -9    /* not supported */
#define LOOM_EIO -10       /* input/output or system error */
#define LOOM_ECANCELED -11 /* the map was cancelled */
#define LOOM_EVERSION -12  /* plugin version differs from the pinned one */
#define LOOM_ECONNECT -13  /* the broker cannot be reached or was lost */
#define LOOM_ETOOBIG -14   /* a message, item or output over the size limit */
#define LOOM_EAGAIN -15    /* nothing ready within the time given */
#define LOOM_ESTATE -16    /* call not valid in this state (e.g. submit after close) */
#define LOOM_EACCES -17    /* the broker refused this peer (CURVE key or mechanism) */
#define LOOM_EINIT -18     /* the plugin's init failed, timed out or crashed its process */

#endif
