# Socket helpers on plain descriptors, for Loop (a connection refused or never made
# into a Connection) and Connection alike.


cdef str format_peer_ip(sockaddr_storage *addr):
    cdef char text[INET6_ADDRSTRLEN + 1]
    cdef const char *ok = NULL
    if addr.ss_family == AF_INET:
        ok = inet_ntop(AF_INET, &(<sockaddr_in *>addr).sin_addr, text, sizeof(text))
    elif addr.ss_family == AF_INET6:
        ok = inet_ntop(AF_INET6, &(<sockaddr_in6 *>addr).sin6_addr, text, sizeof(text))
    if ok == NULL:
        return ""
    return (<bytes>text).decode("ascii")


cdef void reset_on_close(int fd) noexcept:
    """Have the close() of ``fd`` send RST (SO_LINGER 0) instead of FIN."""
    cdef linger reset
    reset.l_onoff = 1
    reset.l_linger = 0
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset))


cdef void reset_and_close(int fd) noexcept:
    reset_on_close(fd)
    close(fd)
