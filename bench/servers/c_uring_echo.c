/*
 * c_uring_echo.c - the io_uring prototype: an echo server whose socket I/O all goes
 * through one io_uring, built to find out whether io_uring beats the C epoll floor
 * (c_epoll_echo.c) on this machine. See BENCHMARKS.md, "io_uring prototype".
 *
 * Raw system calls and our own ring setup (no liburing: Debian 12's 2.3 predates much
 * of what is used here). Needs Linux >= 6.1; uses 6.6 and 6.10 features when present.
 * What it uses, and why:
 *
 *   IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN
 *       Completion work (the receive a socket wakeup asks for) runs only inside this
 *       thread's io_uring_enter(GETEVENTS), in a batch, never as an interruption; the
 *       kernel wakes the thread only when enough completions are pending for what it
 *       waits for. (--no-defer-taskrun uses COOP_TASKRUN | TASKRUN_FLAG instead, to
 *       compare: the same here within noise.)
 *   one io_uring_enter per loop turn
 *       It submits every SQE the turn queued and waits for the next completion.
 *       Sends usually complete inside that same call, and their CQEs would end the
 *       wait at once, so the wait asks for (sends submitted + 1) completions whenever
 *       nothing depends on a send completing (see wait_target()).
 *   multishot accept into direct descriptors (a registered, sparse file table)
 *       One SQE accepts every connection; sends and receives name the socket by its
 *       table slot, so the kernel skips the file lookup and its reference count.
 *       TCP_NODELAY is set on the listening socket; accepted sockets inherit it.
 *   multishot receive with a provided-buffer ring (IORING_REGISTER_PBUF_RING)
 *       One SQE per connection receives for as long as the connection lives; the
 *       kernel takes a buffer from the ring for each receive, and with bundles
 *       (6.10) one receive fills as many consecutive buffers as the data needs.
 *       When the ring runs empty the receive ends with -ENOBUFS; the connection waits
 *       on a list and is re-armed once buffers are back.
 *   the ring refilled hot, from a stack (see struct buffer_pool)
 *   echo from the receive buffer itself
 *       Received buffers queue on their connection and go out as one send (one
 *       buffer) or sendmsg (several), at most one in flight per connection so bytes
 *       stay in order; MSG_WAITALL makes the kernel finish a short send itself. A
 *       buffer goes back when its send completes. A connection whose send is stalled
 *       (its peer does not read) copies its further output out of the shared pool
 *       (spill_output()), and past OUTPUT_HIGH_WATER stops receiving (cancels its
 *       receive) until it has drained: one slow reader cannot starve the others.
 *   the ring's own descriptor registered (IORING_ENTER_REGISTERED_RING)
 *
 * Not used: SQPOLL (a kernel thread polling the SQ burns a core), zero-copy send (on
 * loopback the data is copied anyway, and it adds a notification CQE per send).
 *
 * Usage: c_uring_echo [--port PORT] [--recv-bytes N] [--buffers N] [--backlog N]
 *                     [--no-bundles] [--no-defer-taskrun]
 *        c_uring_echo --probe      exit 0 if io_uring can do all of the above here, else
 *                                  print why on stdout and exit 1
 * --recv-bytes is the size of one buffer (2048 by default, like the C floor's reads).
 * Port 0 (the default) binds an ephemeral port, printed as the first line of stdout.
 * Listens on 127.0.0.1 only. SIGTERM/SIGINT: print counters to stderr and exit.
 *
 * Build: gcc -O2 -o c_uring_echo c_uring_echo.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

/* Newer than the 6.1 uapi headers Debian 12 ships. */
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)      /* 6.6 */
#endif
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)        /* 6.10 */
#endif

#define SQ_ENTRIES 4096
#define CQ_ENTRIES 32768
#define BUFFER_GROUP 0
/* Buffers one sendmsg may carry; more wait for the next send. */
#define MAX_SEND_IOV 64
/* iovecs the sendmsg SQEs of one submission may use (copied by the kernel at submit). */
#define IOV_ARENA (SQ_ENTRIES * 4)
/* Queued output past which a connection stops receiving (the C floor's figure). */
#define OUTPUT_HIGH_WATER (4u << 20)
/* The pool is reserved, not committed: a buffer's pages are touched only when the ring
 * first hands it out, and the ring hands out the most recently used first, so memory
 * grows with the buffers in use at once (about one per busy connection), not with this. */
#define DEFAULT_POOL_BYTES (256u << 20)

/* ---------------------------------------------------------------- system calls */

static int sys_io_uring_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static int sys_io_uring_register(int fd, unsigned opcode, void *arg, unsigned nr_args)
{
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
}

