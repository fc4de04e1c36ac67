/* rtt.c - what one request costs on this machine (bench_speedtest1.py).
 *
 *   rtt pingpong N        a byte bounced between two processes over pipes,
 *                         both on CPU 0, then on CPUs 0 and 1: two context
 *                         switches per round, the floor of any FUSE request
 *   rtt file PATH N       N F_SETLK pairs (read lock, unlock) on one byte of
 *                         PATH (an existing file)
 *
 * Prints `key: value` lines in microseconds per call. Through a dbmovefs
 * mount each lock call is one FUSE round trip (SETLK); on a native file it
 * is the kernel's own cost of the same call. (A WRITE is not timed here:
 * the mount refuses a database write outside a transaction.) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s); /* best effort: one CPU only pins both to it */
}

static double pingpong(int n, int child_cpu)
{
    int a[2], b[2];
    char c = 'x';
    if (pipe(a) < 0 || pipe(b) < 0)
        return -1;
    pid_t p = fork();
    if (p == 0) {
        pin(child_cpu);
        for (int i = 0; i < n; i++)
            if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1)
                _exit(1);
        _exit(0);
    }
    pin(0);
    double t0 = now_us();
    for (int i = 0; i < n; i++)
        if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
            return -1;
    double dt = now_us() - t0;
    waitpid(p, NULL, 0);
    close(a[0]), close(a[1]), close(b[0]), close(b[1]);
    return dt / n;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "pingpong")) {
        int n = atoi(argv[2]);
        printf("pingpong_same_cpu_us: %.2f\n", pingpong(n, 0));
        printf("pingpong_cross_cpu_us: %.2f\n", sysconf(_SC_NPROCESSORS_ONLN) > 1 ? pingpong(n / 10 + 1, 1) : -1.0);
        return 0;
    }
    if (argc != 4 || strcmp(argv[1], "file")) {
        fprintf(stderr, "usage: rtt pingpong N | rtt file PATH N\n");
        return 2;
    }
    int n = atoi(argv[3]);
    int fd = open(argv[2], O_RDWR);
    if (fd < 0) {
        perror(argv[2]);
        return 1;
    }
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        struct flock l = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1 };
        if (fcntl(fd, F_SETLK, &l) < 0) {
            perror("F_SETLK");
            return 1;
        }
        l.l_type = F_UNLCK;
        fcntl(fd, F_SETLK, &l);
    }
    printf("setlk_us: %.2f\n", (now_us() - t0) / (2.0 * n));
    close(fd);
    return 0;
}
