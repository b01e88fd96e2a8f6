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
 * Build: gcc -O2 -o loadgen loadgen.c
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

/* Largest single recv(); also the size of the scratch buffer echoes land in. */
#define RECV_CHUNK (256 * 1024)
/* Messages start at a per-(connection, round) offset into a random pattern of
 * message_size + PATTERN_SPAN bytes, so consecutive messages differ. */
#define PATTERN_SPAN 4093
#define MAX_EVENTS 1024

/* ---------------------------------------------------------------- histogram */
/*
 * Log-linear latency histogram in nanoseconds (HDR-style): values below 128 ns
 * get one bucket each; above that each power of two is split into 64 buckets,
 * so a bucket is at most 1/64 (1.6 %) wide. Covers up to 2^40 ns (~18 min).
 */
#define HIST_SUB 64
#define HIST_BUCKETS (2 * HIST_SUB + 34 * HIST_SUB)

static uint64_t histogram[HIST_BUCKETS];

static int hist_index(uint64_t ns)
{
    if (ns < 2 * HIST_SUB)
        return (int)ns;
    int msb = 63 - __builtin_clzll(ns);
    int shift = msb - 6; /* keeps 7 significant bits: value >> shift in [64,128) */
    int index = 2 * HIST_SUB + (shift - 1) * HIST_SUB + (int)((ns >> shift) - HIST_SUB);
    return index < HIST_BUCKETS ? index : HIST_BUCKETS - 1;
}

/* Middle of a bucket, the value reported for any sample that fell in it. */
static double hist_value(int index)
{
    if (index < 2 * HIST_SUB)
        return index;
    int shift = (index - 2 * HIST_SUB) / HIST_SUB + 1;
    uint64_t low = (uint64_t)((index - 2 * HIST_SUB) % HIST_SUB + HIST_SUB) << shift;
    return (double)low + (double)(1ULL << shift) / 2.0;
}

static double hist_percentile(uint64_t count, double fraction)
{
    if (count == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(fraction * (double)count);
    if (rank >= count)
        rank = count - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += histogram[i];
        if (seen > rank)
            return hist_value(i);
    }
    return hist_value(HIST_BUCKETS - 1);
}

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

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---------------------------------------------------------------- /proc */

/* utime+stime of a whole process in seconds, or -1 if it is gone. */
static double process_cpu_seconds(int pid)
{
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1.0;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    /* The command name (field 2) may contain spaces: fields are counted from
     * the last ')'. After it come field 3 (state) ... utime is 14, stime 15. */
    char *p = strrchr(text, ')');
    if (!p)
        return -1.0;
    unsigned long long utime = 0, stime = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &utime, &stime) != 2)
        return -1.0;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* A "VmXXX:" line of /proc/PID/status in KiB, or -1. */
static long process_status_kib(int pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long value = -1;
    size_t key_len = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, key_len) == 0 && line[key_len] == ':') {
            value = strtol(line + key_len + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return value;
}

/* Busy time of one core (everything but idle and iowait) in seconds, from
 * /proc/stat. Unlike a process's utime+stime it includes interrupt and softirq
 * time, where much of the loopback TCP work is accounted. */
static double core_busy_seconds(int core)
{
    char line[512], name[32];
    snprintf(name, sizeof name, "cpu%d ", core);
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1.0;
    double busy = -1.0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, name, strlen(name)) != 0)
            continue;
        unsigned long long user, nice, system, idle, iowait, irq, softirq, steal;
        if (sscanf(line + strlen(name), "%llu %llu %llu %llu %llu %llu %llu %llu", &user,
                   &nice, &system, &idle, &iowait, &irq, &softirq, &steal) == 8)
            busy = (double)(user + nice + system + irq + softirq + steal) /
                   (double)sysconf(_SC_CLK_TCK);
        break;
    }
    fclose(f);
    return busy;
}

/* The one core this process is allowed on, or -1. */
static int own_core(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0 || CPU_COUNT(&set) != 1)
        return -1;
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &set))
            return i;
    return -1;
}

static double self_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---------------------------------------------------------------- connections */

static void update_events(struct conn *c, bool want_write)
{
    if (c->want_write == want_write)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_write ? EPOLLOUT : 0),
                             .data.ptr = c};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl(MOD)");
    c->want_write = want_write;
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
    size_t offset = ((size_t)c->id * 2654435761u + (size_t)c->round * 40503u) % PATTERN_SPAN;
    memcpy(c->message, pattern + offset, opt.message_size);
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
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = CONN_CONNECTING;
    c->want_write = true;
    alive++;
    unproven++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl(ADD)");
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 &&
        errno != EINPROGRESS) {
        close_conn(c, &errors.connect_failed);
    }
    /* Completion (or failure) is reported as EPOLLOUT/EPOLLERR. */
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

/* Each connection needs a descriptor; the soft limit is often 1024. */
static void raise_fd_limit(void)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) < 0)
        die("getrlimit");
    rlim_t needed = (rlim_t)opt.connections + 64;
    if (lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &lim) < 0)
            die("setrlimit(RLIMIT_NOFILE)");
    }
    if (lim.rlim_cur < needed)
        fprintf(stderr, "loadgen: warning: RLIMIT_NOFILE hard limit %llu < %llu needed\n",
                (unsigned long long)lim.rlim_max, (unsigned long long)needed);
}

