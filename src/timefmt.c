/* timefmt.c - see timefmt.h. All instants are UTC nanoseconds since the epoch. */
#include "timefmt.h"
#include "strutil.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

uint64_t dbm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * DBM_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

uint64_t dbm_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * DBM_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

void dbm_ts_compact(uint64_t ns, char *buf)
{
    time_t t = (time_t)(ns / DBM_NS_PER_SEC);
    struct tm tm;
    gmtime_r(&t, &tm);
    char tmp[64]; /* wide enough for any int, so the compiler sees no truncation */
    snprintf(tmp, sizeof tmp, "%04d%02d%02dT%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
    dbm_strlcpy(buf, tmp, DBM_TS_COMPACT_LEN + 1);
}

void dbm_ts_rfc3339(uint64_t ns, char *buf, size_t size)
{
    time_t t = (time_t)(ns / DBM_NS_PER_SEC);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%09uZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ns % DBM_NS_PER_SEC));
}

/* Reads exactly n digits. */
static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return -1;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int days_in_month(int y, int m)
{
    static const int d[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return d[m - 1];
}

#define FAIL(msg)            \
    do {                     \
        if (why)             \
            *why = (msg);    \
        return -EINVAL;      \
    } while (0)

int dbm_ts_parse(const char *s, uint64_t *ns, const char **why)
{
    const char *p = s;
    int Y, M, D, h, m, sec;
    int compact = strlen(s) >= 9 && isdigit((unsigned char)s[4]);
    if (digits(&p, 4, &Y) < 0)
        FAIL("expected a 4-digit year first");
    if (!compact && *p++ != '-')
        FAIL("expected '-' after the year");
    if (digits(&p, 2, &M) < 0)
        FAIL("expected a 2-digit month");
    if (!compact && *p++ != '-')
        FAIL("expected '-' after the month");
    if (digits(&p, 2, &D) < 0)
        FAIL("expected a 2-digit day");
    if (*p != 'T' && *p != 't' && !(*p == ' ' && !compact))
        FAIL("expected 'T' between date and time");
    p++;
    if (digits(&p, 2, &h) < 0)
        FAIL("expected a 2-digit hour");
    if (!compact && *p++ != ':')
        FAIL("expected ':' after the hour");
    if (digits(&p, 2, &m) < 0)
        FAIL("expected 2-digit minutes");
    if (!compact && *p++ != ':')
        FAIL("expected ':' after the minutes");
    if (digits(&p, 2, &sec) < 0)
        FAIL("expected 2-digit seconds");
    if (Y < 1970 || M < 1 || M > 12 || D < 1 || D > days_in_month(Y, M) || h > 23 || m > 59 || sec > 60)
        FAIL("date or time out of range");
    uint64_t frac = 0;
    if (*p == '.' || *p == ',') {
        p++;
        int nd = 0;
        uint64_t scale = 100000000ULL;
        while (isdigit((unsigned char)*p)) {
            if (nd < 9)
                frac += (uint64_t)(*p - '0') * scale;
            scale /= 10;
            nd++;
            p++;
        }
        if (nd == 0)
            FAIL("expected digits after the decimal point");
    }
    long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (!compact && (*p == '+' || *p == '-')) {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (digits(&p, 2, &oh) < 0 || *p++ != ':' || digits(&p, 2, &om) < 0 || oh > 23 || om > 59)
            FAIL("expected a UTC offset as +HH:MM or -HH:MM");
        offset = sign * (oh * 3600L + om * 60L);
    } else {
        FAIL("expected 'Z' (UTC) or an offset such as +01:00 at the end");
    }
    if (*p)
        FAIL("unexpected characters after the instant");
    if (sec == 60)
        sec = 59; /* a leap second maps onto the second before it */
    struct tm tm = { .tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h, .tm_min = m, .tm_sec = sec };
    long long t = (long long)timegm(&tm) - offset;
    if (t < 0)
        FAIL("instant before 1970");
    /* nanoseconds in a uint64 end at 2554-07-21T23:34:33.709551615Z */
    if ((uint64_t)t > (UINT64_MAX - frac) / DBM_NS_PER_SEC)
        FAIL("instant after 2554-07-21T23:34:33.709551615Z");
    *ns = (uint64_t)t * DBM_NS_PER_SEC + frac;
    return 0;
}

int dbm_duration_parse(const char *s, uint64_t unit_default, uint64_t *secs)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    uint64_t mult;
    if (*end == '\0')
        mult = unit_default;
    else if (strcmp(end, "s") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = 60;
    else if (strcmp(end, "h") == 0)
        mult = 3600;
    else if (strcmp(end, "d") == 0)
        mult = 86400;
    else if (strcmp(end, "w") == 0)
        mult = 7 * 86400;
    else
        return -EINVAL;
    if (v > UINT64_MAX / DBM_NS_PER_SEC / mult)
        return -EINVAL;
    *secs = v * mult;
    return 0;
}

int dbm_size_parse(const char *s, uint64_t *bytes)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    int shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    case 'B': break;
    default: return -EINVAL;
    }
    if (shift && (strcasecmp(end, "iB") == 0 || strcasecmp(end, "B") == 0))
        end += strlen(end);
    else if (!shift && strcasecmp(end, "B") == 0)
        end++;
    if (*end)
        return -EINVAL;
    if (shift && v > (UINT64_MAX >> shift))
        return -EINVAL;
    *bytes = (uint64_t)v << shift;
    return 0;
}

void dbm_duration_format(uint64_t secs, char *buf, size_t size)
{
    if (secs && secs % 86400 == 0)
        snprintf(buf, size, "%llud", (unsigned long long)(secs / 86400));
    else if (secs && secs % 3600 == 0)
        snprintf(buf, size, "%lluh", (unsigned long long)(secs / 3600));
    else if (secs && secs % 60 == 0)
        snprintf(buf, size, "%llum", (unsigned long long)(secs / 60));
    else
        snprintf(buf, size, "%llus", (unsigned long long)secs);
}
