/* splice-forward.c: the cheapest middle there is, as a reference for
 * bench-relay.sh (docs/benchmarks.md, "Relay overhead").
 *
 *   splice-forward [LISTEN_ADDR:]LISTEN_PORT [DEST_ADDR:]DEST_PORT
 *
 * Accepts one connection on LISTEN_ADDR:LISTEN_PORT, connects to
 * DEST_ADDR:DEST_PORT (IPv4 addresses, 127.0.0.1 where not given) and
 * moves bytes both ways with splice() through a pipe per direction: the bytes never enter user space and nothing is
 * parsed.  Whatever a middle on this machine costs beyond this is not the
 * price of copying or parsing; what this costs, every middle pays.  Two
 * of them, one on each side of a link, are the cheapest pair (bench-pair.py's
 * mode splice-pair).  Ends when both directions have passed their FIN on.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PIPE_BYTES (1 << 20)

struct dir {
    int from, to;
    int pipe[2];
    size_t in_pipe; /* spliced in, not yet out */
    bool eof, shut;
};

static void
die(const char *what)
{
    perror(what);
    exit(1);
}

/* "ADDR:PORT" or "PORT" (on 127.0.0.1) */
static int
tcp_socket(const char *where, bool listen_on)
{
    struct sockaddr_in a = {
        .sin_family = AF_INET,
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    char addr[64];
    const char *colon = strrchr(where, ':');

    if (colon) {
        if ((size_t)(colon - where) >= sizeof addr)
            die("address");
        memcpy(addr, where, (size_t)(colon - where));
        addr[colon - where] = 0;
        if (inet_pton(AF_INET, addr, &a.sin_addr) != 1) {
            fprintf(stderr, "splice-forward: not an IPv4 address: %s\n", addr);
            exit(2);
        }
        where = colon + 1;
    }
    a.sin_port = htons((uint16_t)atoi(where));
    int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);

    if (s < 0)
        die("socket");
    if (listen_on) {
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1))
            die("listen");
        int c = accept(s, NULL, NULL);
        if (c < 0)
            die("accept");
        close(s);
        s = c;
    } else if (connect(s, (struct sockaddr *)&a, sizeof a)) {
        die("connect");
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(s, F_SETFL, O_NONBLOCK);
    return s;
}

/* As far as the fds allow now, without blocking. */
static void
step(struct dir *d)
{
    if (!d->eof && d->in_pipe < PIPE_BYTES) {
        ssize_t n = splice(d->from, NULL, d->pipe[1], NULL,
                           PIPE_BYTES - d->in_pipe,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0)
            d->in_pipe += (size_t)n;
        else if (n == 0)
            d->eof = true;
        else if (errno != EAGAIN)
            die("splice in");
    }
    if (d->in_pipe) {
        ssize_t n = splice(d->pipe[0], NULL, d->to, NULL, d->in_pipe,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0)
            d->in_pipe -= (size_t)n;
        else if (n < 0 && errno != EAGAIN)
            die("splice out");
    }
    if (d->eof && !d->in_pipe && !d->shut) {
        shutdown(d->to, SHUT_WR);
        d->shut = true;
    }
}

int
main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: splice-forward [LISTEN_ADDR:]LISTEN_PORT "
                        "[DEST_ADDR:]DEST_PORT\n");
        return 2;
    }
    int down = tcp_socket(argv[1], true);
    int up = tcp_socket(argv[2], false);
    struct dir d[2] = {{.from = down, .to = up}, {.from = up, .to = down}};

    for (int i = 0; i < 2; i++) {
        if (pipe2(d[i].pipe, O_NONBLOCK))
            die("pipe");
        fcntl(d[i].pipe[0], F_SETPIPE_SZ, PIPE_BYTES);
    }
    while (!d[0].shut || !d[1].shut) {
        struct pollfd p[2] = {{.fd = down}, {.fd = up}};
        for (int i = 0; i < 2; i++) {
            if (!d[i].eof && d[i].in_pipe < PIPE_BYTES)
                p[i].events |= POLLIN; /* d[i] reads from p[i] */
            if (d[i].in_pipe)
                p[1 - i].events |= POLLOUT;
        }
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            die("poll");
        for (int i = 0; i < 2; i++)
            step(&d[i]);
    }
    return 0;
}
