/*
 * loadgen.c - closed-loop echo load generator for the simpletcp benchmarks.
 *
 * One process, one thread, epoll. Opens N connections to HOST:PORT; each
 * connection repeatedly sends a message of S bytes, waits for the complete
 * echo (which may arrive in many pieces), checks every byte, and starts the
 * next round at once. Prints one JSON line with the figures of the measured
 * window and exits.
 *
 * Phases:
 *   ramp     open connections, at most --connect-concurrency not yet proven
 *            (a connection is proven once its first echo came back), so the
 *            server's listen backlog never overflows however large N is;
 *   warmup   all connections run, nothing is counted;
 *   measure  requests, bytes, latencies and CPU times are counted.
 *
 * With --counted, the warmup and the measured window are a fixed number of round
 * trips instead of a time (--warmup-requests, --requests): exactly that many are
 * started, and the phase ends when the last one has come back, so the server is
 * idle at both edges of the window. At each edge the load generator prints
 * "quiet window-start" / "quiet window-end" on stdout and waits for a line on
 * stdin before it goes on: whoever drives it (bench/run.py --counted) zeroes or
 * reads instruction and system call counters there, and the figures cover
 * exactly the window's requests, however fast or slow the server is.
 *
 * With --lines K each message is K pipelined lines: --size/K bytes each, the last
 * byte '\n' and no other '\n' in it, sent in one write. Every line is answered
 * by echoing it, so the check is the same; "messages" in the output counts lines.
 *
 * If --server-pid is given, the server's CPU time (utime+stime of the whole
 * process, all threads) is read from /proc/PID/stat exactly at the start and
 * end of the measured window, and its VmRSS/VmHWM at the end of the window,
 * while every connection is still open.
 *
 * For fault injection (tests/test_fault_injection.py) two options tell connections
 * the server failed from healthy ones:
 *   --reconnect  a connection the server closes or resets is counted as failed and
 *                replaced by a new one, so the load goes on;
 *   --drain S    after the window no new round starts, and every round in flight on
 *                a connection still open must complete within S seconds: one that
 *                does not lost bytes ("rounds_incomplete"). A wrong, repeated or
 *                extra byte is always a "mismatch".
 *
 * Build: gcc -O2 -o loadgen loadgen.c (loadgen_common.h beside it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadgen_common.h"

/* Largest single recv(); also the size of the scratch buffer echoes land in. */
#define RECV_CHUNK (256 * 1024)
#define MAX_EVENTS 1024


/* ---------------------------------------------------------------- state */

struct options {
    const char *host;
    int port;
    int connections;
    size_t message_size;
    double duration_s;
    double warmup_s;
    long long request_limit;     /* 0 = run for duration_s; with counted: the window's round trips */
    long long warmup_requests;   /* counted: round trips before the window */
    bool counted;                /* fixed round-trip counts, quiet edges, stdin handshake */
    int lines;                   /* lines per message (1 = one opaque message) */
    int connect_concurrency;
    double ramp_timeout_s;
    int server_pid;              /* 0 = no server figures */
    int server_core;             /* -1 = the server is not pinned to one core */
    bool reconnect;              /* replace connections the server fails */
    double drain_s;              /* 0 = stop at once when the window ends */
};

enum conn_state { CONN_UNUSED, CONN_CONNECTING, CONN_ACTIVE, CONN_CLOSED };

struct conn {
    int fd;
    uint32_t id;
    enum conn_state state;
    bool proven;                 /* first echo came back */
    bool want_write;             /* EPOLLOUT is registered */
    bool in_round;               /* a message was started and its echo is not complete */
    uint32_t round;
    size_t sent;
    size_t received;
    uint64_t round_start_ns;
    unsigned char *message;      /* this round's message, kept to check the echo */
};

struct errors {
    uint64_t mismatch;           /* echoed bytes differ from what was sent */
    uint64_t reset;              /* ECONNRESET, EPIPE and other socket errors */
    uint64_t eof;                /* server closed the connection */
    uint64_t connect_failed;     /* refused, or failed after EINPROGRESS */
    uint64_t connect_timeout;    /* not proven before the ramp timeout */
};

