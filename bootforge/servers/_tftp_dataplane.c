/* Native data plane for lockstep TFTP reads: the steady DATA/ACK phase of one transfer runs in a
 * pthread of its own, with blocking recvfrom + sendto and no Python API (no GIL) in that thread.
 *
 * Why: a lockstep transfer is one small datagram each way per block, so the cost per round trip
 * decides throughput. Measured on the bench (bench/netboot_tftp.py), even a minimal blocking
 * Python loop stays under tftpd-hpa at one client and Python threads collapse under the GIL with
 * many; a thread per transfer in C, which is tftpd-hpa's own shape (it forks per transfer),
 * reaches it.
 *
 * The Python shell (bootforge/servers/tftp.py) keeps requests, negotiation, windowsize > 1,
 * netascii and virtual files. It hands over a transfer right after sending DATA block 1 and gets
 * one result record back; this file replaces TftpTransfer only on that hot path, so it keeps the
 * core's rules (bootforge/netboot/tftp/_transfer.py):
 *   - an ACK of the outstanding block moves on; any other ACK is stale and is ignored, never
 *     answered (RFC 1350's Sorcerer's Apprentice); block numbers wrap at 65536;
 *   - a datagram from another address or port gets ERROR 5 and the transfer goes on;
 *   - ERROR from the client ends the transfer (client_error); anything else is dropped;
 *   - a timeout retransmits the outstanding block, up to max_retries, then timed_out. The
 *     deadline is tracked on the monotonic clock, so junk datagrams cannot keep a transfer alive;
 *   - a file that reads short is a read error (ERROR 0 "file changed while reading").
 *
 * Ownership: the socket and the file stay Python's. A thread never closes them, and Python closes
 * them only after drain() returned the thread's record (the record is the thread's last use).
 * Records go through a mutex-protected queue, and an eventfd wakes the asyncio loop.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum { OUT_COMPLETED, OUT_CLIENT_ERROR, OUT_TIMED_OUT, OUT_READ_ERROR, OUT_CANCELLED };

#define MIN_BLKSIZE 8
#define MAX_BLKSIZE 65464
#define READ_AHEAD (64 * 1024) /* bytes per pread: one system call per ~44 blocks of 1468 */
#define MAX_SLOTS 1024         /* IOV_MAX: one preadv */
#define RECV_BYTES 65536       /* a whole UDP datagram, so ERROR messages arrive intact */
#define THREAD_STACK (256 * 1024)
#define TIMEOUT_SLACK_US 5000 /* re-arm SO_RCVTIMEO only when the deadline moved more */

static const char UNKNOWN_TID[] = "\0\5\0\5unknown transfer ID";      /* + its NUL */
static const char READ_FAILED[] = "\0\5\0\0file changed while reading"; /* + its NUL */

struct plane;

typedef struct job {
    struct job *prev, *next; /* the running list, then (next only) the done queue */
    struct plane *plane;
    pthread_t thread;
    long long token;
    int sock, file;
    struct sockaddr_storage client;
    socklen_t client_len;
    uint32_t blksize;
    uint64_t size, last_block, acked, sent;
    int64_t timeout_us;
    int max_retries, retries;
    int stop; /* set under the plane's lock, read with __atomic loads */
    double started;
    /* the result */
    int outcome;
    uint64_t retransmits, dropped, stale_acks, foreign_tid, send_errors, socket_errors;
    double elapsed;
    unsigned char *error; /* the client's ERROR datagram, for client_error */
    size_t error_len;
} job;

typedef struct plane {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t idle; /* signalled when `running` drops to 0 */
    int efd;
    int running;
    job *active;                /* running jobs */
    job *done_head, *done_tail; /* finished, not yet drained */
} plane;

/* The read-ahead buffer: `nslots` packets of blksize + 4 bytes, blocks base+1 .. base+filled. */
typedef struct {
    unsigned char *slots;
    struct iovec *iov;
    size_t stride;
    uint32_t nslots, filled;
    uint64_t base;
} chunk;

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t monotonic_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* -- the transfer thread -------------------------------------------------------------------- */

static uint64_t tail_bytes(const job *j) { return j->size - (j->last_block - 1) * j->blksize; }