static void die(const char *what)
{
    fprintf(stderr, "c_uring_echo: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---------------------------------------------------------------- the ring */

struct ring {
    int fd;
    int enter_fd;                /* registered index, or fd */
    unsigned enter_flags;        /* IORING_ENTER_REGISTERED_RING when registered */
    /* submission queue */
    unsigned *sq_tail, *sq_array, sq_mask, sq_entries;
    struct io_uring_sqe *sqes;
    unsigned sq_local_tail;      /* SQEs written, published to *sq_tail at submit */
    unsigned sq_pending;         /* written since the last submit (without SQPOLL the
                                    kernel takes them all in io_uring_enter) */
    /* completion queue */
    unsigned *cq_head, *cq_tail, cq_mask;
    struct io_uring_cqe *cqes;
};

/* --no-defer-taskrun: COOP_TASKRUN | TASKRUN_FLAG instead (for comparison). */
static bool defer_taskrun = true;

/* Returns 0, or -errno of the step that failed and names it in *step. */
static int ring_init(struct ring *r, const char **step)
{
    struct io_uring_params p;
    unsigned base = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE |
                    (defer_taskrun ? IORING_SETUP_DEFER_TASKRUN
                                   : IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    /* NO_SQARRAY (6.6) first; older kernels reject it with EINVAL. */
    unsigned tries[2] = {base | IORING_SETUP_NO_SQARRAY, base};
    int fd = -1;
    for (int i = 0; i < 2 && fd < 0; i++) {
        memset(&p, 0, sizeof p);
        p.flags = tries[i];
        p.cq_entries = CQ_ENTRIES;
        fd = sys_io_uring_setup(SQ_ENTRIES, &p);
        if (fd < 0 && errno != EINVAL)
            break;
    }
    if (fd < 0) {
        *step = defer_taskrun ? "io_uring_setup(SINGLE_ISSUER|DEFER_TASKRUN)"
                              : "io_uring_setup(SINGLE_ISSUER|COOP_TASKRUN)";
        return -errno;
    }
    memset(r, 0, sizeof *r);
    r->fd = r->enter_fd = fd;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_NODROP)) {
        *step = "io_uring features (SINGLE_MMAP, NODROP)";
        return -EOPNOTSUPP;
    }
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    if (p.flags & IORING_SETUP_NO_SQARRAY)
        sq_size = p.sq_off.flags + sizeof(unsigned); /* array offset is meaningless */
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t ring_size = sq_size > cq_size ? sq_size : cq_size;
    char *rings = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                       fd, IORING_OFF_SQ_RING);
    if (rings == MAP_FAILED) {
        *step = "mmap(rings)";
        return -errno;
    }
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        *step = "mmap(sqes)";
        return -errno;
    }
    r->sq_tail = (unsigned *)(rings + p.sq_off.tail);
    r->sq_mask = *(unsigned *)(rings + p.sq_off.ring_mask);
    r->sq_entries = p.sq_entries;
    if (!(p.flags & IORING_SETUP_NO_SQARRAY)) {
        r->sq_array = (unsigned *)(rings + p.sq_off.array);
        for (unsigned i = 0; i < p.sq_entries; i++)
            r->sq_array[i] = i;
    }
    r->cq_head = (unsigned *)(rings + p.cq_off.head);
    r->cq_tail = (unsigned *)(rings + p.cq_off.tail);
    r->cq_mask = *(unsigned *)(rings + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(rings + p.cq_off.cqes);
    r->sq_local_tail = *r->sq_tail;

    /* Registering the ring's descriptor saves a file lookup per io_uring_enter. */
    struct io_uring_rsrc_update reg = {.offset = -1U, .data = (uint64_t)fd};
    if (sys_io_uring_register(fd, IORING_REGISTER_RING_FDS, &reg, 1) == 1) {
        r->enter_fd = (int)reg.offset;
        r->enter_flags = IORING_ENTER_REGISTERED_RING;
    }
    return 0;
}

static uint64_t enter_calls;     /* counters, printed at exit */
static uint64_t turns;
static uint64_t cqes_seen;

/* Submit what is queued; wait until `wait_for` completions are in the CQ. */
static int ring_enter(struct ring *r, unsigned wait_for)
{
    __atomic_store_n(r->sq_tail, r->sq_local_tail, __ATOMIC_RELEASE);
    unsigned flags = r->enter_flags | (wait_for ? IORING_ENTER_GETEVENTS : 0);
    enter_calls++;
    int ret = sys_io_uring_enter(r->enter_fd, r->sq_pending, wait_for, flags);
    if (ret >= 0) {
        /* SUBMIT_ALL: everything is consumed unless the call failed outright. */
        r->sq_pending = 0;
    }
    return ret;
}

static void submit_now(struct ring *r);

static struct io_uring_sqe *ring_sqe(struct ring *r)
{
    if (r->sq_pending == r->sq_entries)
        submit_now(r);
    struct io_uring_sqe *sqe = &r->sqes[r->sq_local_tail & r->sq_mask];
    memset(sqe, 0, sizeof *sqe);
    r->sq_local_tail++;
    r->sq_pending++;
    return sqe;
}

/* ---------------------------------------------------------------- buffers */

/*
 * The kernel takes buffers from the ring in order, oldest first, so a ring holding
 * the whole pool would hand out the buffer used longest ago: cold in the cache, and
 * both copies (the kernel's into it, the send's out of it) pay for it. So the pool's
 * free buffers wait on a stack, most recently used on top, and at the end of each
 * turn the ring is topped up from the top of the stack (buffers_refill()). Under DEFER_TASKRUN the kernel takes buffers only inside
 * io_uring_enter, and every buffer it takes comes back in a CQE of that call, so
 * `in_ring` is exact between calls.
 */