enum phase { PHASE_RAMP, PHASE_WARMUP, PHASE_MEASURE, PHASE_DRAIN, PHASE_DONE };

static struct options opt = {
    .host = "127.0.0.1",
    .port = 0,
    .connections = 1,
    .message_size = 64,
    .duration_s = 5.0,
    .warmup_s = 1.0,
    .request_limit = 0,
    .warmup_requests = 0,
    .counted = false,
    .lines = 1,
    .connect_concurrency = 128,
    .ramp_timeout_s = 60.0,
    .server_pid = 0,
    .server_core = -1,
};

static struct conn *conns;
static unsigned char *pattern;
static unsigned char *scratch;
static int epoll_fd;
static struct sockaddr_in server_addr;
static struct errors errors;

static enum phase phase = PHASE_RAMP;
static int next_to_open;         /* connections [0, next_to_open) were opened */
static int unproven;             /* opened, alive and not yet proven */
static int proven_total;         /* ever proven: "connections established" */
static int alive;                /* CONNECTING or ACTIVE */

static uint64_t measured_requests;
/* Counted mode: round trips the current phase may still start, and round trips
 * started but not yet echoed in full. */
static long long phase_budget = -1; /* -1 = unlimited */
static int in_flight;
static uint64_t measured_echo_bytes;
static uint64_t connections_failed;  /* established, then closed or reset by the server */
static uint64_t reconnects;



/* ---------------------------------------------------------------- connections */

static void update_events(struct conn *c, bool want_write)
{
    watch_writes(epoll_fd, c->fd, c, &c->want_write, want_write);
}

static void open_connection(struct conn *c);

static void close_conn(struct conn *c, uint64_t *error_counter)
{
    if (c->state == CONN_CLOSED || c->state == CONN_UNUSED)
        return;
    if (error_counter)
        (*error_counter)++;
    if (!c->proven)
        unproven--;
    if (c->in_round) {
        c->in_round = false;
        in_flight--;
    }
    alive--;
    /* RST instead of FIN: no TIME_WAIT left behind, so back-to-back runs with
     * 10,000 connections never run out of local ports. */
    struct linger abort_on_close = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    close(c->fd);
    c->fd = -1;
    c->state = CONN_CLOSED;
}

/* The server closed (eof) or reset a connection: with --reconnect, a failed
 * connection, replaced so the load goes on. */
static void server_failed(struct conn *c, uint64_t *error_counter)
{
    bool was_established = c->state == CONN_ACTIVE;
    close_conn(c, error_counter);
    if (!opt.reconnect)
        return;
    if (was_established)
        connections_failed++;
    if (phase != PHASE_DRAIN && phase != PHASE_DONE) {
        reconnects++;
        open_connection(c);
    }
}

static void socket_error(struct conn *c, int error)
{
    (void)error; /* every socket error after connect counts as a reset */
    server_failed(c, &errors.reset);
}

