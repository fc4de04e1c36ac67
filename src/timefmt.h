/* timefmt.h - instants, durations and sizes as users write them. */
#ifndef DBM_TIMEFMT_H
#define DBM_TIMEFMT_H
#include <stddef.h>
#include <stdint.h>

#define DBM_NS_PER_SEC 1000000000ULL

uint64_t dbm_now_ns(void);  /* CLOCK_REALTIME */
uint64_t dbm_mono_ns(void); /* CLOCK_MONOTONIC: for intervals, not instants */

/* "20261120T103200Z" (colon-free UTC, second precision; sub-seconds dropped).
 * buf must hold DBM_TS_COMPACT_LEN + 1. */
#define DBM_TS_COMPACT_LEN 16
void dbm_ts_compact(uint64_t ns, char *buf);
/* "2026-11-20T10:32:00.123456789Z" (RFC 3339 UTC, nanoseconds). buf >= 32. */
void dbm_ts_rfc3339(uint64_t ns, char *buf, size_t size);

/* Parses an instant: compact form (20261120T103215Z, optionally with
 * .fraction before the Z), or RFC 3339 (2026-11-20T10:32:15Z,
 * 2026-11-20T10:32:15.25+01:00; a space or 't' for 'T', 'z' for 'Z').
 * 0 and *ns, or -EINVAL with a reason in why (may be NULL). */
int dbm_ts_parse(const char *s, uint64_t *ns, const char **why);

/* Durations: "90s", "15m", "24h", "28d", "2w"; a bare number is in
 * unit_default seconds. 0 or -EINVAL. */
int dbm_duration_parse(const char *s, uint64_t unit_default, uint64_t *secs);
/* Sizes: "512", "64K", "10M", "2G", "1T" (powers of 1024, optional "iB"/"B"). */
int dbm_size_parse(const char *s, uint64_t *bytes);
/* "28d", "1h", "90s": the shortest exact form. buf >= 24. */
void dbm_duration_format(uint64_t secs, char *buf, size_t size);

#endif