struct buffer_pool {
    struct io_uring_buf_ring *ring;
    unsigned entries, mask;      /* ring slots = buffers in the pool */
    uint16_t local_tail;         /* published to ring->tail once per turn */
    uint16_t head;               /* the kernel's head: the next slot it takes */
    unsigned in_ring;            /* published and not yet taken by the kernel */
    unsigned ring_target;        /* how many to keep in the ring */
    uint16_t *free_stack;        /* buffers neither in the ring nor holding output */
    unsigned free_count;
    char *memory;
    unsigned buffer_bytes;
};

static char *buffer_data(struct buffer_pool *pool, unsigned bid)
{
    return pool->memory + (size_t)bid * pool->buffer_bytes;
}

/* The kernel handed us the buffer at the ring's head (a CQE with IORING_CQE_F_BUFFER
 * names the first one; a bundle takes the following slots too). Returns its id. */
static unsigned buffer_take(struct buffer_pool *pool)
{
    unsigned bid = pool->ring->bufs[pool->head & pool->mask].bid;
    pool->head++;
    pool->in_ring--;
    return bid;
}

static void buffer_free(struct buffer_pool *pool, unsigned bid)
{
    pool->free_stack[pool->free_count++] = (uint16_t)bid;
}

static unsigned buffers_available(const struct buffer_pool *pool)
{
    return pool->in_ring + pool->free_count;
}

/* End of turn: top the ring up from the stack's hot end, then publish. `taken` is how
 * many buffers this turn's receives used or wanted (-ENOBUFS): the ring keeps twice
 * that, and at least one per connection (a single io_uring_enter may run a receive for
 * every connection: a multishot receive that finds the ring empty ends, and costs a
 * CQE and a re-arm). */
static void buffers_refill(struct buffer_pool *pool, unsigned taken, unsigned connections)
{
    unsigned target = 2 * taken + 32;
    if (target < connections + 32)
        target = connections + 32;
    /* Grow at once, shrink slowly: a burst should not find the ring short twice. */
    if (target > pool->ring_target)
        pool->ring_target = target;
    else
        pool->ring_target -= (pool->ring_target - target) / 16;
    if (pool->ring_target > pool->entries)
        pool->ring_target = pool->entries;
    bool added = false;
    while (pool->in_ring < pool->ring_target && pool->free_count > 0) {
        unsigned bid = pool->free_stack[--pool->free_count];
        struct io_uring_buf *slot = &pool->ring->bufs[pool->local_tail & pool->mask];
        /* Field by field: bufs[0].resv is the ring's tail. */
        slot->addr = (uint64_t)(uintptr_t)buffer_data(pool, bid);
        slot->len = pool->buffer_bytes;
        slot->bid = (uint16_t)bid;
        pool->local_tail++;
        pool->in_ring++;
        added = true;
    }
    if (added)
        __atomic_store_n(&pool->ring->tail, pool->local_tail, __ATOMIC_RELEASE);
}

static int buffer_pool_init(struct ring *r, struct buffer_pool *pool, unsigned entries,
                            unsigned buffer_bytes, const char **step)
{
    memset(pool, 0, sizeof *pool);
    pool->entries = entries;
    pool->mask = entries - 1;
    pool->buffer_bytes = buffer_bytes;
    size_t ring_bytes = (size_t)entries * sizeof(struct io_uring_buf);
    pool->ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    pool->memory = mmap(NULL, (size_t)entries * buffer_bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    pool->free_stack = malloc(entries * sizeof *pool->free_stack);
    if (pool->ring == MAP_FAILED || pool->memory == MAP_FAILED || !pool->free_stack) {
        *step = "allocating buffers";
        return -ENOMEM;
    }
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)pool->ring,
        .ring_entries = entries,
        .bgid = BUFFER_GROUP,
    };
    if (sys_io_uring_register(r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        *step = "IORING_REGISTER_PBUF_RING";
        return -errno;
    }
    /* Lowest ids on top: the first ones used are the first in memory. */
    for (unsigned bid = entries; bid-- > 0;)
        buffer_free(pool, bid);
    buffers_refill(pool, 0, 0);
    return 0;
}

/* ---------------------------------------------------------------- connections */

enum op { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CANCEL, OP_CLOSE };

/* user_data: op in bits 0-7, the connection's generation in 8-31, its slot in 32-63.
 * The generation makes a completion for a slot's previous connection recognisable. */
static uint64_t op_data(enum op op, uint32_t slot, uint32_t generation)
{
    return (uint64_t)op | ((uint64_t)(generation & 0xffffff) << 8) | ((uint64_t)slot << 32);
}

enum conn_state {
    CONN_FREE,
    CONN_OPEN,                   /* receiving (or about to be re-armed) and echoing */
    CONN_DRAINING,               /* peer sent EOF: echo what is queued, then close */
    CONN_FAILED,                 /* a socket error: drop the output, close once nothing
                                    is in flight */
};

enum recv_state {
    RECV_ARMED,                  /* a multishot receive is in the kernel */
    RECV_CANCELLING,             /* backpressure: cancel sent, its final CQE not yet seen */
    RECV_PAUSED,                 /* backpressure: too much queued output, not receiving */
    RECV_STARVED,                /* the buffer ring ran empty (-ENOBUFS): re-arm later */
    RECV_ENDED,                  /* EOF or error: never again */
};

