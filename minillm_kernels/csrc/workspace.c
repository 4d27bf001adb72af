/* Per-thread arenas: see workspace.h. */
#include "workspace.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)

typedef struct { void *p; size_t n; } arena_t;

static pthread_key_t arena_key;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_free(void *a) {
    arena_t *ar = (arena_t *)a;
    if (ar) free(ar->p);
    free(ar);
}
static void make_key(void) { (void)pthread_key_create(&arena_key, arena_free); }

static arena_t *this_arena(int create) {
    (void)pthread_once(&arena_once, make_key);
    arena_t *ar = (arena_t *)pthread_getspecific(arena_key);
    if (!ar && create && (ar = (arena_t *)calloc(1, sizeof *ar)) && pthread_setspecific(arena_key, ar)) {
        free(ar);
        ar = NULL;
    }
    return ar;
}

void *workspace_get(size_t bytes) {
    arena_t *ar = this_arena(1);
    if (!ar) return NULL;
    if (ar->p && ar->n >= bytes) return ar->p;
    /* whole huge pages, and at least half again as large as the last, so that a run of growing
     * batches allocates only a few times */
    const size_t grown = ar->n + ar->n / 2;
    size_t n = bytes > grown ? bytes : grown;
    free(ar->p);
    ar->p = NULL;
    ar->n = 0;
    n = (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    void *p = NULL;
    if (posix_memalign(&p, HUGE_PAGE, n)) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, n, MADV_HUGEPAGE); /* fewer page faults and TLB misses where the kernel allows */
#endif
    ar->p = p;
    ar->n = n;
    return p;
}

void workspace_release(void) {
    arena_t *ar = this_arena(0);
    if (!ar) return;
    free(ar->p);
    ar->p = NULL;
    ar->n = 0;
}

size_t workspace_size(void) {
    const arena_t *ar = this_arena(0);
    return ar ? ar->n : 0;
}
