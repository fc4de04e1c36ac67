/* test_timefmt.c - instants (compact and RFC 3339), durations and sizes. */
#include "check.h"
#include "timefmt.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define S(x) ((uint64_t)(x) * DBM_NS_PER_SEC)

/* 2026-11-20T10:32:15Z, computed with date -u -d ... +%s */
#define T_2026 1795170735ULL

/* Parses s and checks it succeeds with exactly want. */
static void parse_ok(const char *s, uint64_t want, int line)
{
    uint64_t ns = 12345;
    const char *why = NULL;
    int rc = dbm_ts_parse(s, &ns, &why);
    if (rc != 0 || ns != want)
        fprintf(stderr, "  from line %d: '%s' -> rc %d ns %llu (%s), want %llu\n", line, s, rc,
                (unsigned long long)ns, why ? why : "-", (unsigned long long)want);
    CHECK_EQ_INT(rc, 0);
    CHECK(ns == want);
}

/* Checks s is refused with -EINVAL, a reason, and *ns untouched. */
static void parse_bad(const char *s, int line)
{
    uint64_t ns = 777;
    const char *why = NULL;
    int rc = dbm_ts_parse(s, &ns, &why);
    if (rc != -EINVAL || !why)
        fprintf(stderr, "  from line %d: '%s' -> rc %d why %s\n", line, s, rc, why ? why : "NULL");
    CHECK_EQ_INT(rc, -EINVAL);
    CHECK(why != NULL && why[0] != '\0');
    CHECK(ns == 777);
    /* why may be NULL */
    CHECK_EQ_INT(dbm_ts_parse(s, &ns, NULL), -EINVAL);
}

#define OK(s, want) parse_ok(s, want, __LINE__)
#define BAD(s) parse_bad(s, __LINE__)

static void test_compact(void)
{
    OK("20261120T103215Z", S(T_2026));
    OK("20261120t103215z", S(T_2026));
    OK("20261120T103215.5Z", S(T_2026) + 500000000ULL);
    OK("20261120T103215.000000001Z", S(T_2026) + 1);
    OK("19700101T000000Z", 0);
    BAD("20261120T103215");     /* no Z */
    BAD("20261120T103215+0100"); /* compact takes no offset */
    BAD("20261120 103215Z");    /* space only in RFC 3339 */
    BAD("2026112T103215Z");
}

static void test_rfc3339(void)
{
    OK("2026-11-20T10:32:15Z", S(T_2026));
    OK("2026-11-20T10:32:15z", S(T_2026));
    OK("2026-11-20t10:32:15Z", S(T_2026));
    OK("2026-11-20 10:32:15Z", S(T_2026));
    OK("2026-11-20T10:32:15.25Z", S(T_2026) + 250000000ULL);
    OK("2026-11-20T10:32:15,25Z", S(T_2026) + 250000000ULL);
    OK("2026-11-20T10:32:15.123456789Z", S(T_2026) + 123456789ULL);
    /* beyond nanoseconds: truncated, not rounded */
    OK("2026-11-20T10:32:15.1234567899999Z", S(T_2026) + 123456789ULL);
    OK("2026-11-20T10:32:15.000000000Z", S(T_2026));
    OK("2026-11-20T10:32:15+01:00", S(T_2026 - 3600));
    OK("2026-11-20T10:32:15-05:30", S(T_2026 + 5 * 3600 + 30 * 60));
    OK("2026-11-20T10:32:15.5+00:00", S(T_2026) + 500000000ULL);
    OK("2026-11-20T10:32:15-00:00", S(T_2026));
    /* an offset may move the date across midnight */
    OK("2026-11-21T00:30:00+01:00", S(T_2026) + S(12 * 3600 + 57 * 60 + 45));
    OK("1970-01-01T00:00:00Z", 0);
    OK("1970-01-01T00:00:00.000000001Z", 1);
    OK("1970-01-01T01:00:00+01:00", 0);
    /* leap second maps onto :59 */
    OK("2016-12-31T23:59:60Z", S(1483228799ULL));
    /* the last instant a uint64 of nanoseconds holds */
    OK("2554-07-21T23:34:33.709551615Z", UINT64_MAX);
}

static void test_leap_years(void)
{
    OK("2024-02-29T00:00:00Z", S(1709164800ULL));
    OK("20240229T000000Z", S(1709164800ULL));
    OK("2000-02-29T12:00:00Z", S(951825600ULL));
    OK("2024-03-01T00:00:00Z", S(1709164800ULL + 86400));
    BAD("2023-02-29T00:00:00Z");
    BAD("1900-02-29T00:00:00Z");
    BAD("2100-02-29T00:00:00Z");
    OK("2023-02-28T23:59:59Z", S(1677628799ULL));
    OK("2026-12-31T23:59:59Z", S(1798761599ULL));
    BAD("2026-04-31T00:00:00Z");
    BAD("2026-11-00T00:00:00Z");
}

