/*
 * tls_loadgen.c - closed-loop TLS echo load generator for bench/tls.py's timed figures.
 *
 * One process, one thread, epoll, OpenSSL's libssl called directly (TLS 1.3 only, no
 * session resumption). Reports one JSON line with the fields of loadgen.c's report
 * that bench/run.py reads (requests, window_s, latency_us, server_cpu_s, ...), so the
 * server's CPU time per request is measured the same way: from /proc/PID/stat of
 * --server-pid at the two edges of the window (loadgen_common.h).
 *
 * Two workloads:
 *   echo (default)  --connections connections, each connected, through its handshake
 *                   and proven by one echo before the load starts (at most
 *                   --connect-concurrency unproven at a time); then each sends a message
 *                   of --size bytes, waits for the complete echo, checks every byte and
 *                   sends the next at once. A request is one round trip, its latency
 *                   from the first byte written to the last byte read.
 *   --handshakes    --connections connections at a time, a new one per request: TCP
 *                   connect, a full TLS 1.3 handshake, one echo of --size bytes (checked),
 *                   then close_notify, and close() once the server has closed its side
 *                   (so TIME_WAIT stays on the server's side, not on our ports). A
 *                   request is one connection, its latency from connect() to the last
 *                   echoed byte; the close is outside it but inside the window.
 * Phases: ramp (echo only), warmup (--warmup seconds), measured window (--duration).
 *
 * The server's certificate is verified against --ca for --server-name (also sent as
 * SNI) when --ca is given, as a real client would.
 *
 * Build: gcc -O2 -o tls_loadgen tls_loadgen.c -lssl -lcrypto (loadgen_common.h beside
 * it; the headers come with Debian's libssl-dev).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "loadgen_common.h"

/* Largest single SSL_read(); also the size of the scratch buffer echoes land in. */
#define RECV_CHUNK (256 * 1024)
#define MAX_EVENTS 1024

struct options {
    const char *host;
    int port;
    int connections;
    size_t message_size;
    double duration_s;
    double warmup_s;
    double ramp_timeout_s;
    int connect_concurrency;
    int server_pid;              /* 0 = no server figures */
    int server_core;             /* -1 = the server is not pinned to one core */
    const char *ca_file;         /* NULL = the certificate is not verified */
    const char *server_name;
    bool handshakes;             /* a new connection per request */
};

static struct options opt = {
    .host = "127.0.0.1",
    .connections = 1,
    .message_size = 1024,
    .duration_s = 5.0,
    .warmup_s = 1.0,
    .ramp_timeout_s = 60.0,
    .connect_concurrency = 128,
    .server_core = -1,
    .server_name = "localhost",
};

enum conn_state {
    CONN_CLOSED,                 /* no socket */
    CONN_CONNECTING,             /* TCP connect() in progress */
    CONN_HANDSHAKING,            /* TLS handshake in progress */
    CONN_ECHOING,                /* established: rounds of echo */
    CONN_CLOSING,                /* --handshakes: close_notify sent, waiting for the server's EOF */
};

struct conn {
    int fd;
    SSL *ssl;
    uint32_t id;
    enum conn_state state;
    bool proven;                 /* this connection's first echo came back */
    bool want_write;             /* EPOLLOUT is registered */
    bool in_round;               /* a message was started and its echo is not complete */
    uint32_t round;
    size_t sent, received;
    uint64_t round_start_ns;
    unsigned char *message;
};

struct errors {
    uint64_t mismatch;           /* echoed bytes differ from what was sent */
    uint64_t reset;              /* socket errors after connect */
    uint64_t eof;                /* the server closed, or sent close_notify, mid-echo */
    uint64_t connect_failed;     /* refused, or failed after EINPROGRESS */
    uint64_t connect_timeout;    /* not proven before the ramp timeout */
    uint64_t tls;                /* handshake or record failure (OpenSSL's first error on stderr) */
};

enum phase { PHASE_RAMP, PHASE_WARMUP, PHASE_MEASURE, PHASE_DONE };

