"""What the CPU and the OS let the kernels use: cpuid, xgetbv and, for AMX, Linux's permission.

Built without SIMD flags (setup.py), so that it runs on any CPU: it decides which of the kernel
builds (``minillm_kernels._scalar``, ``_avx2``, ``_avx512``) is safe to import.
Feature bits are facts of the x86 ISA (Intel SDM vol. 2, CPUID; AMD APM vol. 3).
"""

cdef extern from * nogil:
    """
    #if defined(__x86_64__)
    #include <cpuid.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #define MINILLM_X86 1
    static unsigned long long cpu_xcr0(void) {
        unsigned int a, d;
        __asm__ volatile("xgetbv" : "=a"(a), "=d"(d) : "c"(0));
        return ((unsigned long long)d << 32) | a;
    }
    /* regs[0..3] = eax, ebx, ecx, edx of leaf / subleaf; zeros when the leaf does not exist */
    static void cpu_leaf(unsigned int leaf, unsigned int sub, unsigned int regs[4]) {
        regs[0] = regs[1] = regs[2] = regs[3] = 0;
        __get_cpuid_count(leaf, sub, &regs[0], &regs[1], &regs[2], &regs[3]);
    }
    /* Linux gives a process AMX tile data state only once asked (arch_prctl ARCH_REQ_XCOMP_PERM,
     * XFEATURE_XTILEDATA = 18); 1 when granted */
    static int cpu_request_amx(void) {
        unsigned long long bitmask = 0;
        if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) != 0) return 0;
        if (syscall(SYS_arch_prctl, 0x1022 /* ARCH_GET_XCOMP_PERM */, &bitmask) != 0) return 0;
        return (bitmask >> 18) & 1;
    }
    #else
    #define MINILLM_X86 0
    static unsigned long long cpu_xcr0(void) { return 0; }
    static void cpu_leaf(unsigned int leaf, unsigned int sub, unsigned int regs[4]) {
        regs[0] = regs[1] = regs[2] = regs[3] = 0;
    }
    static int cpu_request_amx(void) { return 0; }
    #endif
    """
    int MINILLM_X86
    unsigned long long cpu_xcr0()
    void cpu_leaf(unsigned int leaf, unsigned int sub, unsigned int regs[4])
    int cpu_request_amx()

# the order of the levels, lowest first
LEVELS = ("scalar", "avx2", "avx512", "amx")

# (leaf, subleaf, register index eax=0 ebx=1 ecx=2 edx=3, bit) of each feature the builds use
_FEATURES = {
    "fma": (1, 0, 2, 12), "movbe": (1, 0, 2, 22), "popcnt": (1, 0, 2, 23), "osxsave": (1, 0, 2, 27),
    "avx": (1, 0, 2, 28), "f16c": (1, 0, 2, 29),
    "bmi1": (7, 0, 1, 3), "avx2": (7, 0, 1, 5), "bmi2": (7, 0, 1, 8), "avx512f": (7, 0, 1, 16),
    "avx512dq": (7, 0, 1, 17), "avx512cd": (7, 0, 1, 28), "avx512bw": (7, 0, 1, 30), "avx512vl": (7, 0, 1, 31),
    "avx512_vnni": (7, 0, 2, 11), "amx_bf16": (7, 0, 3, 22), "amx_tile": (7, 0, 3, 24), "amx_int8": (7, 0, 3, 25),
    "avx512_bf16": (7, 1, 0, 5), "lzcnt": (0x80000001, 0, 2, 5),
}
# what each level's build was compiled for (setup.py), beyond the level below
_NEEDS = {
    "avx2": ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt", "popcnt", "movbe"),
    "avx512": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx512_vnni", "avx512_bf16"),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
}
# XCR0: the register state the OS saves on a context switch (SSE|AVX; opmask|ZMM_Hi256|Hi16_ZMM;
# XTILECFG|XTILEDATA)
_XCR0 = {"avx2": 0x6, "avx512": 0xE0, "amx": 0x60000}


def features():
    """{feature name: bool} from cpuid, plus os_<level> for the register state the OS enables."""
    cdef unsigned int regs[4]
    cdef unsigned int max_leaf, max_ext
    out = {name: False for name in _FEATURES}
    if not MINILLM_X86:
        return out
    cpu_leaf(0, 0, regs)
    max_leaf = regs[0]
    cpu_leaf(0x80000000, 0, regs)
    max_ext = regs[0]
    cache = {}
    for name, (leaf, sub, reg, bit) in _FEATURES.items():
        if (leaf < 0x80000000 and leaf > max_leaf) or (leaf >= 0x80000000 and leaf > max_ext):
            continue
        if (leaf, sub) not in cache:
            cpu_leaf(leaf, sub, regs)
            cache[leaf, sub] = (regs[0], regs[1], regs[2], regs[3])
        out[name] = bool((cache[leaf, sub][reg] >> bit) & 1)
    xcr0 = cpu_xcr0() if out["osxsave"] else 0
    for level, mask in _XCR0.items():
        out["os_" + level] = (xcr0 & mask) == mask
    return out


_amx_granted = None


def request_amx():
    """Ask Linux for the AMX tile state (once per process); True when granted."""
    global _amx_granted
    if _amx_granted is None:
        _amx_granted = bool(cpu_request_amx())
    return _amx_granted


def supported_levels():
    """The ISA levels this CPU and OS can run, lowest first (always starts with "scalar")."""
    f = features()
    out = ["scalar"]
    for level in LEVELS[1:]:
        if not (all(f[n] for n in _NEEDS[level]) and f["os_" + level]):
            break
        if level == "amx" and not request_amx():
            break
        out.append(level)
    return out