struct chunk {
    char *heap;                  /* a copy of the data, or NULL: it is in pool buffer `bid` */
    uint16_t bid;
    uint32_t offset;             /* bytes already sent */
    uint32_t len;                /* bytes received */
};

struct conn {
    enum conn_state state;
    enum recv_state recv;
    uint32_t generation;
    /* queued output: buffers received and not yet sent, oldest first (a ring) */
    struct chunk *queue;
    unsigned queue_head, queue_count, queue_capacity;
    size_t queued_bytes;
    unsigned pool_chunks;        /* queued chunks whose data is in a pool buffer */
    unsigned sending;            /* chunks at the queue's head covered by the send in flight */
    bool send_in_flight;
    bool on_send_list;           /* queued output waits for this turn's sends */
};

static struct conn *conns;
static unsigned conn_slots;
static struct ring ring;
static struct buffer_pool pool;
static int listen_fd;
static bool accept_armed;
static unsigned open_conns;
/* Pool buffers a connection whose send is stalled may hold beyond that send; the rest
 * of its output is copied out (see spill_output()). Also the most one send carries. */
static unsigned pool_share;
/* Receive bundles (Linux 6.10): one receive fills several buffers. */
static bool recv_bundles;

/* Work for the end of the turn. */
static uint32_t *send_list;
static unsigned send_list_len;
static uint32_t *starved_list;
static unsigned starved_len;

static struct iovec iov_arena[IOV_ARENA];
static struct msghdr msg_arena[SQ_ENTRIES];
static unsigned iov_used, msg_used;

static unsigned buffers_taken_this_turn;
static uint64_t sends_submitted, sendmsgs_submitted, recv_rearms, enobufs, stale_cqes,
    spilled_chunks;

static volatile sig_atomic_t stop_requested;

static void submit_now(struct ring *r)
{
    if (ring_enter(r, 0) < 0 && errno != EINTR)
        die("io_uring_enter(submit)");
    iov_used = msg_used = 0;     /* the kernel copied every msghdr and iovec at submit */
}

static void arm_accept(void)
{
    struct io_uring_sqe *sqe = ring_sqe(&ring);
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = listen_fd;
    sqe->ioprio = IORING_ACCEPT_MULTISHOT;
    sqe->file_index = IORING_FILE_INDEX_ALLOC;
    sqe->user_data = op_data(OP_ACCEPT, 0, 0);
    accept_armed = true;
}

static void arm_recv(uint32_t slot)
{
    struct conn *c = &conns[slot];
    struct io_uring_sqe *sqe = ring_sqe(&ring);
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = (int)slot;
    sqe->flags = IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    sqe->ioprio = IORING_RECV_MULTISHOT | (recv_bundles ? IORING_RECVSEND_BUNDLE : 0);
    sqe->buf_group = BUFFER_GROUP;
    sqe->user_data = op_data(OP_RECV, slot, c->generation);
    c->recv = RECV_ARMED;
}

static void cancel_recv(uint32_t slot)
{
    struct conn *c = &conns[slot];
    struct io_uring_sqe *sqe = ring_sqe(&ring);
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->addr = op_data(OP_RECV, slot, c->generation);
    /* Its own CQE says nothing the receive's final CQE will not. */
    sqe->flags = IOSQE_CQE_SKIP_SUCCESS;
    sqe->user_data = op_data(OP_CANCEL, slot, c->generation);
    c->recv = RECV_CANCELLING;
}

static struct chunk *queue_at(struct conn *c, unsigned i)
{
    return &c->queue[(c->queue_head + i) & (c->queue_capacity - 1)];
}

static char *chunk_data(const struct chunk *ch)
{
    return (ch->heap ? ch->heap : buffer_data(&pool, ch->bid)) + ch->offset;
}

static void chunk_release(struct conn *c, struct chunk *ch)
{
    if (ch->heap) {
        free(ch->heap);
    } else {
        buffer_free(&pool, ch->bid);
        c->pool_chunks--;
    }
}

/*
 * The pool is shared: a connection whose peer does not read would keep every buffer
 * its receives fill, and the others would starve (-ENOBUFS) until it drains. So once
 * its send is stalled and it holds more than its share, the output behind that send
 * is copied out of the pool and the buffers go back at once.
 */
static void spill_output(struct conn *c)
{
    for (unsigned i = c->sending; i < c->queue_count; i++) {
        struct chunk *ch = queue_at(c, i);
        if (ch->heap)
            continue;
        ch->heap = malloc(ch->len);
        if (!ch->heap)
            die("malloc");
        memcpy(ch->heap, buffer_data(&pool, ch->bid), ch->len);
        buffer_free(&pool, ch->bid);
        c->pool_chunks--;
        spilled_chunks++;
    }
}

static void close_conn(uint32_t slot)
{
    struct conn *c = &conns[slot];
    struct io_uring_sqe *sqe = ring_sqe(&ring);
    sqe->opcode = IORING_OP_CLOSE;
    sqe->file_index = slot + 1; /* 1-based: 0 means "a plain descriptor" */
    sqe->flags = IOSQE_CQE_SKIP_SUCCESS;
    sqe->user_data = op_data(OP_CLOSE, slot, c->generation);
    for (unsigned i = 0; i < c->queue_count; i++)
        chunk_release(c, queue_at(c, i));
    c->queue_head = c->queue_count = 0;
    c->queued_bytes = 0;
    c->state = CONN_FREE;
    c->generation++;
    open_conns--;
    /* The table has a free slot again: accept may have stopped on -ENFILE. */
    if (!accept_armed)
        arm_accept();
}