static SSL_CTX *ssl_ctx;
static struct conn *conns;
static unsigned char *pattern;
static unsigned char *scratch;
static int epoll_fd;
static struct sockaddr_in server_addr;
static struct errors errors;
static enum phase phase = PHASE_RAMP;
static int next_to_open;         /* echo: connections [0, next_to_open) were opened */
static int unproven;             /* echo: opened, alive and not yet proven */
static uint64_t established;     /* connections proven by an echo, over the whole run */
static int alive;                /* connections with a socket */
static uint64_t measured_requests, measured_echo_bytes;
static char negotiated[128];     /* "TLSv1.3 TLS_AES_256_GCM_SHA384" of the first handshake */
static bool tls_error_reported;

/* ---------------------------------------------------------------- connections */

static void update_events(struct conn *c, bool want_write)
{
    watch_writes(epoll_fd, c->fd, c, &c->want_write, want_write);
}

static void open_connection(struct conn *c);

/* Free the connection; with `abort`, reset it (no TIME_WAIT left behind, as loadgen.c). */
static void close_conn(struct conn *c, uint64_t *error_counter, bool abort)
{
    if (c->state == CONN_CLOSED)
        return;
    if (error_counter)
        (*error_counter)++;
    if (!opt.handshakes && !c->proven)
        unproven--;
    c->in_round = false;
    alive--;
    if (abort) {
        struct linger abort_on_close = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    }
    SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    c->fd = -1;
    c->state = CONN_CLOSED;
}

/* A connection failed after connecting: counted; with --handshakes its slot starts a
 * new one, so that the load goes on and the failure shows in the report rather than as
 * a stall. A connect() that fails is not retried (close_conn): a server that refuses
 * connections ends the run instead of being hammered with new ones. */
static void fail_conn(struct conn *c, uint64_t *error_counter)
{
    close_conn(c, error_counter, true);
    if (opt.handshakes && phase != PHASE_DONE)
        open_connection(c);
}

static void report_tls_error(const char *during)
{
    if (tls_error_reported)
        return;
    tls_error_reported = true;
    char text[256];
    ERR_error_string_n(ERR_peek_error(), text, sizeof text);
    fprintf(stderr, "tls_loadgen: TLS error during %s: %s\n", during, text);
}

/* What an SSL call that returned `result` <= 0 means: true if the connection may go on
 * (waiting for readability or writability, which is registered); false if it failed
 * (counted and closed). */
static bool ssl_may_continue(struct conn *c, int result, const char *during)
{
    int error = SSL_get_error(c->ssl, result);
    switch (error) {
    case SSL_ERROR_WANT_READ:
        update_events(c, false);
        return true;
    case SSL_ERROR_WANT_WRITE:
        update_events(c, true);
        return true;
    case SSL_ERROR_ZERO_RETURN:
        fail_conn(c, &errors.eof);
        return false;
    case SSL_ERROR_SYSCALL: /* EOF is ZERO_RETURN here (SSL_OP_IGNORE_UNEXPECTED_EOF) */
        fail_conn(c, &errors.reset);
        return false;
    default:
        report_tls_error(during);
        ERR_clear_error();
        fail_conn(c, &errors.tls);
        return false;
    }
}

static void send_pending(struct conn *c)
{
    while (c->sent < opt.message_size) {
        ERR_clear_error();
        int n = SSL_write(c->ssl, c->message + c->sent, (int)(opt.message_size - c->sent));
        if (n <= 0) {
            ssl_may_continue(c, n, "SSL_write");
            return;
        }
        c->sent += (size_t)n;
    }
    update_events(c, false);
}

static void start_round(struct conn *c)
{
    memcpy(c->message, pattern + pattern_offset(c->id, c->round), opt.message_size);
    c->sent = c->received = 0;
    c->in_round = true;
    if (!opt.handshakes) /* --handshakes: the clock started at connect() */
        c->round_start_ns = now_ns();
    send_pending(c);
}