/* Send as much of the pending message as the socket takes. */
static void send_pending(struct conn *c)
{
    while (c->sent < opt.message_size) {
        ssize_t n = send(c->fd, c->message + c->sent, opt.message_size - c->sent,
                         MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            update_events(c, true);
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        socket_error(c, errno);
        return;
    }
    update_events(c, false);
}

/* Fill in this round's message: a slice of the random pattern, stamped with
 * the connection id and the round number, and start sending it. */
static void start_round(struct conn *c)
{
    memcpy(c->message, pattern + pattern_offset(c->id, c->round), opt.message_size);
    uint32_t stamp[2] = {c->id, c->round};
    size_t stamp_len = opt.message_size < sizeof stamp ? opt.message_size : sizeof stamp;
    for (size_t i = 0; i < stamp_len; i++)
        c->message[i] ^= ((unsigned char *)stamp)[i];
    if (opt.lines > 1) {
        size_t line_bytes = opt.message_size / (size_t)opt.lines;
        for (size_t i = 0; i < opt.message_size; i++) {
            if ((i + 1) % line_bytes == 0)
                c->message[i] = '\n';
            else if (c->message[i] == '\n')
                c->message[i] = '\n' ^ 0x80;
        }
    }
    c->sent = 0;
    c->in_round = true;
    in_flight++;
    c->received = 0;
    c->round_start_ns = now_ns();
    send_pending(c);
}

/* Start the next round on `c` unless the phase's budget is spent. */
static void start_round_if_budget(struct conn *c)
{
    if (phase_budget == 0)
        return;
    if (phase_budget > 0)
        phase_budget--;
    start_round(c);
}

static void finish_round(struct conn *c, uint64_t now)
{
    c->in_round = false;
    in_flight--;
    if (phase == PHASE_MEASURE) {
        histogram[hist_index(now - c->round_start_ns)]++;
        measured_requests++;
        measured_echo_bytes += opt.message_size;
    }
    if (!c->proven) {
        c->proven = true;
        unproven--;
        proven_total++;
    }
    c->round++;
    /* During the ramp a proven connection waits, idle, for the others: load
     * from early connections would slow the handshakes of later ones. */
    if (phase != PHASE_RAMP && phase != PHASE_DRAIN)
        start_round_if_budget(c);
}

static void on_readable(struct conn *c)
{
    for (;;) {
        size_t want = opt.message_size - c->received;
        if (want > RECV_CHUNK)
            want = RECV_CHUNK;
        ssize_t n = recv(c->fd, scratch, want, 0);
        if (n > 0) {
            /* Bytes beyond what was sent, or different bytes, are a bad echo. */
            if (c->received + (size_t)n > c->sent ||
                memcmp(scratch, c->message + c->received, (size_t)n) != 0) {
                close_conn(c, &errors.mismatch);
                return;
            }
            c->received += (size_t)n;
            if (c->received == opt.message_size) {
                finish_round(c, now_ns());
                return; /* the next echo cannot be here yet: back to epoll */
            }
            continue;
        }
        if (n == 0) {
            server_failed(c, &errors.eof);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        if (errno == EINTR)
            continue;
        socket_error(c, errno);
        return;
    }
}

static void open_connection(struct conn *c)
{
    bool failed; /* otherwise completion (or failure) is reported as EPOLLOUT/EPOLLERR */
    c->fd = start_connect(epoll_fd, &server_addr, c, &failed);
    c->state = CONN_CONNECTING;
    c->want_write = true;
    alive++;
    unproven++;
    if (failed)
        close_conn(c, &errors.connect_failed);
}

static void on_connect_done(struct conn *c)
{
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0 || error != 0) {
        close_conn(c, &errors.connect_failed);
        return;
    }
    c->state = CONN_ACTIVE;
    if (phase != PHASE_DRAIN)
        start_round(c);
}

static void handle_event(struct conn *c, uint32_t events)
{
    if (c->state == CONN_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            on_connect_done(c);
        return;
    }
    if (c->state != CONN_ACTIVE)
        return;
    /* Errors and hang-ups surface as recv() results. */
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(c);
    if (c->state == CONN_ACTIVE && (events & EPOLLOUT) && c->sent < opt.message_size)
        send_pending(c);
}

/* Open connections until --connect-concurrency of them are unproven. */
static void open_more_connections(void)
{
    while (next_to_open < opt.connections && unproven < opt.connect_concurrency)
        open_connection(&conns[next_to_open++]);
}

/* ---------------------------------------------------------------- main */

/* Counted mode: say that every connection is idle at this edge of the window, and
 * wait until the driver has read its counters (a line on stdin, or end of input). */
static void quiet_edge(const char *edge)
{
    printf("quiet %s\n", edge);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin) && ferror(stdin))
        die("reading stdin");
}

/* Counted mode: no round trip left to start and none unanswered. */
static bool phase_complete(void)
{
    return phase_budget == 0 && in_flight == 0;
}

