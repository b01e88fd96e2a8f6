/*
 * c_epoll_echo.c - the "C floor": a plain single-threaded epoll echo server.
 *
 * Level-triggered. On readable: one read() into a fixed buffer (2048 bytes by
 * default, like simpletcp's recv_bytes), then an immediate send(); only what
 * the socket does not take is copied to a per-connection output buffer, and
 * only then is EPOLLOUT registered. While more than OUTPUT_HIGH_WATER bytes
 * are pending, the connection is not read (backpressure).
 *
 * With --lines it answers line by line (the floor of the framed workload W5): each
 * complete line, '\n' included, is found with memchr() and queued as its own answer;
 * a line's unfinished end waits for the next read (at most MAX_LINE bytes, else the
 * connection is closed). The answers of one read go out in one send().
 *
 * Usage: c_epoll_echo [--port PORT] [--recv-bytes N] [--backlog N] [--lines]
 * Port 0 (the default) binds an ephemeral port. The bound port is printed as
 * the first line of stdout. Listens on 127.0.0.1 only.
 *
 * Build: gcc -O2 -o c_epoll_echo c_epoll_echo.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define ACCEPT_BATCH 128
#define OUTPUT_HIGH_WATER (4 * 1024 * 1024)
#define MAX_LINE (64 * 1024)

struct conn {
    bool open;
    bool want_write;             /* EPOLLOUT registered */
    bool reading;                /* EPOLLIN registered */
    char *pending;               /* output the socket has not taken yet */
    size_t pending_start, pending_end, pending_capacity;
    char *partial;               /* --lines: the start of a line whose '\n' has not come */
    size_t partial_len;
};

static struct conn *conns;      /* indexed by file descriptor */
static size_t conns_capacity;
static int epoll_fd;
static bool answer_lines;

static void die(const char *what)
{
    fprintf(stderr, "c_epoll_echo: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void set_events(int fd, struct conn *c, bool reading, bool want_write)
{
    if (c->reading == reading && c->want_write == want_write)
        return;
    struct epoll_event ev = {
        .events = (reading ? EPOLLIN : 0) | (want_write ? EPOLLOUT : 0),
        .data.fd = fd,
    };
    if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev) < 0)
        die("epoll_ctl(MOD)");
    c->reading = reading;
    c->want_write = want_write;
}

static void close_conn(int fd)
{
    struct conn *c = &conns[fd];
    free(c->pending);
    free(c->partial);
    memset(c, 0, sizeof *c);
    close(fd); /* also removes it from the epoll set */
}

static size_t pending_bytes(const struct conn *c)
{
    return c->pending_end - c->pending_start;
}

static void append_pending(struct conn *c, const char *data, size_t len)
{
    if (c->pending_end + len > c->pending_capacity) {
        size_t used = pending_bytes(c);
        memmove(c->pending, c->pending + c->pending_start, used);
        c->pending_start = 0;
        c->pending_end = used;
        if (used + len > c->pending_capacity) {
            size_t capacity = c->pending_capacity ? c->pending_capacity : 4096;
            while (capacity < used + len)
                capacity *= 2;
            c->pending = realloc(c->pending, capacity);
            if (!c->pending)
                die("realloc");
            c->pending_capacity = capacity;
        }
    }
    memcpy(c->pending + c->pending_end, data, len);
    c->pending_end += len;
}

/* Send what is pending; returns false if the connection was closed. */
static bool flush_pending(int fd, struct conn *c)
{
    while (pending_bytes(c) > 0) {
        ssize_t n = send(fd, c->pending + c->pending_start, pending_bytes(c), MSG_NOSIGNAL);
        if (n > 0) {
            c->pending_start += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            close_conn(fd);
            return false;
        }
    }
    if (pending_bytes(c) == 0)
        c->pending_start = c->pending_end = 0;
    set_events(fd, c, pending_bytes(c) < OUTPUT_HIGH_WATER, pending_bytes(c) > 0);
    return true;
}