/* --handshakes: the request is done; say close_notify and wait for the server to close. */
static void start_closing(struct conn *c)
{
    c->state = CONN_CLOSING;
    ERR_clear_error();
    int result = SSL_shutdown(c->ssl); /* 0: ours is sent, the server's not yet read */
    if (result < 0 && SSL_get_error(c->ssl, result) == SSL_ERROR_WANT_WRITE)
        update_events(c, true); /* sent when writable (on_closing_event) */
    else
        update_events(c, false);
}

static void finish_round(struct conn *c, uint64_t now)
{
    c->in_round = false;
    if (phase == PHASE_MEASURE) {
        histogram[hist_index(now - c->round_start_ns)]++;
        measured_requests++;
        measured_echo_bytes += opt.message_size;
    }
    if (!c->proven) {
        c->proven = true;
        established++;
        if (!opt.handshakes)
            unproven--;
    }
    c->round++;
    if (opt.handshakes) {
        start_closing(c);
        return;
    }
    /* During the ramp a proven connection waits, idle, for the others. */
    if (phase != PHASE_RAMP)
        start_round(c);
}

static void on_readable(struct conn *c)
{
    while (c->in_round) {
        size_t want = opt.message_size - c->received;
        if (want > RECV_CHUNK)
            want = RECV_CHUNK;
        ERR_clear_error();
        int n = SSL_read(c->ssl, scratch, (int)want);
        if (n <= 0) {
            if (ssl_may_continue(c, n, "SSL_read") && c->sent < opt.message_size)
                update_events(c, true); /* the write still waits, whatever the read wanted */
            return;
        }
        if (c->received + (size_t)n > c->sent ||
            memcmp(scratch, c->message + c->received, (size_t)n) != 0) {
            fail_conn(c, &errors.mismatch);
            return;
        }
        c->received += (size_t)n;
        if (c->received == opt.message_size) {
            finish_round(c, now_ns());
            return; /* the next echo cannot be here yet: back to epoll */
        }
    }
}

/* --handshakes, after close_notify: the server's close_notify, then its EOF. Bytes
 * are not checked any more (the server's close_notify is among them). */
static void on_closing_event(struct conn *c, uint32_t events)
{
    if (c->want_write && (events & EPOLLOUT)) {
        ERR_clear_error();
        int result = SSL_shutdown(c->ssl);
        if (result < 0 && SSL_get_error(c->ssl, result) == SSL_ERROR_WANT_WRITE)
            return;
        update_events(c, false);
    }
    for (;;) {
        ssize_t n = recv(c->fd, scratch, RECV_CHUNK, 0);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* EOF, or a reset after our close_notify: the connection is over either way. */
        close_conn(c, NULL, n < 0);
        if (phase != PHASE_DONE)
            open_connection(c);
        return;
    }
}

static void on_handshake_event(struct conn *c)
{
    ERR_clear_error();
    int result = SSL_do_handshake(c->ssl);
    if (result <= 0) {
        ssl_may_continue(c, result, "the handshake");
        return;
    }
    if (!negotiated[0])
        snprintf(negotiated, sizeof negotiated, "%s %s", SSL_get_version(c->ssl),
                 SSL_get_cipher_name(c->ssl));
    c->state = CONN_ECHOING;
    update_events(c, false);
    start_round(c);
}

static void on_connect_done(struct conn *c)
{
    int error = 0;
    socklen_t len = sizeof error;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0 || error != 0) {
        close_conn(c, &errors.connect_failed, true);
        return;
    }
    c->ssl = SSL_new(ssl_ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd) ||
        !SSL_set_tlsext_host_name(c->ssl, opt.server_name) ||
        (opt.ca_file && !SSL_set1_host(c->ssl, opt.server_name)))
        die("SSL_new");
    SSL_set_connect_state(c->ssl);
    c->state = CONN_HANDSHAKING;
    on_handshake_event(c);
}