/* Nothing in flight any more: close if the connection is done. */
static void close_if_done(uint32_t slot)
{
    struct conn *c = &conns[slot];
    if (c->send_in_flight || c->recv == RECV_ARMED || c->recv == RECV_CANCELLING)
        return;
    if (c->state == CONN_FAILED || (c->state == CONN_DRAINING && c->queue_count == 0))
        close_conn(slot);
}

static void want_send(uint32_t slot)
{
    struct conn *c = &conns[slot];
    if (!c->on_send_list && !c->send_in_flight) {
        c->on_send_list = true;
        send_list[send_list_len++] = slot;
    }
}

static void queue_output(uint32_t slot, unsigned bid, unsigned len)
{
    struct conn *c = &conns[slot];
    if (c->queue_count == c->queue_capacity) {
        unsigned capacity = c->queue_capacity ? c->queue_capacity * 2 : 8;
        struct chunk *queue = malloc(capacity * sizeof *queue);
        if (!queue)
            die("malloc");
        for (unsigned i = 0; i < c->queue_count; i++)
            queue[i] = *queue_at(c, i);
        free(c->queue);
        c->queue = queue;
        c->queue_head = 0;
        c->queue_capacity = capacity;
    }
    c->queue_count++;
    *queue_at(c, c->queue_count - 1) = (struct chunk){.bid = (uint16_t)bid, .len = len};
    c->queued_bytes += len;
    c->pool_chunks++;
    if (c->send_in_flight && c->pool_chunks > c->sending + pool_share)
        spill_output(c);
    want_send(slot);
}

/* One send (a single buffer) or sendmsg (several) for the queue's head. */
static void submit_send(uint32_t slot)
{
    struct conn *c = &conns[slot];
    unsigned n = c->queue_count < pool_share ? c->queue_count : pool_share;
    if (n > 1 && (iov_used + n > IOV_ARENA || msg_used == SQ_ENTRIES))
        submit_now(&ring);
    struct io_uring_sqe *sqe = ring_sqe(&ring);
    sqe->fd = (int)slot;
    sqe->flags = IOSQE_FIXED_FILE;
    sqe->msg_flags = MSG_NOSIGNAL | MSG_WAITALL;
    sqe->user_data = op_data(OP_SEND, slot, c->generation);
    if (n == 1) {
        struct chunk *first = queue_at(c, 0);
        sqe->opcode = IORING_OP_SEND;
        sqe->addr = (uint64_t)(uintptr_t)chunk_data(first);
        sqe->len = first->len - first->offset;
        sends_submitted++;
    } else {
        struct iovec *iov = &iov_arena[iov_used];
        for (unsigned i = 0; i < n; i++) {
            struct chunk *ch = queue_at(c, i);
            iov[i].iov_base = chunk_data(ch);
            iov[i].iov_len = ch->len - ch->offset;
        }
        iov_used += n;
        struct msghdr *msg = &msg_arena[msg_used++];
        memset(msg, 0, sizeof *msg);
        msg->msg_iov = iov;
        msg->msg_iovlen = n;
        sqe->opcode = IORING_OP_SENDMSG;
        sqe->addr = (uint64_t)(uintptr_t)msg;
        sqe->len = 1;
        sendmsgs_submitted++;
    }
    c->sending = n;
    c->send_in_flight = true;
}

/* ---------------------------------------------------------------- completions */

static void on_accept(struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        accept_armed = false;
    if (cqe->res < 0) {
        /* -ENFILE: the table is full; close_conn() re-arms. Others: re-arm now. */
        if (cqe->res != -ENFILE && !accept_armed)
            arm_accept();
        if (cqe->res != -ENFILE && cqe->res != -ECONNABORTED && cqe->res != -EINTR)
            fprintf(stderr, "c_uring_echo: accept: %s\n", strerror(-cqe->res));
        return;
    }
    if (!accept_armed && open_conns + 1 < conn_slots)
        arm_accept();
    uint32_t slot = (uint32_t)cqe->res;
    struct conn *c = &conns[slot];
    c->state = CONN_OPEN;
    c->send_in_flight = false;
    c->on_send_list = false;
    c->queue_head = c->queue_count = 0;
    c->queued_bytes = 0;
    c->pool_chunks = 0;
    c->sending = 0;
    open_conns++;
    arm_recv(slot);
}

/* Backpressure ends once the queued output has drained below the low-water mark. */
static void resume_recv_if_drained(uint32_t slot)
{
    struct conn *c = &conns[slot];
    if (c->recv == RECV_PAUSED && c->queued_bytes <= OUTPUT_HIGH_WATER / 2) {
        arm_recv(slot);
        recv_rearms++;
    }
}

/* Take the buffers a receive CQE filled: one, or with a bundle several consecutive
 * ring slots, each full but the last. Queued as output of `slot`, or freed if the
 * connection is gone or failed (slot == NO_SLOT). */