static int refill(job *j, chunk *c, uint64_t first) {
    uint64_t count = j->last_block - first + 1;
    if (count > c->nslots) count = c->nslots;
    size_t wanted = 0;
    for (uint64_t i = 0; i < count; i++) {
        size_t len = first + i == j->last_block ? (size_t)tail_bytes(j) : j->blksize;
        c->iov[i].iov_base = c->slots + i * c->stride + 4;
        c->iov[i].iov_len = len;
        wanted += len;
    }
    ssize_t got;
    do {
        got = wanted ? preadv(j->file, c->iov, (int)count, (off_t)((first - 1) * j->blksize)) : 0;
    } while (got < 0 && errno == EINTR);
    if (got < 0 || (size_t)got != wanted) return -1; /* the file shrank or failed */
    c->base = first - 1;
    c->filled = (uint32_t)count;
    return 0;
}

static void send_packet(job *j, const void *data, size_t len, const struct sockaddr *to,
                        socklen_t to_len) {
    /* A full buffer loses the packet like a wire would: the timeout recovers it. */
    if (sendto(j->sock, data, len, 0, to, to_len) < 0) j->send_errors++;
}

static int send_block(job *j, chunk *c, uint64_t block) {
    if (block <= c->base || block > c->base + c->filled) {
        if (refill(j, c, block) < 0) return -1;
    }
    unsigned char *packet = c->slots + (block - c->base - 1) * c->stride;
    packet[2] = (unsigned char)(block >> 8);
    packet[3] = (unsigned char)block;
    size_t len = 4 + (block == j->last_block ? (size_t)tail_bytes(j) : j->blksize);
    send_packet(j, packet, len, (struct sockaddr *)&j->client, j->client_len);
    return 0;
}

static int same_peer(const job *j, const struct sockaddr_storage *from) {
    if (from->ss_family != j->client.ss_family) return 0;
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)from, *b = (const void *)&j->client;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const void *)from, *b = (const void *)&j->client;
    return a->sin6_port == b->sin6_port && a->sin6_scope_id == b->sin6_scope_id &&
           memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0;
}

