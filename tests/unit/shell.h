/* shell.h - helpers of the unit tests that drive real tools and files:
 * run a shell command, read a whole file. Aborts on what a test cannot
 * go on without. */
#ifndef DBM_TEST_SHELL_H
#define DBM_TEST_SHELL_H
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* Runs the formatted command with /bin/sh; its exit status, or -1. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));
static int sh(const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

/* The whole file at path (malloc'd) and its size in *size. */
static unsigned char *slurp(const char *path, size_t *size) __attribute__((unused));
static unsigned char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    struct stat st;

    if (!f || fstat(fileno(f), &st) < 0)
        abort();
    unsigned char *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
        abort();
    fclose(f);
    *size = (size_t)st.st_size;
    return buf;
}

#endif