#define NO_SLOT UINT32_MAX
static void take_received(uint32_t slot, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_BUFFER))
        return;
    unsigned left = cqe->res > 0 ? (unsigned)cqe->res : 0;
    unsigned count = left ? (left + pool.buffer_bytes - 1) / pool.buffer_bytes : 1;
    for (unsigned i = 0; i < count; i++) {
        unsigned bid = buffer_take(&pool);
        if (i == 0 && bid != cqe->flags >> IORING_CQE_BUFFER_SHIFT) {
            fprintf(stderr, "c_uring_echo: buffer ring out of step: CQE names buffer %u, "
                    "ring head holds %u\n", cqe->flags >> IORING_CQE_BUFFER_SHIFT, bid);
            exit(1);
        }
        unsigned len = left < pool.buffer_bytes ? left : pool.buffer_bytes;
        left -= len;
        if (len > 0 && slot != NO_SLOT && conns[slot].state != CONN_FAILED)
            queue_output(slot, bid, len);
        else
            buffer_free(&pool, bid);
    }
    buffers_taken_this_turn += count;
}

static void on_recv(uint32_t slot, struct io_uring_cqe *cqe)
{
    struct conn *c = &conns[slot];
    bool more = cqe->flags & IORING_CQE_F_MORE;
    take_received(slot, cqe);
    if (more) {
        if (c->recv == RECV_ARMED && c->queued_bytes > OUTPUT_HIGH_WATER)
            cancel_recv(slot);
        return;
    }
    /* The multishot receive has ended: find out why. */
    if (c->state == CONN_FAILED) {
        c->recv = RECV_ENDED;
        close_if_done(slot);
    } else if (cqe->res == -ENOBUFS) {
        enobufs++;
        buffers_taken_this_turn++; /* it wanted one: the next refill counts it */
        c->recv = RECV_STARVED;
        starved_list[starved_len++] = slot;
    } else if (cqe->res == -ECANCELED || (c->recv == RECV_CANCELLING && cqe->res > 0)) {
        c->recv = RECV_PAUSED;
        resume_recv_if_drained(slot);
    } else if (cqe->res > 0) {
        /* Ended with data (the kernel's own reasons, e.g. a full CQ): receive again. */
        arm_recv(slot);
        recv_rearms++;
    } else {
        c->recv = RECV_ENDED;
        if (cqe->res == 0)
            c->state = CONN_DRAINING;
        else
            c->state = CONN_FAILED;
        close_if_done(slot);
    }
}

static void on_send(uint32_t slot, struct io_uring_cqe *cqe)
{
    struct conn *c = &conns[slot];
    c->send_in_flight = false;
    if (cqe->res < 0) {
        c->state = CONN_FAILED;
        if (c->recv == RECV_ARMED)
            cancel_recv(slot);
        close_if_done(slot);
        return;
    }
    /* Retire what was sent; a short send (an error after some bytes) leaves the rest. */
    size_t sent = (size_t)cqe->res;
    for (unsigned i = 0; i < c->sending && c->queue_count > 0; i++) {
        struct chunk *ch = queue_at(c, 0);
        size_t left = ch->len - ch->offset;
        if (sent < left) {
            ch->offset += (uint32_t)sent;
            c->queued_bytes -= sent;
            break;
        }
        sent -= left;
        c->queued_bytes -= left;
        chunk_release(c, ch);
        c->queue_head = (c->queue_head + 1) & (c->queue_capacity - 1);
        c->queue_count--;
    }
    c->sending = 0;
    if (c->queue_count > 0)
        want_send(slot);
    resume_recv_if_drained(slot);
    close_if_done(slot);
}

static void dispatch(struct io_uring_cqe *cqe)
{
    uint64_t data = cqe->user_data;
    enum op op = (enum op)(data & 0xff);
    uint32_t slot = (uint32_t)(data >> 32);
    uint32_t generation = (uint32_t)(data >> 8) & 0xffffff;
    switch (op) {
    case OP_ACCEPT:
        on_accept(cqe);
        return;
    case OP_CANCEL:
        /* Only failures post a CQE. -ENOENT/-EALREADY: the receive had already ended
         * (often by the same error that made us cancel); its own CQE decides. */
        return;
    case OP_CLOSE:
        fprintf(stderr, "c_uring_echo: close of slot %u failed: %s\n", slot, strerror(-cqe->res));
        return;
    default:
        break;
    }
    if (slot >= conn_slots || conns[slot].state == CONN_FREE ||
        (conns[slot].generation & 0xffffff) != generation) {
        stale_cqes++;
        take_received(NO_SLOT, cqe);
        return;
    }
    if (op == OP_RECV)
        on_recv(slot, cqe);
    else
        on_send(slot, cqe);
}

/* ---------------------------------------------------------------- the loop */

/*
 * How many CQEs to wait for. Sends that complete inside io_uring_enter post their
 * CQEs before the wait begins; waiting for just one would return at once, and every
 * turn would cost two system calls. So wait for the sends plus one more event - but
 * only when no progress hangs on a send completing: a connection closing after its
 * last send, or receives starved of buffers that a send would give back. (A
 * connection whose queue is longer than one send never waits either: want_send()
 * puts it back on the list as soon as its send completes, and that needs a turn.)
 */
static bool progress_waits_on_send(const struct conn *c)
{
    return c->queue_count > c->sending       /* more output behind this send */
           || c->state == CONN_DRAINING       /* closes after it */
           || c->recv == RECV_PAUSED          /* resumes receiving after it */
           || c->recv == RECV_CANCELLING;
}

