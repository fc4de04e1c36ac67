/* log.h - leveled logging to stderr (foreground) or syslog (daemon). */
#ifndef DBM_LOG_H
#define DBM_LOG_H

enum dbm_log_level { DBM_LOG_ERR = 0, DBM_LOG_WARN, DBM_LOG_NOTICE, DBM_LOG_INFO, DBM_LOG_DEBUG };

/* Chooses the sink. Call once before threads start; to_syslog opens syslog
 * with the given identity. */
void dbm_log_setup(int to_syslog, enum dbm_log_level level);
void dbm_log_set_level(enum dbm_log_level level);
/* Parses "error|warning|notice|info|debug"; -EINVAL otherwise. */
int dbm_log_parse_level(const char *s, enum dbm_log_level *out);

void dbm_log(enum dbm_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define dbm_err(...) dbm_log(DBM_LOG_ERR, __VA_ARGS__)
#define dbm_warn(...) dbm_log(DBM_LOG_WARN, __VA_ARGS__)
#define dbm_notice(...) dbm_log(DBM_LOG_NOTICE, __VA_ARGS__)
#define dbm_info(...) dbm_log(DBM_LOG_INFO, __VA_ARGS__)
#define dbm_debug(...) dbm_log(DBM_LOG_DEBUG, __VA_ARGS__)

#endif
