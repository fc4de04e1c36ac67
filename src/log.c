/* log.c - see log.h. The sink and level are process-wide: set once at start,
 * the level may change on SIGHUP while any thread logs (a relaxed atomic). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

static int use_syslog;
static _Atomic int cur_level = DBM_LOG_INFO;

static const char *const names[] = { "error", "warning", "notice", "info", "debug" };
static const int syslog_prio[] = { LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG };

void dbm_log_setup(int to_syslog, enum dbm_log_level level)
{
    use_syslog = to_syslog;
    __atomic_store_n(&cur_level, (int)level, __ATOMIC_RELAXED);
    if (to_syslog)
        openlog("dbmovefs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void dbm_log_set_level(enum dbm_log_level level) { __atomic_store_n(&cur_level, (int)level, __ATOMIC_RELAXED); }

int dbm_log_parse_level(const char *s, enum dbm_log_level *out)
{
    for (int i = 0; i <= DBM_LOG_DEBUG; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum dbm_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

void dbm_log(enum dbm_log_level level, const char *fmt, ...)
{
    if ((int)level > __atomic_load_n(&cur_level, __ATOMIC_RELAXED))
        return;
    int saved = errno; /* logging must not clobber the caller's errno */
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (use_syslog) {
        syslog(syslog_prio[level], "%s", msg);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        /* one fprintf per line so concurrent threads do not interleave */
        fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ dbmovefs[%s]: %s\n", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                names[level], msg);
    }
    errno = saved;
}