static unsigned wait_target(unsigned sends_this_turn, bool send_unblocks_progress)
{
    return send_unblocks_progress ? 1 : sends_this_turn + 1;
}

static void run(void)
{
    for (;;) {
        /* End of turn: buffers back to the kernel, then the sends and re-arms. */
        unsigned sends_this_turn = 0;
        bool send_unblocks_progress = false;
        buffers_refill(&pool, buffers_taken_this_turn, open_conns);
        buffers_taken_this_turn = 0;
        if (starved_len > 0) {
            /* Re-arm the starved once there are buffers again. */
            if (buffers_available(&pool) >= pool.entries / 8) {
                for (unsigned i = 0; i < starved_len; i++) {
                    uint32_t slot = starved_list[i];
                    if (conns[slot].state != CONN_FREE && conns[slot].recv == RECV_STARVED) {
                        conns[slot].recv = RECV_PAUSED;
                        resume_recv_if_drained(slot);
                    }
                }
                starved_len = 0;
            } else {
                send_unblocks_progress = true;
            }
        }
        for (unsigned i = 0; i < send_list_len; i++) {
            uint32_t slot = send_list[i];
            struct conn *c = &conns[slot];
            c->on_send_list = false;
            if (c->state == CONN_FREE || c->state == CONN_FAILED || c->send_in_flight ||
                c->queue_count == 0)
                continue;
            submit_send(slot);
            sends_this_turn++;
            if (progress_waits_on_send(c))
                send_unblocks_progress = true;
        }
        send_list_len = 0;

        int ret = ring_enter(&ring, wait_target(sends_this_turn, send_unblocks_progress));
        iov_used = msg_used = 0;
        if (ret < 0) {
            if (errno != EINTR)
                die("io_uring_enter");
            if (stop_requested)
                return;
        }
        turns++;

        unsigned head = *ring.cq_head;
        unsigned tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
        while (head != tail) {
            for (; head != tail; head++) {
                dispatch(&ring.cqes[head & ring.cq_mask]);
                cqes_seen++;
            }
            __atomic_store_n(ring.cq_head, head, __ATOMIC_RELEASE);
            tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
        }
        if (stop_requested)
            return;
    }
}

static void on_stop_signal(int signum)
{
    (void)signum;
    stop_requested = 1;
}

/* ---------------------------------------------------------------- self-test */

/* In a child process: set everything up as the server does and receive one byte with
 * a multishot receive (ioprio: its flags). Exits 0, or 1 after writing why to `out`. */
static void self_test_child(unsigned ioprio, int out)
{
    const char *step = "";
    char why[256];
    struct ring r;
    struct buffer_pool test_pool;
    int err = ring_init(&r, &step);
    if (!err)
        err = buffer_pool_init(&r, &test_pool, 8, 64, &step);
    struct io_uring_rsrc_register files = {.nr = 16, .flags = IORING_RSRC_REGISTER_SPARSE};
    if (!err && sys_io_uring_register(r.fd, IORING_REGISTER_FILES2, &files, sizeof files) < 0) {
        step = "IORING_REGISTER_FILES2 (sparse)";
        err = -errno;
    }
    int pair[2];
    if (!err && socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0) {
        step = "socketpair";
        err = -errno;
    }
    if (!err) {
        struct io_uring_sqe *sqe = ring_sqe(&r);
        sqe->opcode = IORING_OP_RECV;
        sqe->fd = pair[0];
        sqe->flags = IOSQE_BUFFER_SELECT;
        sqe->ioprio = (uint16_t)ioprio;
        sqe->buf_group = BUFFER_GROUP;
        if (write(pair[1], "x", 1) != 1 || ring_enter(&r, 1) < 0) {
            step = "io_uring_enter";
            err = -errno;
        }
    }
    if (err) {
        snprintf(why, sizeof why, "%s failed: %s", step, strerror(-err));
    } else {
        struct io_uring_cqe *cqe = &r.cqes[*r.cq_head & r.cq_mask];
        if (cqe->res == 1 && (cqe->flags & IORING_CQE_F_BUFFER) && (cqe->flags & IORING_CQE_F_MORE))
            _exit(0);
        snprintf(why, sizeof why, "multishot receive (flags %#x) with a buffer ring does not "
                 "work: res %d (%s), cqe flags %#x", ioprio, cqe->res,
                 cqe->res < 0 ? strerror(-cqe->res) : "", cqe->flags);
    }
    if (write(out, why, strlen(why)) < 0)
        _exit(2);
    _exit(1);
}

/* Can a multishot receive with these flags work here? NULL if so, else why not (in
 * `why`). The test runs in a child so its ring, buffers and armed receive go with it. */
static const char *self_test(unsigned ioprio, char *why, size_t why_size)
{
    int pipe_fds[2];
    if (pipe(pipe_fds) < 0)
        die("pipe");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(pipe_fds[0]);
        self_test_child(ioprio, pipe_fds[1]);
    }
    close(pipe_fds[1]);
    ssize_t n = read(pipe_fds[0], why, why_size - 1);
    close(pipe_fds[0]);
    int status;
    if (waitpid(child, &status, 0) < 0)
        die("waitpid");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return NULL;
    why[n > 0 ? n : 0] = '\0';
    if (n <= 0)
        snprintf(why, why_size, "the self-test process died (status %#x)", status);
    return why;
}

