/* strutil.c - see strutil.h. */
#include "strutil.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int sbuf_reserve(struct dbm_sbuf *b, size_t extra)
{
    if (b->failed)
        return -1;
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *tmp = realloc(b->buf, cap);
    if (!tmp) {
        b->failed = 1;
        return -1;
    }
    b->buf = tmp;
    b->cap = cap;
    return 0;
}

void dbm_sbuf_append(struct dbm_sbuf *b, const char *s, size_t n)
{
    if (sbuf_reserve(b, n) < 0)
        return;
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void sbuf_vprintf(struct dbm_sbuf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0 || sbuf_reserve(b, (size_t)n) < 0)
        return;
    vsnprintf(b->buf + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void dbm_sbuf_printf(struct dbm_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sbuf_vprintf(b, fmt, ap);
    va_end(ap);
}

void dbm_sbuf_kv(struct dbm_sbuf *b, const char *key, const char *fmt, ...)
{
    dbm_sbuf_printf(b, "%s: ", key);
    va_list ap;
    va_start(ap, fmt);
    sbuf_vprintf(b, fmt, ap);
    va_end(ap);
    dbm_sbuf_append(b, "\n", 1);
}

int dbm_sbuf_ok(const struct dbm_sbuf *b) { return !b->failed; }

void dbm_sbuf_free(struct dbm_sbuf *b)
{
    free(b->buf);
    b->buf = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}

int dbm_grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *tmp = realloc(*arr, c * elem);
    if (!tmp)
        return -ENOMEM;
    *arr = tmp;
    *cap = c;
    return 0;
}

size_t dbm_strlcpy(char *dst, const char *src, size_t size)
{
    size_t n = strlen(src);
    if (size) {
        size_t c = n < size - 1 ? n : size - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return n;
}

char *dbm_strtrim(char *s)
{
    char *p = s;
    while (*p && isspace((unsigned char)*p))
        p++;
    size_t n = strlen(p);
    while (n && isspace((unsigned char)p[n - 1]))
        n--;
    memmove(s, p, n);
    s[n] = '\0';
    return s;
}

void dbm_stext_init(struct dbm_stext *t, const char *text)
{
    pthread_mutex_init(&t->mu, NULL);
    dbm_strlcpy(t->text, text, sizeof t->text);
}

void dbm_stext_destroy(struct dbm_stext *t) { pthread_mutex_destroy(&t->mu); }

void dbm_stext_set(struct dbm_stext *t, const char *text)
{
    pthread_mutex_lock(&t->mu);
    dbm_strlcpy(t->text, text, sizeof t->text);
    pthread_mutex_unlock(&t->mu);
}

void dbm_stext_kv(struct dbm_sbuf *b, const char *key, const struct dbm_stext *t)
{
    if (!t) {
        dbm_sbuf_kv(b, key, "off");
        return;
    }
    struct dbm_stext *m = (struct dbm_stext *)t; /* the mutex, not the text */
    pthread_mutex_lock(&m->mu);
    dbm_sbuf_kv(b, key, "%s", m->text);
    pthread_mutex_unlock(&m->mu);
}
