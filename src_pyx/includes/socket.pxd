# The BSD socket calls the loop makes itself, declared from the system headers.
# (pyconfig.h defines _GNU_SOURCE, which accept4() needs.)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    enum:
        AF_INET
        AF_INET6
        AF_UNIX
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        MSG_NOSIGNAL
        MSG_TRUNC
        SOL_SOCKET
        SO_LINGER
        SHUT_WR

    struct sockaddr:
        sa_family_t sa_family

    struct linger:
        int l_onoff
        int l_linger

    struct sockaddr_storage:
        sa_family_t ss_family

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr *message, int flags)
    int accept4(int fd, sockaddr *addr, socklen_t *addr_len, int flags)
    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)

cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP

    struct in_addr:
        unsigned int s_addr

    struct in6_addr:
        pass

    struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        sa_family_t sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    enum:
        INET6_ADDRSTRLEN
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    unsigned short ntohs(unsigned short netshort)
    unsigned short htons(unsigned short hostshort)

cdef extern from "<errno.h>" nogil:
    # Cython's libc.errno leaves it out; on Linux it equals EAGAIN, elsewhere it may not.
    enum:
        EWOULDBLOCK

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<linux/sockios.h>" nogil:
    enum:
        # Bytes sent but not yet acknowledged by the peer (and the FIN, once sent).
        SIOCOUTQ