static void handle_event(struct conn *c, uint32_t events)
{
    switch (c->state) {
    case CONN_CONNECTING:
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            on_connect_done(c);
        break;
    case CONN_HANDSHAKING:
        on_handshake_event(c);
        break;
    case CONN_ECHOING:
        /* Errors and hang-ups surface as SSL_read results. */
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            on_readable(c);
        if (c->state == CONN_ECHOING && (events & EPOLLOUT) && c->sent < opt.message_size)
            send_pending(c);
        break;
    case CONN_CLOSING:
        on_closing_event(c, events);
        break;
    case CONN_CLOSED:
        break;
    }
}

static void open_connection(struct conn *c)
{
    bool failed;
    c->fd = start_connect(epoll_fd, &server_addr, c, &failed);
    c->state = CONN_CONNECTING;
    c->want_write = true;
    c->in_round = false;
    c->proven = false;
    c->round_start_ns = now_ns();
    alive++;
    if (!opt.handshakes)
        unproven++;
    if (failed)
        close_conn(c, &errors.connect_failed, true);
}

static void open_more_connections(void)
{
    while (next_to_open < opt.connections && unproven < opt.connect_concurrency)
        open_connection(&conns[next_to_open++]);
}

/* ---------------------------------------------------------------- main */

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --port PORT [--host 127.0.0.1] [--connections N] [--size BYTES]\n"
            "          [--duration SECONDS] [--warmup SECONDS] [--ramp-timeout SECONDS]\n"
            "          [--connect-concurrency N] [--server-pid PID] [--server-core CORE]\n"
            "          [--ca CA.pem] [--server-name localhost] [--handshakes]\n",
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
        {"ramp-timeout", required_argument, 0, 't'},
        {"connect-concurrency", required_argument, 0, 'b'},
        {"server-pid", required_argument, 0, 'P'},
        {"server-core", required_argument, 0, 'C'},
        {"ca", required_argument, 0, 'A'},
        {"server-name", required_argument, 0, 'N'},
        {"handshakes", no_argument, 0, 'H'},
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
        case 't': opt.ramp_timeout_s = atof(optarg); break;
        case 'b': opt.connect_concurrency = atoi(optarg); break;
        case 'P': opt.server_pid = atoi(optarg); break;
        case 'C': opt.server_core = atoi(optarg); break;
        case 'A': opt.ca_file = optarg; break;
        case 'N': opt.server_name = optarg; break;
        case 'H': opt.handshakes = true; break;
        default: usage(argv[0]);
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.connections <= 0 || opt.message_size == 0 ||
        opt.message_size > INT32_MAX || opt.duration_s <= 0 || opt.warmup_s < 0 ||
        opt.connect_concurrency <= 0)
        usage(argv[0]);
}

