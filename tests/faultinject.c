/*
 * faultinject.c - an LD_PRELOAD shim that makes the socket calls of the process it is
 * loaded into fail at random, for tests/test_fault_injection.py.
 *
 * Wrapped: send, sendmsg, recv, accept4, epoll_ctl, epoll_wait, poll. A failing call
 * does nothing (the real function is not called: no byte is sent, read or accepted)
 * and returns -1 with errno set, as the kernel would for a transient failure.
 *
 *   SIMPLETCP_FAULTS     which calls fail, how often and how, e.g.
 *                        "send=0.02:EAGAIN,EINTR,ENOBUFS,ENOMEM,ECONNRESET;recv=0.01:EINTR"
 *                        (the other calls likewise; each failure picks one of the
 *                        listed errors at random)
 *   SIMPLETCP_FAULT_SEED the random seed (the same seed, the same sequence of draws)
 *
 * Nothing fails until the process calls simpletcp_fault_arm(1) (by ctypes, once its
 * server is serving: the start-up must not fail). simpletcp_fault_counts() returns how
 * many calls were made while armed and how many failures were injected, per call and
 * error, as text: "send=1234 send:EINTR=12 ...".
 *
 * Build: gcc -shared -fPIC -O2 -o faultinject.so faultinject.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>

enum call { SEND, SENDMSG, RECV, ACCEPT4, EPOLL_CTL, EPOLL_WAIT, POLL, CALLS };
static const char *call_names[CALLS] = {"send", "sendmsg", "recv", "accept4", "epoll_ctl",
                                        "epoll_wait", "poll"};

static const struct { const char *name; int value; } known_errors[] = {
    {"EAGAIN", EAGAIN}, {"EINTR", EINTR}, {"ENOBUFS", ENOBUFS},
    {"ENOMEM", ENOMEM}, {"ECONNRESET", ECONNRESET},
};
#define KNOWN_ERRORS (sizeof known_errors / sizeof known_errors[0])

static double probability[CALLS];
static int errors[CALLS][KNOWN_ERRORS];   /* indexes into known_errors */
static int error_count[CALLS];
static unsigned long long injected[CALLS][KNOWN_ERRORS];
static unsigned long long calls[CALLS];      /* made while armed */
static volatile int armed;
static uint64_t state = 0x9E3779B97F4A7C15ULL;

static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static ssize_t (*real_recv)(int, void *, size_t, int);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_epoll_ctl)(int, int, int, struct epoll_event *);
static int (*real_epoll_wait)(int, struct epoll_event *, int, int);
static int (*real_poll)(struct pollfd *, nfds_t, int);

static uint64_t next_random(void)
{
    /* xorshift64*: the server's loop is one thread, the draws need no lock. */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 2685821657736338717ULL;
}

static void parse_spec(const char *spec)
{
    char *copy = strdup(spec), *save = NULL;
    for (char *item = strtok_r(copy, ";", &save); item; item = strtok_r(NULL, ";", &save)) {
        char *eq = strchr(item, '='), *colon = eq ? strchr(eq, ':') : NULL;
        if (!eq || !colon) {
            fprintf(stderr, "faultinject: bad item %s\n", item);
            abort();
        }
        *eq = *colon = '\0';
        int which = -1;
        for (int i = 0; i < CALLS; i++)
            if (strcmp(item, call_names[i]) == 0)
                which = i;
        if (which < 0) {
            fprintf(stderr, "faultinject: unknown call %s\n", item);
            abort();
        }
        probability[which] = atof(eq + 1);
        char *inner = NULL;
        for (char *name = strtok_r(colon + 1, ",", &inner); name; name = strtok_r(NULL, ",", &inner)) {
            size_t k = 0;
            while (k < KNOWN_ERRORS && strcmp(name, known_errors[k].name) != 0)
                k++;
            if (k == KNOWN_ERRORS) {
                fprintf(stderr, "faultinject: unknown error %s\n", name);
                abort();
            }
            errors[which][error_count[which]++] = (int)k;
        }
    }
    free(copy);
}

__attribute__((constructor)) static void setup(void)
{
    real_send = dlsym(RTLD_NEXT, "send");
    real_sendmsg = dlsym(RTLD_NEXT, "sendmsg");
    real_recv = dlsym(RTLD_NEXT, "recv");
    real_accept4 = dlsym(RTLD_NEXT, "accept4");
    real_epoll_ctl = dlsym(RTLD_NEXT, "epoll_ctl");
    real_epoll_wait = dlsym(RTLD_NEXT, "epoll_wait");
    real_poll = dlsym(RTLD_NEXT, "poll");
    const char *seed = getenv("SIMPLETCP_FAULT_SEED");
    if (seed)
        state ^= strtoull(seed, NULL, 10) * 0xBF58476D1CE4E5B9ULL;
    const char *spec = getenv("SIMPLETCP_FAULTS");
    if (spec)
        parse_spec(spec);
}

/* Whether this call fails; if so errno is set. */
static int fails(enum call which)
{
    if (!armed)
        return 0;
    calls[which]++;
    if (error_count[which] == 0)
        return 0;
    if ((double)(next_random() >> 11) / 9007199254740992.0 >= probability[which])
        return 0;
    int k = errors[which][next_random() % (uint64_t)error_count[which]];
    injected[which][k]++;
    errno = known_errors[k].value;
    return 1;
}

void simpletcp_fault_arm(int on) { armed = on; }

const char *simpletcp_fault_counts(void)
{
    static char text[4096];
    size_t used = 0;
    for (int i = 0; i < CALLS; i++) {
        used += (size_t)snprintf(text + used, sizeof text - used, "%s%s=%llu",
                                 used ? " " : "", call_names[i], calls[i]);
        for (size_t k = 0; k < KNOWN_ERRORS; k++)
            if (injected[i][k])
                used += (size_t)snprintf(text + used, sizeof text - used, "%s%s:%s=%llu",
                                         used ? " " : "", call_names[i], known_errors[k].name,
                                         injected[i][k]);
    }
    text[used] = '\0';
    return text;
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    return fails(SEND) ? -1 : real_send(fd, buf, len, flags);
}

ssize_t sendmsg(int fd, const struct msghdr *message, int flags)
{
    return fails(SENDMSG) ? -1 : real_sendmsg(fd, message, flags);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    return fails(RECV) ? -1 : real_recv(fd, buf, len, flags);
}

int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags)
{
    return fails(ACCEPT4) ? -1 : real_accept4(fd, address, length, flags);
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
    return fails(EPOLL_CTL) ? -1 : real_epoll_ctl(epfd, op, fd, event);
}

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
    return fails(EPOLL_WAIT) ? -1 : real_epoll_wait(epfd, events, maxevents, timeout);
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    return fails(POLL) ? -1 : real_poll(fds, nfds, timeout);
}
