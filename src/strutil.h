/* strutil.h - growable text buffer and small string helpers. */
#ifndef DBM_STRUTIL_H
#define DBM_STRUTIL_H
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>

/* A growable NUL-terminated buffer. Zero-initialise, append, then either
 * take buf (caller frees) or call dbm_sbuf_free. An allocation failure is
 * sticky: later appends do nothing and dbm_sbuf_ok() says so. */
struct dbm_sbuf {
    char *buf;
    size_t len, cap;
    int failed;
};
void dbm_sbuf_printf(struct dbm_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dbm_sbuf_append(struct dbm_sbuf *b, const char *s, size_t n);
/* "key: value\n" with value formatted; the one way status files are written. */
void dbm_sbuf_kv(struct dbm_sbuf *b, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int dbm_sbuf_ok(const struct dbm_sbuf *b); /* 1 if no allocation failed */
void dbm_sbuf_free(struct dbm_sbuf *b);

/* A short text one thread sets while others read it: a status field's value
 * (why a feature is on or off). mu is a leaf lock. */
struct dbm_stext {
    pthread_mutex_t mu;
    char text[200];
};
void dbm_stext_init(struct dbm_stext *t, const char *text);
void dbm_stext_destroy(struct dbm_stext *t);
void dbm_stext_set(struct dbm_stext *t, const char *text); /* cut to fit */
/* "key: text" (dbm_sbuf_kv); "key: off" when t is NULL. */
void dbm_stext_kv(struct dbm_sbuf *b, const char *key, const struct dbm_stext *t);

/* Makes room for need elements of elem bytes in *arr (capacity *cap),
 * doubling as it grows. 0, or -ENOMEM with *arr and *cap unchanged. */
int dbm_grow(void **arr, size_t *cap, size_t need, size_t elem);

/* strlcpy semantics: always terminates; returns strlen(src). */
size_t dbm_strlcpy(char *dst, const char *src, size_t size);
/* Trims ASCII whitespace at both ends, in place; returns s. */
char *dbm_strtrim(char *s);

#endif
