/*
 * loadgen_common.h - what both load generators share, loadgen.c (plain TCP) and
 * tls_loadgen.c (TLS): the random pattern their messages are cut from, how a connection
 * is opened and watched, the latency histogram, the clocks, and the figures of the
 * measured window read from /proc (the server's CPU time and memory, each core's busy
 * time), printed as the JSON fields bench/run.py reads.
 *
 * Include it once, after _GNU_SOURCE and the system headers below.
 */
#ifndef LOADGEN_COMMON_H
#define LOADGEN_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
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

/* ---------------------------------------------------------------- messages */

/* Messages start at a per-(connection, round) offset into a random pattern of
 * message_size + PATTERN_SPAN bytes, so consecutive messages differ and a stale or
 * misplaced echo is caught. */
#define PATTERN_SPAN 4093

/* xorshift64: the same pattern on every run. */
static unsigned char *random_pattern(size_t message_size)
{
    unsigned char *pattern = malloc(message_size + PATTERN_SPAN);
    if (!pattern)
        die("malloc");
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < message_size + PATTERN_SPAN; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern[i] = (unsigned char)(x >> 24);
    }
    return pattern;
}

static size_t pattern_offset(uint32_t connection, uint32_t round)
{
    return ((size_t)connection * 2654435761u + (size_t)round * 40503u) % PATTERN_SPAN;
}

/* ---------------------------------------------------------------- sockets */

/* HOST:PORT as a connect() address; exits on a host that is not an IPv4 address. */
static struct sockaddr_in server_address(const char *host, int port)
{
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address, got %s\n", host);
        exit(2);
    }
    return address;
}

/* A non-blocking TCP_NODELAY socket connecting to `address`, watched by `epoll_fd` for
 * reads and writes with `data` (the connect's completion or failure shows as EPOLLOUT
 * or EPOLLERR). *failed is set when connect() failed at once. */
static int start_connect(int epoll_fd, const struct sockaddr_in *address, void *data,
                         bool *failed)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = data};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl(ADD)");
    *failed = connect(fd, (const struct sockaddr *)address, sizeof *address) < 0 &&
              errno != EINPROGRESS;
    return fd;
}

/* Readability is always watched; writability only while `want_write`, since a socket
 * is almost always writable and level-triggered epoll would spin. *watching_writes is
 * what is registered now. */
static void watch_writes(int epoll_fd, int fd, void *data, bool *watching_writes,
                         bool want_write)
{
    if (*watching_writes == want_write)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_write ? EPOLLOUT : 0), .data.ptr = data};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev) < 0)
        die("epoll_ctl(MOD)");
    *watching_writes = want_write;
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
/* ---------------------------------------------------------------- the window */

/* Each connection needs a descriptor; the soft limit is often 1024. */
static void raise_fd_limit(int connections)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) < 0)
        die("getrlimit");
    rlim_t needed = (rlim_t)connections + 64;
    if (lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &lim) < 0)
            die("setrlimit(RLIMIT_NOFILE)");
    }
    if (lim.rlim_cur < needed)
        fprintf(stderr, "loadgen: warning: RLIMIT_NOFILE hard limit %llu < %llu needed\n",
                (unsigned long long)lim.rlim_max, (unsigned long long)needed);
}

/* The measured window: its edges and what each side spent in it. A figure that could
 * not be read is -1 (no --server-pid, the server gone, a core not pinned). */
struct window {
    int server_pid;              /* 0 = no server figures */
    int server_core;             /* -1 = the server is not pinned to one core */
    int loadgen_core;            /* -1 = this process is not pinned to one core */
    uint64_t start_ns, end_ns;
    /* Readings at the start of the window. */
    double self_cpu_start, server_cpu_start, server_core_start, loadgen_core_start;
    /* Differences over the window. */
    double self_cpu_s, server_cpu_s, server_core_busy_s, loadgen_core_busy_s;
    long server_rss_kib, server_hwm_kib;
};

static void window_init(struct window *w, int server_pid, int server_core)
{
    *w = (struct window){.server_pid = server_pid, .server_core = server_core,
                         .loadgen_core = own_core(), .server_cpu_start = -1,
                         .server_core_start = -1, .loadgen_core_start = -1,
                         .server_cpu_s = -1, .server_core_busy_s = -1,
                         .loadgen_core_busy_s = -1, .server_rss_kib = -1,
                         .server_hwm_kib = -1};
}

static void window_open(struct window *w)
{
    w->start_ns = now_ns();
    w->self_cpu_start = self_cpu_seconds();
    if (w->server_pid)
        w->server_cpu_start = process_cpu_seconds(w->server_pid);
    if (w->server_core >= 0)
        w->server_core_start = core_busy_seconds(w->server_core);
    if (w->loadgen_core >= 0)
        w->loadgen_core_start = core_busy_seconds(w->loadgen_core);
}

/* end - start, or -1 if either reading failed. */
static double difference(double start, double end)
{
    return start < 0 || end < 0 ? -1.0 : end - start;
}

/* The window ends now, with every connection still open (for the server's RSS). */
static void window_close(struct window *w)
{
    w->end_ns = now_ns();
    w->self_cpu_s = self_cpu_seconds() - w->self_cpu_start;
    if (w->server_core >= 0)
        w->server_core_busy_s = difference(w->server_core_start,
                                           core_busy_seconds(w->server_core));
    if (w->loadgen_core >= 0)
        w->loadgen_core_busy_s = difference(w->loadgen_core_start,
                                            core_busy_seconds(w->loadgen_core));
    if (w->server_pid) {
        w->server_cpu_s = difference(w->server_cpu_start, process_cpu_seconds(w->server_pid));
        w->server_rss_kib = process_status_kib(w->server_pid, "VmRSS");
        w->server_hwm_kib = process_status_kib(w->server_pid, "VmHWM");
    }
}

static double window_seconds(const struct window *w)
{
    return (double)(w->end_ns - w->start_ns) / 1e9;
}

/* The window's JSON fields, each followed by ", ": the latency percentiles of the
 * `requests` in the histogram, and the CPU time and memory figures. */
static void print_window_fields(const struct window *w, uint64_t requests)
{
    double sum = 0, max_us = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        sum += (double)histogram[i] * hist_value(i);
        if (histogram[i])
            max_us = hist_value(i) / 1000.0;
    }
    printf("\"window_s\": %.3f, "
           "\"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, "
           "\"max\": %.1f, \"mean\": %.1f}, "
           "\"loadgen_cpu_s\": %.4f, \"server_cpu_s\": %.4f, "
           "\"server_core_busy_s\": %.4f, \"loadgen_core_busy_s\": %.4f, "
           "\"server_rss_kib\": %ld, \"server_hwm_kib\": %ld, ",
           window_seconds(w),
           hist_percentile(requests, 0.50) / 1000.0, hist_percentile(requests, 0.90) / 1000.0,
           hist_percentile(requests, 0.99) / 1000.0, hist_percentile(requests, 0.999) / 1000.0,
           max_us, requests ? sum / (double)requests / 1000.0 : 0.0,
           w->self_cpu_s, w->server_cpu_s, w->server_core_busy_s, w->loadgen_core_busy_s,
           w->server_rss_kib, w->server_hwm_kib);
}

#endif