static void setup(void)
{
    raise_fd_limit(opt.connections);
    signal(SIGPIPE, SIG_IGN);
    server_addr = server_address(opt.host, opt.port);

    ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!ssl_ctx || !SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_3_VERSION))
        die("SSL_CTX_new");
    /* A large SSL_write returns after each record sent rather than all or nothing, and
     * is retried from where it stopped. */
    SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Every --handshakes connection is a full handshake: no session is kept to resume. */
    SSL_CTX_set_session_cache_mode(ssl_ctx, SSL_SESS_CACHE_OFF);
    /* A server closing without close_notify is an EOF (counted as such), not a TLS error. */
    SSL_CTX_set_options(ssl_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (opt.ca_file) {
        if (SSL_CTX_load_verify_locations(ssl_ctx, opt.ca_file, NULL) != 1) {
            fprintf(stderr, "tls_loadgen: cannot load --ca %s\n", opt.ca_file);
            exit(2);
        }
        SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_PEER, NULL);
    }

    pattern = random_pattern(opt.message_size);
    scratch = malloc(RECV_CHUNK);
    conns = calloc((size_t)opt.connections, sizeof *conns);
    unsigned char *messages = malloc(opt.message_size * (size_t)opt.connections);
    if (!scratch || !conns || !messages)
        die("malloc");
    for (int i = 0; i < opt.connections; i++) {
        conns[i].id = (uint32_t)i;
        conns[i].fd = -1;
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
    uint64_t ramp_end = 0, warmup_end = 0, measure_deadline = 0;
    struct window window;
    window_init(&window, opt.server_pid, opt.server_core);

    if (opt.handshakes) {
        /* Nothing to ramp: every request is a new connection. */
        phase = PHASE_WARMUP;
        ramp_end = run_start;
        warmup_end = run_start + (uint64_t)(opt.warmup_s * 1e9);
        for (int i = 0; i < opt.connections; i++)
            open_connection(&conns[i]);
    } else {
        open_more_connections();
    }
    while (phase != PHASE_DONE) {
        uint64_t now = now_ns();
        if (phase == PHASE_RAMP) {
            bool all_settled = next_to_open == opt.connections && unproven == 0;
            if (!all_settled && now >= ramp_deadline) {
                for (int i = 0; i < next_to_open; i++)
                    if (!conns[i].proven)
                        close_conn(&conns[i], &errors.connect_timeout, true);
                errors.connect_timeout += (uint64_t)(opt.connections - next_to_open);
                next_to_open = opt.connections;
                all_settled = true;
            }
            if (all_settled) {
                phase = PHASE_WARMUP;
                ramp_end = now;
                warmup_end = now + (uint64_t)(opt.warmup_s * 1e9);
                for (int i = 0; i < opt.connections; i++)
                    if (conns[i].state == CONN_ECHOING && !conns[i].in_round)
                        start_round(&conns[i]);
            }
        }
        if (phase == PHASE_WARMUP && now >= warmup_end) {
            phase = PHASE_MEASURE;
            window_open(&window);
            measure_deadline = window.start_ns + (uint64_t)(opt.duration_s * 1e9);
        }
        if (phase == PHASE_MEASURE && (now >= measure_deadline || alive == 0)) {
            window_close(&window);
            phase = PHASE_DONE;
            break;
        }
        if (alive == 0 && phase != PHASE_RAMP) {
            /* Everything died before measuring: report an empty window. */
            window.start_ns = window.end_ns = now;
            phase = PHASE_DONE;
            break;
        }
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

    double window_s = window_seconds(&window);
    uint64_t error_total = errors.mismatch + errors.reset + errors.eof + errors.connect_failed +
                           errors.connect_timeout + errors.tls;
    printf("{\"workload\": \"%s\", \"tls\": \"%s\", \"connections\": %d, "
           "\"connections_established\": %llu, \"connections_alive_at_end\": %d, "
           "\"message_bytes\": %zu, \"ramp_s\": %.3f, \"requests\": %llu, \"messages\": %llu, "
           "\"requests_per_s\": %.1f, \"echo_mb_per_s\": %.2f, ",
           opt.handshakes ? "handshakes" : "echo", negotiated, opt.connections,
           (unsigned long long)established, alive, opt.message_size,
           (double)((ramp_end ? ramp_end : window.end_ns) - run_start) / 1e9,
           (unsigned long long)measured_requests, (unsigned long long)measured_requests,
           window_s > 0 ? (double)measured_requests / window_s : 0.0,
           window_s > 0 ? (double)measured_echo_bytes / window_s / 1e6 : 0.0);
    print_window_fields(&window, measured_requests);
    printf("\"errors\": {\"mismatch\": %llu, \"reset\": %llu, \"eof\": %llu, "
           "\"connect_failed\": %llu, \"connect_timeout\": %llu, \"tls\": %llu}, "
           "\"errors_total\": %llu}\n",
           (unsigned long long)errors.mismatch, (unsigned long long)errors.reset,
           (unsigned long long)errors.eof, (unsigned long long)errors.connect_failed,
           (unsigned long long)errors.connect_timeout, (unsigned long long)errors.tls,
           (unsigned long long)error_total);
    fflush(stdout);

    for (int i = 0; i < opt.connections; i++)
        close_conn(&conns[i], NULL, true);
    SSL_CTX_free(ssl_ctx);
    return 0;
}
