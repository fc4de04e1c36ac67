/* cpuguard.h - tells when tasks wait for a CPU, from the kernel's CPU
 * pressure (PSI, /proc/pressure/cpu).
 *
 * Why: FUSE queue threads run at SCHED_IDLE so that a reply wakes its caller
 * on the CPU it came from (fuseuring.h); that is only safe while no other
 * task wants that CPU, or an idle-class thread waits behind it with the
 * caller's request (3.7 ms per request instead of 27 us, bench/README.md).
 *
 * One thread per guard; it reads the pressure every 100 ms. It starts calm;
 * once tasks have waited 20% of the last 500 ms (a busy mount alone makes
 * 5-9%), it calls fn(arg, 1); once the waiting has stayed under 10% for 2 s,
 * fn(arg, 0). fn runs on the guard's thread and must not call the guard. */
#ifndef DBM_CPUGUARD_H
#define DBM_CPUGUARD_H

#include <stddef.h>

struct dbm_cpuguard;

typedef void (*dbm_cpuguard_fn)(void *arg, int contended);

/* Starts watching (calm; fn is not called for the start). NULL when the CPU
 * pressure cannot be watched, with the reason in why. The path is
 * /proc/pressure/cpu, or $DBMOVEFS_PSI_CPU (tests). */
struct dbm_cpuguard *dbm_cpuguard_start(dbm_cpuguard_fn fn, void *arg, char *why, size_t whylen);

/* Stops and joins the thread (fn is not called after), frees. Accepts NULL. */
void dbm_cpuguard_stop(struct dbm_cpuguard *g);

#endif