static void set_receive_timeout(job *j, int64_t us) {
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    if (setsockopt(j->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) j->socket_errors++;
}

/* One datagram from the client's TID; returns 1 when it ended the transfer. `deadline` moves
 * on progress. */
static int on_datagram(job *j, chunk *c, const unsigned char *p, ssize_t n, int64_t now,
                       int64_t *deadline) {
    if (n >= 4 && p[0] == 0 && p[1] == 4 && n == 4) {
        uint64_t delta = (uint64_t)(((p[2] << 8 | p[3]) - (j->acked & 0xFFFF)) & 0xFFFF);
        if (delta == 0 || delta > j->sent - j->acked) {
            j->stale_acks++;
            return 0;
        }
        j->acked += delta;
        j->retries = 0;
        if (j->acked == j->last_block) {
            j->outcome = OUT_COMPLETED;
            return 1;
        }
        j->sent = j->acked + 1;
        *deadline = now + j->timeout_us;
        if (send_block(j, c, j->sent) < 0) {
            send_packet(j, READ_FAILED, sizeof READ_FAILED, (struct sockaddr *)&j->client,
                        j->client_len);
            j->outcome = OUT_READ_ERROR;
            return 1;
        }
        return 0;
    }
    if (n >= 5 && p[0] == 0 && p[1] == 5) { /* shorter is a malformed ERROR: dropped */
        j->error = malloc((size_t)n);
        if (j->error != NULL) {
            memcpy(j->error, p, (size_t)n);
            j->error_len = (size_t)n;
        }
        j->outcome = OUT_CLIENT_ERROR;
        return 1;
    }
    j->dropped++;
    return 0;
}

static int on_timeout(job *j, chunk *c, int64_t now, int64_t *deadline) {
    if (++j->retries > j->max_retries) {
        j->outcome = OUT_TIMED_OUT;
        return 1;
    }
    j->retransmits += j->sent - j->acked;
    *deadline = now + j->timeout_us;
    send_block(j, c, j->sent); /* in the buffer already: it was sent from there */
    return 0;
}

static void serve(job *j, chunk *c, unsigned char *buf) {
    int64_t deadline = (int64_t)(j->started * 1e6) + j->timeout_us, armed = j->timeout_us;
    set_receive_timeout(j, armed);
    for (;;) {
        int64_t now = monotonic_us(), left = deadline - now;
        if (left > 0 && (left < armed - TIMEOUT_SLACK_US || left > armed)) {
            armed = left;
            set_receive_timeout(j, armed);
        }
        struct sockaddr_storage from;
        socklen_t from_len = sizeof from;
        ssize_t n = left > 0 ? recvfrom(j->sock, buf, RECV_BYTES, 0, (struct sockaddr *)&from, &from_len)
                             : -1;
        int err = errno;
        now = monotonic_us();
        if (__atomic_load_n(&j->stop, __ATOMIC_ACQUIRE)) { /* shutdown() woke recvfrom */
            j->outcome = OUT_CANCELLED;
            return;
        }
        if (n < 0) {
            if (left > 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR) j->socket_errors++;
        } else if (!same_peer(j, &from)) {
            j->foreign_tid++;
            send_packet(j, UNKNOWN_TID, sizeof UNKNOWN_TID, (struct sockaddr *)&from, from_len);
        } else if (on_datagram(j, c, buf, n, now, &deadline)) {
            return;
        }
        if (now >= deadline && on_timeout(j, c, now, &deadline)) return;
    }
}

static void finish(job *j) {
    plane *pl = j->plane;
    pthread_mutex_lock(&pl->lock);
    if (j->prev != NULL) j->prev->next = j->next;
    else pl->active = j->next;
    if (j->next != NULL) j->next->prev = j->prev;
    j->next = j->prev = NULL;
    if (pl->done_tail != NULL) pl->done_tail->next = j;
    else pl->done_head = j;
    pl->done_tail = j;
    uint64_t one = 1;
    if (write(pl->efd, &one, sizeof one) < 0) { /* cannot fail short of a bug: EAGAIN at 2^64-1 */
    }
    if (--pl->running == 0) pthread_cond_broadcast(&pl->idle);
    pthread_mutex_unlock(&pl->lock);
}

static void *run(void *arg) {
    job *j = arg;
    chunk c = {0};
    c.stride = (size_t)j->blksize + 4;
    uint64_t slots = READ_AHEAD / j->blksize;
    slots = slots < 1 ? 1 : slots > MAX_SLOTS ? MAX_SLOTS : slots;
    c.nslots = (uint32_t)(slots < j->last_block ? slots : j->last_block);
    c.slots = malloc(c.stride * c.nslots);
    c.iov = malloc(sizeof *c.iov * c.nslots);
    unsigned char *buf = malloc(RECV_BYTES);
    int flags = fcntl(j->sock, F_GETFL);
    if (c.slots == NULL || c.iov == NULL || buf == NULL || flags < 0 ||
        fcntl(j->sock, F_SETFL, flags & ~O_NONBLOCK) < 0) {
        j->socket_errors++;
        j->outcome = OUT_READ_ERROR;
    } else {
        for (uint32_t i = 0; i < c.nslots; i++) {
            c.slots[i * c.stride] = 0;
            c.slots[i * c.stride + 1] = 3; /* DATA */
        }
        if (refill(j, &c, j->sent) < 0) { /* the outstanding block, for a retransmission */
            send_packet(j, READ_FAILED, sizeof READ_FAILED, (struct sockaddr *)&j->client,
                        j->client_len);
            j->outcome = OUT_READ_ERROR;
        } else {
            serve(j, &c, buf);
        }
    }
    free(c.slots);
    free(c.iov);
    free(buf);
    j->elapsed = monotonic() - j->started;
    finish(j);
    return NULL;
}

/* -- the Python type ------------------------------------------------------------------------ */

static void free_job(job *j) {
    free(j->error);
    free(j);
}

/* Stop every running job and wait up to `timeout` seconds (forever if < 0); the GIL must be
 * released. Returns how many still run. */
static int stop_all(plane *pl, double timeout) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    if (timeout >= 0) {
        double secs = (double)until.tv_nsec / 1e9 + timeout;
        until.tv_sec += (time_t)secs;
        until.tv_nsec = (long)((secs - (double)(time_t)secs) * 1e9);
    }
    pthread_mutex_lock(&pl->lock);
    for (job *j = pl->active; j != NULL; j = j->next) {
        __atomic_store_n(&j->stop, 1, __ATOMIC_RELEASE);
        /* Wakes a blocked recvfrom on Linux (it returns 0); SHUT_WR fails later sends at once. */
        shutdown(j->sock, SHUT_RDWR);
    }
    int rc = 0;
    while (pl->running > 0 && rc != ETIMEDOUT) {
        rc = timeout >= 0 ? pthread_cond_timedwait(&pl->idle, &pl->lock, &until)
                          : pthread_cond_wait(&pl->idle, &pl->lock);
    }
    int left = pl->running;
    pthread_mutex_unlock(&pl->lock);
    return left;
}

