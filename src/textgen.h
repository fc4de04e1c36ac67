/* textgen.h - the mount's text files (README, status, <env>/info,
 * <env>/status): "key: value" lines with stable names (fs-layout.md). Each
 * call builds the content afresh from the daemon's state. */
#ifndef DBM_TEXTGEN_H
#define DBM_TEXTGEN_H

struct dbm_daemon;
struct dbm_env;
struct dbm_sbuf;

void dbm_text_readme(struct dbm_daemon *d, struct dbm_sbuf *b);
void dbm_text_root_status(struct dbm_daemon *d, struct dbm_sbuf *b);
/* Call under d->cfg_lock (read). */
void dbm_text_env_info(struct dbm_daemon *d, struct dbm_env *e, struct dbm_sbuf *b);
void dbm_text_env_status(struct dbm_daemon *d, struct dbm_env *e, struct dbm_sbuf *b);

#endif
