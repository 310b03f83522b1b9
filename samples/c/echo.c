/* The C networking sample (wasi-libc via `zig cc --target=wasm32-wasi`): a TCP echo server on
 * the preopened listening socket, fd 3 or argv[1] (wasmtime's `--tcplisten` model: listeners
 * come right after the preopened directories). wasip1 has no threads, so one poll loop
 * serves every client over nonblocking sockets. Each client gets every byte back; what the
 * socket does not take yet is buffered, and a client with more than 1 MiB unsent is not
 * read until that drains. A client is closed once it has sent EOF and all of its echo is
 * out. A client whose first bytes are the line "QUIT\n" makes the server exit with status 0,
 * other connections still open.
 *
 * Plain POSIX: it also builds and runs natively (`cc -O2 -o echo echo.c`). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#ifndef __wasi__
#include <signal.h>
#endif

#define CHUNK 65536          /* bytes per recv */
#define HIGH_WATER (1 << 20) /* unsent bytes past which a client is not read */
#define BUDGET (1 << 20)     /* bytes one client may move per wakeup, for fairness */

static const char QUIT[] = "QUIT\n";

struct client {
    int fd;
    unsigned char *buf; /* unsent echo: buf[start..len) */
    size_t start, len, cap;
    int eof;   /* the client sends no more */
    int quit;  /* bytes of QUIT matched at the start of the stream; -1 once ruled out */
    int dead;  /* close now */
};

static size_t pending(const struct client *c) { return c->len - c->start; }

static int wants_read(const struct client *c) { return !c->eof && pending(c) < HIGH_WATER; }

static int set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) {
        return -1;
    }
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Makes room for one CHUNK at the end of the buffer: reuse the sent front, else grow. */
static int reserve(struct client *c) {
    if (c->start == c->len) {
        c->start = c->len = 0;
    } else if (c->start > 0 && c->cap - c->len < CHUNK) {
        memmove(c->buf, c->buf + c->start, pending(c));
        c->len -= c->start;
        c->start = 0;
    }
    if (c->cap - c->len >= CHUNK) {
        return 0;
    }
    size_t cap = c->cap ? c->cap * 2 : CHUNK;
    while (cap - c->len < CHUNK) {
        cap *= 2;
    }
    unsigned char *buf = realloc(c->buf, cap);
    if (!buf) {
        return -1;
    }
    c->buf = buf;
    c->cap = cap;
    return 0;
}

/* Watches the stream's first bytes for the QUIT line. */
static void check_quit(struct client *c, const unsigned char *data, size_t n) {
    for (size_t i = 0; i < n && c->quit >= 0 && c->quit < (int)sizeof QUIT - 1; i++) {
        c->quit = data[i] == (unsigned char)QUIT[c->quit] ? c->quit + 1 : -1;
    }
    if (c->quit == (int)sizeof QUIT - 1) {
        fflush(stdout);
        exit(0);
    }
}

/* Reads what a ready client sent and writes what it can of the echo. */
static void service(struct client *c, short revents) {
    int progress = 0;
    if (revents & POLLNVAL) {
        c->dead = 1;
        return;
    }
    /* Read on hangup and error too: recv reports the end of the stream or the error. */
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
        size_t budget = 0;
        while (wants_read(c) && budget < BUDGET) {
            if (reserve(c) != 0) {
                c->dead = 1;
                return;
            }
            ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
            if (n > 0) {
                check_quit(c, c->buf + c->len, (size_t)n);
                c->len += (size_t)n;
                budget += (size_t)n;
                progress = 1;
            } else if (n == 0) {
                c->eof = 1;
                progress = 1;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            } else if (errno != EINTR) {
                c->dead = 1;
                return;
            }
        }
    }
    /* Send whenever there is something to send: usually it fits at once. */
    size_t budget = 0;
    while (pending(c) > 0 && budget < BUDGET) {
        ssize_t n = send(c->fd, c->buf + c->start, pending(c), 0);
        if (n > 0) {
            c->start += (size_t)n;
            budget += (size_t)n;
            progress = 1;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            c->dead = 1;
            return;
        }
    }
    if (pending(c) == 0) {
        c->start = c->len = 0;
    }
    /* A hangup or error nothing could act on would wake every poll from now on. */
    if (!progress && (revents & (POLLHUP | POLLERR))) {
        c->dead = 1;
    }
}

int main(int argc, char **argv) {
    int lfd = 3;
    if (argc > 1) {
        char *end;
        long v = strtol(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0' || v < 0 || v > 1 << 20) {
            fprintf(stderr, "usage: echo [LISTEN_FD]\n");
            return 2;
        }
        lfd = (int)v;
    }
#ifndef __wasi__
    signal(SIGPIPE, SIG_IGN); /* natively, a send to a reset peer would kill the process */
#endif
    if (set_nonblocking(lfd) != 0) {
        fprintf(stderr, "echo: fd %d is not a usable listening socket: %s\n", lfd, strerror(errno));
        return 1;
    }
    printf("echo: ready\n");
    fflush(stdout);

    struct client *clients = NULL;
    size_t nclients = 0, clients_cap = 0;
    struct pollfd *pfds = NULL;
    size_t pfds_cap = 0;
    /* Set when accept fails for want of resources (EMFILE...): the listener stays readable,
     * so polling it would spin; retry on a timer instead. */
    int accept_paused = 0;
    for (;;) {
        if (pfds_cap < nclients + 1) {
            size_t n = (nclients + 1) * 2;
            struct pollfd *p = realloc(pfds, n * sizeof *p);
            if (!p) {
                fprintf(stderr, "echo: out of memory\n");
                return 1;
            }
            pfds = p;
            pfds_cap = n;
        }
        pfds[0] = (struct pollfd){.fd = accept_paused ? -1 : lfd, .events = POLLIN};
        for (size_t i = 0; i < nclients; i++) {
            struct client *c = &clients[i];
            short events = (wants_read(c) ? POLLIN : 0) | (pending(c) ? POLLOUT : 0);
            /* wasi-libc's poll refuses entries without events; a negative fd is skipped. */
            pfds[i + 1] = (struct pollfd){.fd = events ? c->fd : -1, .events = events};
        }
        if (poll(pfds, nclients + 1, accept_paused ? 100 : -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("echo: poll");
            return 1;
        }
        int try_accept = accept_paused || pfds[0].revents;

        for (size_t i = 0; i < nclients; i++) {
            if (pfds[i + 1].revents) {
                service(&clients[i], pfds[i + 1].revents);
            }
        }

        /* Close the finished and the failed, keeping the array dense. */
        size_t kept = 0;
        for (size_t i = 0; i < nclients; i++) {
            struct client *c = &clients[i];
            if (c->dead || (c->eof && pending(c) == 0)) {
                close(c->fd);
                free(c->buf);
            } else {
                clients[kept++] = *c;
            }
        }
        nclients = kept;

        accept_paused = 0;
        while (try_accept) {
            struct sockaddr_storage addr;
            socklen_t addrlen = sizeof addr;
            int fd = accept(lfd, (struct sockaddr *)&addr, &addrlen);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) {
                    continue;
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK) {
                    perror("echo: accept");
                    accept_paused = 1;
                }
                break;
            }
            if (nclients == clients_cap) {
                size_t n = clients_cap ? clients_cap * 2 : 16;
                struct client *p = realloc(clients, n * sizeof *p);
                if (!p) {
                    close(fd);
                    break;
                }
                clients = p;
                clients_cap = n;
            }
            if (set_nonblocking(fd) != 0) {
                close(fd);
                continue;
            }
            clients[nclients++] = (struct client){.fd = fd};
        }
    }
}