static PyObject *plane_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, ":DataPlane") || (kwds != NULL && PyDict_Size(kwds) > 0)) {
        PyErr_SetString(PyExc_TypeError, "DataPlane() takes no arguments");
        return NULL;
    }
    plane *pl = (plane *)type->tp_alloc(type, 0);
    if (pl == NULL) return NULL;
    pl->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pl->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(pl);
        return NULL;
    }
    pthread_mutex_init(&pl->lock, NULL);
    pthread_cond_init(&pl->idle, NULL);
    return (PyObject *)pl;
}

static PyObject *plane_fileno(plane *pl, PyObject *Py_UNUSED(ignored)) {
    if (pl->efd < 0) {
        PyErr_SetString(PyExc_ValueError, "DataPlane is closed");
        return NULL;
    }
    return PyLong_FromLong(pl->efd);
}

static int start_thread(job *j) {
    pthread_attr_t attr;
    sigset_t all, old;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK);
    /* Signals belong to the interpreter's main thread: the transfer thread blocks them all. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&j->thread, &attr, run, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return rc;
}

static PyObject *plane_start(plane *pl, PyObject *args, PyObject *kwds) {
    static char *names[] = {"token", "sock", "file", "client", "blksize", "size", "timeout",
                            "max_retries", "retries", "acked", "sent", NULL};
    long long token;
    int sock, file, max_retries, retries;
    Py_buffer client;
    unsigned int blksize;
    unsigned long long size, acked, sent;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Liiy*IKdiiKK:start", names, &token, &sock,
                                     &file, &client, &blksize, &size, &timeout, &max_retries,
                                     &retries, &acked, &sent))
        return NULL;
    const char *bad = NULL;
    if (pl->efd < 0) bad = "DataPlane is closed";
    else if (client.len < (Py_ssize_t)sizeof(sa_family_t) || client.len > (Py_ssize_t)sizeof(struct sockaddr_storage))
        bad = "client must be a struct sockaddr";
    else if (blksize < MIN_BLKSIZE || blksize > MAX_BLKSIZE) bad = "blksize out of range";
    else if (sent != acked + 1 || sent > size / blksize + 1) bad = "sent must be acked + 1, within the file";
    else if (!(timeout > 0) || timeout > 3600 || max_retries < 0 || retries < 0) bad = "bad timeout";
    job *j = bad ? NULL : calloc(1, sizeof *j);
    if (j == NULL) {
        PyBuffer_Release(&client);
        if (bad) PyErr_SetString(PyExc_ValueError, bad);
        else PyErr_NoMemory();
        return NULL;
    }
    memcpy(&j->client, client.buf, (size_t)client.len);
    j->client_len = (socklen_t)client.len;
    PyBuffer_Release(&client);
    if (j->client.ss_family != AF_INET && j->client.ss_family != AF_INET6) {
        free_job(j);
        PyErr_SetString(PyExc_ValueError, "client must be AF_INET or AF_INET6");
        return NULL;
    }
    j->plane = pl;
    j->token = token;
    j->sock = sock;
    j->file = file;
    j->blksize = blksize;
    j->size = size;
    j->last_block = size / blksize + 1;
    j->acked = acked;
    j->sent = sent;
    j->timeout_us = (int64_t)(timeout * 1e6);
    j->max_retries = max_retries;
    j->retries = retries;
    j->started = monotonic();
    pthread_mutex_lock(&pl->lock);
    int rc = start_thread(j);
    if (rc == 0) {
        j->next = pl->active;
        if (pl->active != NULL) pl->active->prev = j;
        pl->active = j;
        pl->running++;
    }
    pthread_mutex_unlock(&pl->lock); /* the thread links itself out under this lock: after us */
    if (rc != 0) {
        free_job(j);
        Py_RETURN_FALSE; /* the caller serves this transfer itself */
    }
    Py_RETURN_TRUE;
}

static PyObject *record(job *j) {
    return Py_BuildValue("(LiKKKKKKKdy#)", j->token, j->outcome, (unsigned long long)j->acked,
                         (unsigned long long)j->retransmits, (unsigned long long)j->dropped,
                         (unsigned long long)j->stale_acks, (unsigned long long)j->foreign_tid,
                         (unsigned long long)j->send_errors, (unsigned long long)j->socket_errors,
                         j->elapsed, j->error != NULL ? (const char *)j->error : "",
                         (Py_ssize_t)j->error_len);
}