static void start_phase(long long budget)
{
    phase_budget = opt.counted ? budget : -1;
    for (int i = 0; i < opt.connections; i++)
        if (conns[i].state == CONN_ACTIVE && !conns[i].in_round)
            start_round_if_budget(&conns[i]);
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --port PORT [--host 127.0.0.1] [--connections N] [--size BYTES]\n"
            "          [--duration SECONDS] [--warmup SECONDS] [--requests COUNT]\n"
            "          [--connect-concurrency N] [--ramp-timeout SECONDS] [--server-pid PID]\n"
            "          [--server-core CORE] [--lines K] [--reconnect] [--drain SECONDS]\n"
            "          [--counted --warmup-requests COUNT --requests COUNT]\n",
            argv0);
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"connections", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},
        {"duration", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, 'w'},
        {"requests", required_argument, 0, 'r'},
        {"connect-concurrency", required_argument, 0, 'b'},
        {"ramp-timeout", required_argument, 0, 't'},
        {"server-pid", required_argument, 0, 'P'},
        {"server-core", required_argument, 0, 'C'},
        {"counted", no_argument, 0, 'K'},
        {"warmup-requests", required_argument, 0, 'W'},
        {"lines", required_argument, 0, 'L'},
        {"reconnect", no_argument, 0, 'R'},
        {"drain", required_argument, 0, 'D'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.connections = atoi(optarg); break;
        case 's': opt.message_size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'd': opt.duration_s = atof(optarg); break;
        case 'w': opt.warmup_s = atof(optarg); break;
        case 'r': opt.request_limit = atoll(optarg); break;
        case 'b': opt.connect_concurrency = atoi(optarg); break;
        case 't': opt.ramp_timeout_s = atof(optarg); break;
        case 'P': opt.server_pid = atoi(optarg); break;
        case 'C': opt.server_core = atoi(optarg); break;
        case 'K': opt.counted = true; break;
        case 'W': opt.warmup_requests = atoll(optarg); break;
        case 'L': opt.lines = atoi(optarg); break;
        case 'R': opt.reconnect = true; break;
        case 'D': opt.drain_s = atof(optarg); break;
        default: usage(argv[0]);
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.connections <= 0 ||
        opt.message_size == 0 || opt.duration_s <= 0 || opt.warmup_s < 0 ||
        opt.connect_concurrency <= 0 || opt.request_limit < 0 || opt.warmup_requests < 0 ||
        opt.drain_s < 0)
        usage(argv[0]);
    if (opt.counted && opt.request_limit == 0) {
        fprintf(stderr, "loadgen: --counted needs --requests\n");
        exit(2);
    }
    if (opt.lines < 1 || opt.message_size % (size_t)opt.lines != 0 ||
        opt.message_size / (size_t)opt.lines < 2) {
        fprintf(stderr, "loadgen: --lines must divide --size into lines of 2 bytes or more\n");
        exit(2);
    }
}