static void test_rejects(void)
{
    BAD("");
    BAD("garbage");
    BAD("now");
    BAD("2026");
    BAD("2026-11-20");
    BAD("2026-13-01T00:00:00Z");
    BAD("2026-00-01T00:00:00Z");
    BAD("2026-02-30T00:00:00Z");
    BAD("2026-11-20T24:00:00Z");
    BAD("2026-11-20T10:60:00Z");
    BAD("2026-11-20T10:32:61Z");
    BAD("2026-11-20T10:32:15");        /* missing Z */
    BAD("2026-11-20T10:32:15Zjunk");   /* trailing junk */
    BAD("2026-11-20T10:32:15Z ");
    BAD("2026-11-20T10:32:15+0100");   /* offset without colon */
    BAD("2026-11-20T10:32:15+01");
    BAD("2026-11-20T10:32:15+24:00");
    BAD("2026-11-20T10:32:15+01:60");
    BAD("2026-11-20T10:32:15.Z");      /* decimal point without digits */
    BAD("2026-11-20X10:32:15Z");
    BAD("2026/11/20T10:32:15Z");
    BAD("2026-11-20T10-32-15Z");
    BAD("1969-12-31T23:59:59Z");       /* before 1970 */
    BAD("19691231T235959Z");
    BAD("1970-01-01T00:30:00+01:00");  /* 1969 once the offset applies */
    BAD("2554-07-21T23:34:33.709551616Z"); /* one ns past what a uint64 holds */
    BAD("2600-01-01T00:00:00Z");
    BAD("9999-12-31T23:59:59Z");
}

static void roundtrip(uint64_t ns, const char *compact, const char *rfc)
{
    char c[DBM_TS_COMPACT_LEN + 1], r[40];
    uint64_t back = 1;
    dbm_ts_compact(ns, c);
    dbm_ts_rfc3339(ns, r, sizeof r);
    if (strcmp(c, compact) != 0 || strcmp(r, rfc) != 0)
        fprintf(stderr, "  %llu -> '%s' '%s'\n", (unsigned long long)ns, c, r);
    CHECK(strcmp(c, compact) == 0);
    CHECK(strcmp(r, rfc) == 0);
    CHECK_EQ_INT(strlen(c), DBM_TS_COMPACT_LEN);
    CHECK_EQ_INT(dbm_ts_parse(r, &back, NULL), 0);
    CHECK(back == ns);
    CHECK_EQ_INT(dbm_ts_parse(c, &back, NULL), 0);
    CHECK(back == ns / DBM_NS_PER_SEC * DBM_NS_PER_SEC); /* compact drops sub-seconds */
}

static void test_roundtrip(void)
{
    roundtrip(S(T_2026), "20261120T103215Z", "2026-11-20T10:32:15.000000000Z");
    roundtrip(S(T_2026) + 123456789ULL, "20261120T103215Z", "2026-11-20T10:32:15.123456789Z");
    roundtrip(0, "19700101T000000Z", "1970-01-01T00:00:00.000000000Z");
    roundtrip(S(1709164800ULL) + 1, "20240229T000000Z", "2024-02-29T00:00:00.000000001Z");
    roundtrip(S(1798761599ULL) + 999999999ULL, "20261231T235959Z", "2026-12-31T23:59:59.999999999Z");

    /* pseudo-random instants between 1970 and 2500 */
    uint64_t x = 0x243F6A8885A308D3ULL;
    for (int i = 0; i < 2000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t ns = x % S(16725225600ULL); /* 2500-01-01 */
        char c[DBM_TS_COMPACT_LEN + 1], r[40];
        uint64_t back = 0;
        dbm_ts_compact(ns, c);
        dbm_ts_rfc3339(ns, r, sizeof r);
        CHECK_EQ_INT(dbm_ts_parse(r, &back, NULL), 0);
        CHECK(back == ns);
        CHECK_EQ_INT(dbm_ts_parse(c, &back, NULL), 0);
        CHECK(back == ns - ns % DBM_NS_PER_SEC);
    }
    /* now() lies after 2020 and before 2500 */
    uint64_t now = dbm_now_ns();
    CHECK(now > S(1577836800ULL) && now < S(16725225600ULL));
}

static void dur_ok(const char *s, uint64_t unit, uint64_t want)
{
    uint64_t v = 999;
    int rc = dbm_duration_parse(s, unit, &v);
    if (rc != 0 || v != want)
        fprintf(stderr, "  duration '%s' -> rc %d v %llu\n", s, rc, (unsigned long long)v);
    CHECK_EQ_INT(rc, 0);
    CHECK(v == want);
}

static void dur_bad(const char *s)
{
    uint64_t v = 999;
    int rc = dbm_duration_parse(s, 1, &v);
    if (rc != -EINVAL)
        fprintf(stderr, "  duration '%s' -> rc %d v %llu\n", s, rc, (unsigned long long)v);
    CHECK_EQ_INT(rc, -EINVAL);
    CHECK(v == 999);
}