/* --lines: answer every complete line of `data`, then send the answers. */
static void answer_each_line(int fd, struct conn *c, const char *data, size_t len)
{
    size_t start = 0;
    const char *newline;
    while ((newline = memchr(data + start, '\n', len - start)) != NULL) {
        size_t end = (size_t)(newline - data) + 1;
        if (c->partial_len > 0) {
            append_pending(c, c->partial, c->partial_len);
            c->partial_len = 0;
        }
        append_pending(c, data + start, end - start);
        start = end;
    }
    if (start < len) {
        if (c->partial_len + (len - start) > MAX_LINE) {
            close_conn(fd);
            return;
        }
        if (!c->partial && !(c->partial = malloc(MAX_LINE)))
            die("malloc");
        memcpy(c->partial + c->partial_len, data + start, len - start);
        c->partial_len += len - start;
    }
    flush_pending(fd, c);
}

static void on_readable(int fd, struct conn *c, char *buffer, size_t buffer_size)
{
    ssize_t n = read(fd, buffer, buffer_size);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        close_conn(fd);
        return;
    }
    if (n < 0)
        return;
    if (answer_lines) {
        answer_each_line(fd, c, buffer, (size_t)n);
        return;
    }
    if (pending_bytes(c) > 0) {
        /* Keep order: new data goes behind what is already waiting. */
        append_pending(c, buffer, (size_t)n);
        flush_pending(fd, c);
        return;
    }
    ssize_t sent = send(fd, buffer, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            close_conn(fd);
            return;
        }
        sent = 0;
    }
    if (sent < n) {
        append_pending(c, buffer + sent, (size_t)(n - sent));
        set_events(fd, c, pending_bytes(c) < OUTPUT_HIGH_WATER, true);
    }
}

static void accept_connections(int listen_fd)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
                errno == ECONNABORTED)
                return;
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "c_epoll_echo: accept: %s\n", strerror(errno));
                return;
            }
            die("accept4");
        }
        if ((size_t)fd >= conns_capacity) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = &conns[fd];
        memset(c, 0, sizeof *c);
        c->open = true;
        c->reading = true;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl(ADD)");
    }
}

int main(int argc, char **argv)
{
    int port = 0, backlog = 1024;
    size_t recv_bytes = 2048;
    static const struct option long_options[] = {
        {"port", required_argument, 0, 'p'},
        {"recv-bytes", required_argument, 0, 'r'},
        {"backlog", required_argument, 0, 'b'},
        {"lines", no_argument, 0, 'l'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (ch) {
        case 'p': port = atoi(optarg); break;
        case 'r': recv_bytes = (size_t)strtoull(optarg, NULL, 10); break;
        case 'b': backlog = atoi(optarg); break;
        case 'l': answer_lines = true; break;
        default:
            fprintf(stderr, "usage: %s [--port PORT] [--recv-bytes N] [--backlog N] [--lines]\n",
                    argv[0]);
            return 2;
        }
    }
    if (recv_bytes == 0) {
        fprintf(stderr, "c_epoll_echo: --recv-bytes must be positive\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    conns_capacity = lim.rlim_cur;
    conns = calloc(conns_capacity, sizeof *conns);
    char *buffer = malloc(recv_bytes);
    if (!conns || !buffer)
        die("malloc");

    int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        die("socket");
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
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

    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listen_fd};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listen_fd, &ev) < 0)
        die("epoll_ctl(ADD listen)");

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epoll_fd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listen_fd) {
                accept_connections(listen_fd);
                continue;
            }
            struct conn *c = &conns[fd];
            if (!c->open)
                continue; /* closed earlier in this batch */
            uint32_t e = events[i].events;
            if ((e & EPOLLOUT) && !flush_pending(fd, c))
                continue;
            /* EPOLLERR/EPOLLHUP: read() reports the error or EOF. */
            if (c->reading && (e & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(fd, c, buffer, recv_bytes);
            else if (!c->reading && (e & (EPOLLERR | EPOLLHUP)))
                close_conn(fd);
        }
    }
}
