/* The drivers' large temporaries (activation rows, per-expert outputs) come from one arena per
 * calling thread, kept from call to call: a 512-token MoE needs ~80 MB of them, and taking fresh
 * pages from the OS on every call (malloc of blocks this large maps them anew) cost it ~15-25% in
 * page faults on this machine's VM (alternating runs, F16 experts: ~105 against ~127 GFLOP/s).
 * One driver call at a time per thread uses it (the drivers do not nest). */
#ifndef MINILLM_WORKSPACE_H
#define MINILLM_WORKSPACE_H

#include <stddef.h>

/* the calling thread's arena, at least bytes long and 64-byte aligned (its contents undefined);
 * NULL when out of memory */
void *workspace_get(size_t bytes);
/* frees the calling thread's arena (a thread's arena is also freed when the thread ends) */
void workspace_release(void);
/* bytes held by the calling thread's arena */
size_t workspace_size(void);

/* n rounded up to whole cache lines (64 bytes) */
static inline size_t workspace_align(size_t n) { return (n + 63) & ~(size_t)63; }
/* Lays out one call's parts in an arena: the offset of a part of `bytes` placed at *at, which then
 * moves past it to the next 64-byte boundary (so parts never share a cache line). */
static inline size_t workspace_part(size_t *at, size_t bytes) {
    const size_t offset = *at;
    *at = workspace_align(offset + bytes);
    return offset;
}

#endif
