/* The tile configuration both AMX users (amx_gemm.c, amx_attention.c) load: palette 1, tiles 0-7 of
 * 16 rows x 64 bytes.  A configuration is per thread, so each loads it before its tiles. */
#ifndef MINILLM_AMX_TILES_H
#define MINILLM_AMX_TILES_H

#include "quants.h"

#if MINILLM_AMX
#include <immintrin.h>

typedef struct __attribute__((packed, aligned(64))) {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tile_config;

/* static data, not a stack struct: GCC dropped the stores of a stack configuration that only
 * ldtilecfg reads (the tiles came up unconfigured) */
static const amx_tile_config amx_config_16x64 = {
    .palette_id = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

static inline void amx_configure(void) { _tile_loadconfig(&amx_config_16x64); }
#endif

#endif