/* --probe: say whether the server can run here, and with what. */
static int probe(void)
{
    struct utsname uts;
    uname(&uts);
    char why[256];
    if (self_test(IORING_RECV_MULTISHOT, why, sizeof why)) {
        printf("io_uring unavailable: %s (kernel %s)\n", why, uts.release);
        return 1;
    }
    bool bundle = !self_test(IORING_RECV_MULTISHOT | IORING_RECVSEND_BUNDLE, why, sizeof why);
    printf("io_uring ok (kernel %s; receive bundles %s)\n", uts.release,
           bundle ? "yes" : "no: needs Linux 6.10");
    return 0;
}

/* ---------------------------------------------------------------- main */

static unsigned round_down_pow2(unsigned x)
{
    unsigned p = 1;
    while (p * 2 <= x)
        p *= 2;
    return p;
}

int main(int argc, char **argv)
{
    int port = 0, backlog = 1024;
    unsigned recv_bytes = 2048, buffers = 0;
    bool probe_only = false, bundles_allowed = true;
    static const struct option long_options[] = {
        {"port", required_argument, 0, 'p'},
        {"recv-bytes", required_argument, 0, 'r'},
        {"buffers", required_argument, 0, 'n'},
        {"backlog", required_argument, 0, 'b'},
        {"probe", no_argument, 0, 'P'},
        {"no-bundles", no_argument, 0, 'B'},
        {"no-defer-taskrun", no_argument, 0, 'D'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (ch) {
        case 'p': port = atoi(optarg); break;
        case 'r': recv_bytes = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'n': buffers = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'b': backlog = atoi(optarg); break;
        case 'P': probe_only = true; break;
        case 'B': bundles_allowed = false; break;
        case 'D': defer_taskrun = false; break;
        default:
            fprintf(stderr, "usage: %s [--port PORT] [--recv-bytes N] [--buffers N] "
                            "[--backlog N] [--no-bundles] [--no-defer-taskrun] | --probe\n", argv[0]);
            return 2;
        }
    }
    if (probe_only)
        return probe();
    if (recv_bytes == 0 || recv_bytes > (1u << 30)) {
        fprintf(stderr, "c_uring_echo: --recv-bytes must be between 1 and 2^30\n");
        return 2;
    }
    /* A power of two between 64 and 32768 (the ring's limit), about 8 MiB by default. */
    if (buffers == 0)
        buffers = DEFAULT_POOL_BYTES / recv_bytes;
    buffers = round_down_pow2(buffers < 64 ? 64 : buffers > 32768 ? 32768 : buffers);
    pool_share = buffers / 64 < 1 ? 1 : buffers / 64 > MAX_SEND_IOV ? MAX_SEND_IOV : buffers / 64;

    signal(SIGPIPE, SIG_IGN);
    struct sigaction stop = {.sa_handler = on_stop_signal};
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);

    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    /* The registered table may not exceed RLIMIT_NOFILE. */
    conn_slots = lim.rlim_cur > 65536 ? 65536 : (unsigned)lim.rlim_cur - 16;
    conns = calloc(conn_slots, sizeof *conns);
    send_list = calloc(conn_slots, sizeof *send_list);
    starved_list = calloc(conn_slots, sizeof *starved_list);
    if (!conns || !send_list || !starved_list)
        die("calloc");

    char why[256];
    recv_bundles = bundles_allowed &&
                   !self_test(IORING_RECV_MULTISHOT | IORING_RECVSEND_BUNDLE, why, sizeof why);
    const char *step = "";
    int err = ring_init(&ring, &step);
    if (!err)
        err = buffer_pool_init(&ring, &pool, buffers, recv_bytes, &step);
    if (err) {
        fprintf(stderr, "c_uring_echo: %s: %s\n", step, strerror(-err));
        return 1;
    }
    struct io_uring_rsrc_register files = {.nr = conn_slots, .flags = IORING_RSRC_REGISTER_SPARSE};
    if (sys_io_uring_register(ring.fd, IORING_REGISTER_FILES2, &files, sizeof files) < 0)
        die("IORING_REGISTER_FILES2 (sparse)");

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        die("socket");
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Accepted sockets inherit it: no setsockopt per connection (they have no fd). */
    setsockopt(listen_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(listen_fd, backlog) < 0)
        die("listen");
    socklen_t addr_len = sizeof addr;
    getsockname(listen_fd, (struct sockaddr *)&addr, &addr_len);
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    arm_accept();
    run();
    fprintf(stderr,
            "c_uring_echo: %llu turns, %llu io_uring_enter, %llu CQEs, %llu sends, "
            "%llu sendmsgs, %llu receive re-arms, %llu -ENOBUFS, %llu stale CQEs, "
            "%llu chunks copied out of the pool\n",
            (unsigned long long)turns, (unsigned long long)enter_calls,
            (unsigned long long)cqes_seen, (unsigned long long)sends_submitted,
            (unsigned long long)sendmsgs_submitted, (unsigned long long)recv_rearms,
            (unsigned long long)enobufs, (unsigned long long)stale_cqes,
            (unsigned long long)spilled_chunks);
    return 0;
}