static job *take_done(plane *pl) {
    pthread_mutex_lock(&pl->lock);
    job *done = pl->done_head;
    pl->done_head = pl->done_tail = NULL;
    if (pl->efd >= 0) {
        uint64_t count;
        if (read(pl->efd, &count, sizeof count) < 0) { /* EAGAIN: nothing was signalled */
        }
    }
    pthread_mutex_unlock(&pl->lock);
    /* Each thread's last act was to queue itself: joining it now waits for its exit only. */
    Py_BEGIN_ALLOW_THREADS
    for (job *j = done; j != NULL; j = j->next) pthread_join(j->thread, NULL);
    Py_END_ALLOW_THREADS
    return done;
}

static PyObject *plane_drain(plane *pl, PyObject *Py_UNUSED(ignored)) {
    job *done = take_done(pl);
    PyObject *out = PyList_New(0);
    while (done != NULL) {
        job *j = done;
        done = j->next;
        PyObject *item = out != NULL ? record(j) : NULL;
        if (item == NULL || PyList_Append(out, item) < 0) Py_CLEAR(out);
        Py_XDECREF(item);
        free_job(j);
    }
    return out;
}

static PyObject *plane_stop(plane *pl, PyObject *args) {
    double timeout;
    if (!PyArg_ParseTuple(args, "d:stop", &timeout)) return NULL;
    int left;
    Py_BEGIN_ALLOW_THREADS
    left = stop_all(pl, timeout < 0 ? 0 : timeout);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(left);
}

static PyObject *plane_close(plane *pl, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&pl->lock);
    int running = pl->running;
    if (running == 0 && pl->efd >= 0) {
        close(pl->efd);
        pl->efd = -1;
    }
    pthread_mutex_unlock(&pl->lock);
    if (running > 0) {
        PyErr_SetString(PyExc_RuntimeError, "transfers are still running: stop() them first");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *plane_running(plane *pl, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&pl->lock);
    int running = pl->running;
    pthread_mutex_unlock(&pl->lock);
    return PyLong_FromLong(running);
}

static void plane_dealloc(plane *pl) {
    /* Threads point at this object: they must be gone before it is. */
    Py_BEGIN_ALLOW_THREADS
    stop_all(pl, -1);
    Py_END_ALLOW_THREADS
    job *done = take_done(pl);
    while (done != NULL) {
        job *j = done;
        done = j->next;
        free_job(j);
    }
    if (pl->efd >= 0) close(pl->efd);
    pthread_cond_destroy(&pl->idle);
    pthread_mutex_destroy(&pl->lock);
    Py_TYPE(pl)->tp_free((PyObject *)pl);
}

static PyMethodDef plane_methods[] = {
    {"fileno", (PyCFunction)plane_fileno, METH_NOARGS, "The eventfd that is readable when drain() has records."},
    {"start", (PyCFunction)(void (*)(void))plane_start, METH_VARARGS | METH_KEYWORDS,
     "Run one transfer's data phase in a thread; False if no thread could be made."},
    {"drain", (PyCFunction)plane_drain, METH_NOARGS, "The records of finished transfers."},
    {"stop", (PyCFunction)plane_stop, METH_VARARGS,
     "Cancel running transfers and wait up to `timeout` s; returns how many still run."},
    {"close", (PyCFunction)plane_close, METH_NOARGS, "Close the eventfd (nothing may run)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef plane_getset[] = {
    {"running", (getter)plane_running, NULL, "Transfers whose thread has not finished.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PlaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bootforge.servers._tftp_dataplane.DataPlane",
    .tp_basicsize = sizeof(plane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Threads that run lockstep TFTP data phases; see the module source.",
    .tp_new = plane_new,
    .tp_dealloc = (destructor)plane_dealloc,
    .tp_methods = plane_methods,
    .tp_getset = plane_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_tftp_dataplane",
    .m_doc = "Native data plane for lockstep TFTP reads.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__tftp_dataplane(void) {
    if (PyType_Ready(&PlaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&PlaneType);
    if (PyModule_AddObject(m, "DataPlane", (PyObject *)&PlaneType) < 0 ||
        PyModule_AddIntConstant(m, "COMPLETED", OUT_COMPLETED) < 0 ||
        PyModule_AddIntConstant(m, "CLIENT_ERROR", OUT_CLIENT_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "TIMED_OUT", OUT_TIMED_OUT) < 0 ||
        PyModule_AddIntConstant(m, "READ_ERROR", OUT_READ_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "CANCELLED", OUT_CANCELLED) < 0) {
        Py_DECREF(&PlaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