static void setup(void)
{
    raise_fd_limit(opt.connections);
    signal(SIGPIPE, SIG_IGN);

    server_addr = server_address(opt.host, opt.port);

    pattern = random_pattern(opt.message_size);
    scratch = malloc(RECV_CHUNK);
    conns = calloc((size_t)opt.connections, sizeof *conns);
    unsigned char *messages = malloc(opt.message_size * (size_t)opt.connections);
    if (!pattern || !scratch || !conns || !messages)
        die("malloc");
    for (int i = 0; i < opt.connections; i++) {
        conns[i].id = (uint32_t)i;
        conns[i].fd = -1;
        conns[i].state = CONN_UNUSED;
        conns[i].message = messages + (size_t)i * opt.message_size;
    }
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0)
        die("epoll_create1");
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    setup();

    struct epoll_event events[MAX_EVENTS];
    uint64_t run_start = now_ns();
    uint64_t ramp_deadline = run_start + (uint64_t)(opt.ramp_timeout_s * 1e9);
    uint64_t ramp_end = 0, warmup_end = 0, measure_deadline = 0, drain_end = 0;
    struct window window;
    window_init(&window, opt.server_pid, opt.server_core);

    open_more_connections();
    while (phase != PHASE_DONE) {
        uint64_t now = now_ns();
        if (phase == PHASE_RAMP) {
            bool all_settled = next_to_open == opt.connections && unproven == 0;
            if (!all_settled && now >= ramp_deadline) {
                /* Give up on stragglers; they count as connect timeouts. */
                for (int i = 0; i < next_to_open; i++)
                    if (!conns[i].proven)
                        close_conn(&conns[i], &errors.connect_timeout);
                errors.connect_timeout += (uint64_t)(opt.connections - next_to_open);
                next_to_open = opt.connections;
                all_settled = true;
            }
            if (all_settled) {
                phase = PHASE_WARMUP;
                ramp_end = now;
                warmup_end = now + (uint64_t)(opt.warmup_s * 1e9);
                start_phase(opt.warmup_requests);
            }
        }
        if (phase == PHASE_WARMUP && (opt.counted ? phase_complete() : now >= warmup_end)) {
            if (opt.counted)
                quiet_edge("window-start");
            phase = PHASE_MEASURE;
            window_open(&window);
            measure_deadline = window.start_ns + (uint64_t)(opt.duration_s * 1e9);
            if (opt.counted)
                start_phase(opt.request_limit);
        }
        if (phase == PHASE_MEASURE &&
            (now >= measure_deadline || alive == 0 ||
             (opt.counted ? phase_complete()
                          : opt.request_limit > 0 &&
                                measured_requests >= (uint64_t)opt.request_limit))) {
            window_close(&window);
            if (opt.counted)
                quiet_edge("window-end");
            if (opt.drain_s > 0) {
                phase = PHASE_DRAIN;
                drain_end = now_ns() + (uint64_t)(opt.drain_s * 1e9);
            } else {
                phase = PHASE_DONE;
                break;
            }
        }
        if (phase == PHASE_DRAIN) {
            bool settled = true;
            for (int i = 0; i < opt.connections && settled; i++)
                if (conns[i].state == CONN_CONNECTING ||
                    (conns[i].state == CONN_ACTIVE && conns[i].in_round))
                    settled = false;
            if (settled || now_ns() >= drain_end) {
                phase = PHASE_DONE;
                break;
            }
        }
        if (alive == 0 && phase != PHASE_RAMP) {
            /* Everything died before measuring: report an empty window. */
            window.start_ns = window.end_ns = now;
            phase = PHASE_DONE;
            break;
        }

        /* Wake up often enough to switch phases on time. */
        int n = epoll_wait(epoll_fd, events, MAX_EVENTS, 5);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++)
            handle_event(events[i].data.ptr, events[i].events);
        if (phase == PHASE_RAMP)
            open_more_connections();
    }

    /* Rounds still in flight on connections the server kept open: their bytes were lost. */
    uint64_t rounds_incomplete = 0;
    for (int i = 0; i < opt.connections; i++)
        if (conns[i].state == CONN_ACTIVE && conns[i].in_round)
            rounds_incomplete++;

    double window_s = window_seconds(&window);
    uint64_t error_total = errors.mismatch + errors.reset + errors.eof +
                           errors.connect_failed + errors.connect_timeout;
    printf("{\"connections\": %d, \"connections_established\": %d, "
           "\"connections_alive_at_end\": %d, \"message_bytes\": %zu, "
           "\"ramp_s\": %.3f, \"requests\": %llu, "
           "\"lines_per_request\": %d, \"messages\": %llu, \"counted\": %s, "
           "\"requests_per_s\": %.1f, \"echo_mb_per_s\": %.2f, ",
           opt.connections, proven_total, alive, opt.message_size,
           (double)((ramp_end ? ramp_end : window.end_ns) - run_start) / 1e9,
           (unsigned long long)measured_requests,
           opt.lines, (unsigned long long)measured_requests * (unsigned long long)opt.lines,
           opt.counted ? "true" : "false",
           window_s > 0 ? (double)measured_requests / window_s : 0.0,
           window_s > 0 ? (double)measured_echo_bytes / window_s / 1e6 : 0.0);
    print_window_fields(&window, measured_requests);
    printf("\"errors\": {\"mismatch\": %llu, \"reset\": %llu, \"eof\": %llu, "
           "\"connect_failed\": %llu, \"connect_timeout\": %llu}, \"errors_total\": %llu, "
           "\"connections_failed\": %llu, \"reconnects\": %llu, \"rounds_incomplete\": %llu}\n",
           (unsigned long long)errors.mismatch, (unsigned long long)errors.reset,
           (unsigned long long)errors.eof, (unsigned long long)errors.connect_failed,
           (unsigned long long)errors.connect_timeout, (unsigned long long)error_total,
           (unsigned long long)connections_failed, (unsigned long long)reconnects,
           (unsigned long long)rounds_incomplete);
    fflush(stdout);

    for (int i = 0; i < opt.connections; i++)
        close_conn(&conns[i], NULL);
    return 0;
}