static void setup(void)
{
    raise_fd_limit();
    signal(SIGPIPE, SIG_IGN);

    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &server_addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address, got %s\n", opt.host);
        exit(2);
    }

    /* xorshift64: the same pattern on every run. */
    pattern = malloc(opt.message_size + PATTERN_SPAN);
    scratch = malloc(RECV_CHUNK);
    conns = calloc((size_t)opt.connections, sizeof *conns);
    unsigned char *messages = malloc(opt.message_size * (size_t)opt.connections);
    if (!pattern || !scratch || !conns || !messages)
        die("malloc");
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < opt.message_size + PATTERN_SPAN; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern[i] = (unsigned char)(x >> 24);
    }
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
    uint64_t ramp_end = 0, warmup_end = 0, measure_start = 0, measure_end = 0;
    uint64_t drain_end = 0;
    double server_cpu_start = -1, self_cpu_start = 0;
    double server_cpu_s = -1, self_cpu_s = 0;
    int loadgen_core = own_core();
    double server_core_start = -1, loadgen_core_start = -1;
    double server_core_busy_s = -1, loadgen_core_busy_s = -1;
    long server_rss_kib = -1, server_hwm_kib = -1;

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
            measure_start = now_ns();
            measure_end = measure_start + (uint64_t)(opt.duration_s * 1e9);
            self_cpu_start = self_cpu_seconds();
            if (opt.server_pid)
                server_cpu_start = process_cpu_seconds(opt.server_pid);
            if (opt.server_core >= 0)
                server_core_start = core_busy_seconds(opt.server_core);
            if (loadgen_core >= 0)
                loadgen_core_start = core_busy_seconds(loadgen_core);
            if (opt.counted)
                start_phase(opt.request_limit);
        }
        if (phase == PHASE_MEASURE &&
            (now >= measure_end || alive == 0 ||
             (opt.counted ? phase_complete()
                          : opt.request_limit > 0 &&
                                measured_requests >= (uint64_t)opt.request_limit))) {
            measure_end = now_ns();
            self_cpu_s = self_cpu_seconds() - self_cpu_start;
            if (server_core_start >= 0)
                server_core_busy_s = core_busy_seconds(opt.server_core) - server_core_start;
            if (loadgen_core_start >= 0)
                loadgen_core_busy_s = core_busy_seconds(loadgen_core) - loadgen_core_start;
            if (opt.server_pid) {
                double cpu_end = process_cpu_seconds(opt.server_pid);
                if (server_cpu_start >= 0 && cpu_end >= 0)
                    server_cpu_s = cpu_end - server_cpu_start;
                server_rss_kib = process_status_kib(opt.server_pid, "VmRSS");
                server_hwm_kib = process_status_kib(opt.server_pid, "VmHWM");
            }
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
            measure_start = measure_end = now;
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

    double window_s = (double)(measure_end - measure_start) / 1e9;
    uint64_t error_total = errors.mismatch + errors.reset + errors.eof +
                           errors.connect_failed + errors.connect_timeout;
    double mean_us = 0;
    {
        double sum = 0;
        for (int i = 0; i < HIST_BUCKETS; i++)
            sum += (double)histogram[i] * hist_value(i);
        if (measured_requests)
            mean_us = sum / (double)measured_requests / 1000.0;
    }
    double max_us = 0;
    for (int i = HIST_BUCKETS - 1; i >= 0; i--)
        if (histogram[i]) {
            max_us = hist_value(i) / 1000.0;
            break;
        }

    printf("{\"connections\": %d, \"connections_established\": %d, "
           "\"connections_alive_at_end\": %d, \"message_bytes\": %zu, "
           "\"ramp_s\": %.3f, \"window_s\": %.3f, \"requests\": %llu, "
           "\"lines_per_request\": %d, \"messages\": %llu, \"counted\": %s, "
           "\"requests_per_s\": %.1f, \"echo_mb_per_s\": %.2f, "
           "\"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, "
           "\"max\": %.1f, \"mean\": %.1f}, "
           "\"errors\": {\"mismatch\": %llu, \"reset\": %llu, \"eof\": %llu, "
           "\"connect_failed\": %llu, \"connect_timeout\": %llu}, \"errors_total\": %llu, "
           "\"loadgen_cpu_s\": %.4f, \"server_cpu_s\": %.4f, "
           "\"server_core_busy_s\": %.4f, \"loadgen_core_busy_s\": %.4f, "
           "\"server_rss_kib\": %ld, \"server_hwm_kib\": %ld, "
           "\"connections_failed\": %llu, \"reconnects\": %llu, \"rounds_incomplete\": %llu}\n",
           opt.connections, proven_total, alive, opt.message_size,
           (double)((ramp_end ? ramp_end : measure_end) - run_start) / 1e9, window_s,
           (unsigned long long)measured_requests,
           opt.lines, (unsigned long long)measured_requests * (unsigned long long)opt.lines,
           opt.counted ? "true" : "false",
           window_s > 0 ? (double)measured_requests / window_s : 0.0,
           window_s > 0 ? (double)measured_echo_bytes / window_s / 1e6 : 0.0,
           hist_percentile(measured_requests, 0.50) / 1000.0,
           hist_percentile(measured_requests, 0.90) / 1000.0,
           hist_percentile(measured_requests, 0.99) / 1000.0,
           hist_percentile(measured_requests, 0.999) / 1000.0, max_us, mean_us,
           (unsigned long long)errors.mismatch, (unsigned long long)errors.reset,
           (unsigned long long)errors.eof, (unsigned long long)errors.connect_failed,
           (unsigned long long)errors.connect_timeout, (unsigned long long)error_total,
           self_cpu_s, server_cpu_s, server_core_busy_s, loadgen_core_busy_s, server_rss_kib, server_hwm_kib,
           (unsigned long long)connections_failed, (unsigned long long)reconnects,
           (unsigned long long)rounds_incomplete);
    fflush(stdout);

    for (int i = 0; i < opt.connections; i++)
        close_conn(&conns[i], NULL);
    return 0;
}
