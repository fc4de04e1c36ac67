/* check.h - the unit tests' assertion: prints file:line, counts, works under NDEBUG. */
#ifndef DBM_CHECK_H
#define DBM_CHECK_H
#include <stdio.h>
#include <stdlib.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        check_count++;                                                                  \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
            check_failures++;                                                           \
        }                                                                               \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                              \
    do {                                                                                \
        long long va_ = (long long)(a), vb_ = (long long)(b);                           \
        check_count++;                                                                  \
        if (va_ != vb_) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, \
                    __LINE__, #a, #b, va_, vb_);                                        \
            check_failures++;                                                           \
        }                                                                               \
    } while (0)

/* Call at the end of main(). */
#define CHECK_DONE()                                                                    \
    (fprintf(stderr, "%d checks, %d failed\n", check_count, check_failures),            \
     check_failures ? EXIT_FAILURE : EXIT_SUCCESS)

#endif
