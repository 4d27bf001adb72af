/* Compiles the 256-block types (csrc/kquants.c, written separately) into this
 * extension when they are present, so the build works before and after. */
#if __has_include("kquants.c")
#include "kquants.c"
#include "kquants_r.c" /* uses kquants.c's helpers and tile macros */
#endif