static void dur_fmt(uint64_t secs, const char *want)
{
    char buf[24];
    uint64_t back = 0;
    dbm_duration_format(secs, buf, sizeof buf);
    if (strcmp(buf, want) != 0)
        fprintf(stderr, "  format %llu -> '%s', want '%s'\n", (unsigned long long)secs, buf, want);
    CHECK(strcmp(buf, want) == 0);
    CHECK_EQ_INT(dbm_duration_parse(buf, 1, &back), 0);
    CHECK(back == secs);
}

static void test_durations(void)
{
    dur_ok("90s", 1, 90);
    dur_ok("15m", 1, 900);
    dur_ok("24h", 1, 86400);
    dur_ok("28d", 1, 28 * 86400);
    dur_ok("2w", 1, 14 * 86400);
    dur_ok("0s", 1, 0);
    dur_ok("45", 1, 45);
    dur_ok("45", 60, 2700);
    dur_ok("3", 86400, 3 * 86400);
    dur_ok("007m", 1, 420);
    dur_bad("");
    dur_bad("d");
    dur_bad("-5s");
    dur_bad("+5s");
    dur_bad(" 5s");
    dur_bad("5 s");
    dur_bad("5s ");
    dur_bad("5x");
    dur_bad("5ms");
    dur_bad("5D");
    dur_bad("1.5h");
    dur_bad("99999999999999999999999s"); /* strtoull overflow */
    dur_bad("18446744074s");             /* seconds whose nanoseconds overflow */
    dur_ok("18446744073s", 1, 18446744073ULL);
    dur_ok("30500w", 1, 30500ULL * 604800);
    dur_bad("30501w");

    dur_fmt(0, "0s");
    dur_fmt(1, "1s");
    dur_fmt(90, "90s");
    dur_fmt(120, "2m");
    dur_fmt(3600, "1h");
    dur_fmt(5400, "90m");
    dur_fmt(86400, "1d");
    dur_fmt(90000, "25h");
    dur_fmt(7 * 86400, "7d");
    dur_fmt(28 * 86400, "28d");
    dur_fmt(3650ULL * 86400, "3650d");
    /* a small buffer is truncated, never overrun */
    char small[3] = { 'x', 'x', 'x' };
    dbm_duration_format(3650ULL * 86400, small, sizeof small);
    CHECK(strcmp(small, "36") == 0);
}

static void size_ok(const char *s, uint64_t want)
{
    uint64_t v = 999;
    int rc = dbm_size_parse(s, &v);
    if (rc != 0 || v != want)
        fprintf(stderr, "  size '%s' -> rc %d v %llu\n", s, rc, (unsigned long long)v);
    CHECK_EQ_INT(rc, 0);
    CHECK(v == want);
}

static void size_bad(const char *s)
{
    uint64_t v = 999;
    int rc = dbm_size_parse(s, &v);
    if (rc != -EINVAL)
        fprintf(stderr, "  size '%s' -> rc %d v %llu\n", s, rc, (unsigned long long)v);
    CHECK_EQ_INT(rc, -EINVAL);
    CHECK(v == 999);
}

static void test_sizes(void)
{
    size_ok("0", 0);
    size_ok("512", 512);
    size_ok("512B", 512);
    size_ok("512b", 512);
    size_ok("64K", 64ULL << 10);
    size_ok("64k", 64ULL << 10);
    size_ok("64KiB", 64ULL << 10);
    size_ok("64KB", 64ULL << 10);
    size_ok("64kib", 64ULL << 10);
    size_ok("10M", 10ULL << 20);
    size_ok("10MiB", 10ULL << 20);
    size_ok("2G", 2ULL << 30);
    size_ok("4GiB", 4ULL << 30);
    size_ok("1T", 1ULL << 40);
    size_ok("1TiB", 1ULL << 40);
    size_ok("16777215T", 16777215ULL << 40);
    size_ok("18446744073709551615", UINT64_MAX);
    size_bad("16777216T"); /* 2^64 */
    size_bad("17179869184G");
    size_bad("18014398509481984K");
    size_bad("18446744073709551616"); /* strtoull overflow */
    size_bad("");
    size_bad("K");
    size_bad("-1");
    size_bad(" 1K");
    size_bad("1 K");
    size_bad("1K ");
    size_bad("1P");
    size_bad("1KiBx");
    size_bad("1iB");
    size_bad("1Bx");
    size_bad("1BB");
    size_bad("1Ki");
    size_bad("1.5G");
}

int main(void)
{
    test_compact();
    test_rfc3339();
    test_leap_years();
    test_rejects();
    test_roundtrip();
    test_durations();
    test_sizes();
    return CHECK_DONE();
}
