/* A workload of known size, run as a container's only process (tests/test_history_e2e.py). On each
   SIGUSR1 it makes COUNT write(2)s of SIZE bytes to /dev/null, COUNT read(2)s of SIZE bytes from
   /dev/zero, after ERRORS write(2)s to fd -1 (-EBADF); SIGTERM ends it. It reads and writes nothing else,
   not even at start: it is linked statically (no loader reading libraries) and prints nothing (the
   caller sees it is ready in /proc/PID/status: SIGUSR2 blocked, and counts its calls in /proc/PID/io).
   Built by harness.workloads.build_rounds: gcc -static -O2 -o rounds rounds.c
   Usage: rounds SIZE COUNT ERRORS */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static char buf[1 << 20];

int main(int argc, char **argv) {
    sigset_t set, mask;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGTERM);
    mask = set;
    sigaddset(&mask, SIGUSR2);   /* never waited for: SigBlk in /proc/PID/status shows it while sigwait runs */
    sigprocmask(SIG_SETMASK, &mask, NULL);  /* first: a signal sent from now on waits for sigwait */
    if (argc != 4)
        return 2;
    long size = atol(argv[1]), count = atol(argv[2]), errors = atol(argv[3]);
    if (size < 1 || size > (long)sizeof buf || count < 0 || errors < 0)
        return 2;
    int out = open("/dev/null", O_WRONLY), in = open("/dev/zero", O_RDONLY);
    if (out < 0 || in < 0)
        return 3;
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0 || sig == SIGTERM)
            return 0;
        for (long i = 0; i < errors; i++)        /* first: once the others are counted, these are done */
            if (write(-1, buf, 1) != -1)
                return 6;
        for (long i = 0; i < count; i++) {
            if (write(out, buf, size) != size)
                return 4;
            if (read(in, buf, size) != size)
                return 5;
        }
    }
}
