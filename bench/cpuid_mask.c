// LD_PRELOAD shim that makes this CPU look like one with fewer vector extensions, so that ONNX
// Runtime (and lowbit) pick the kernels they would pick there: `CPUID_MASK=avx2` hides AVX-512
// (all of it), AVX-VNNI and AMX (an AVX2-only CPU such as AMD Zen 2/3 or Intel Haswell-Skylake
// client cores); `CPUID_MASK=avxvnni` hides AVX-512 and AMX but keeps AVX-VNNI (Intel Alder Lake
// and later client cores). Timings then measure each program's code for that CPU on this core:
// the same instructions, not the other CPU's port layout.
//
// How: Linux's CPUID faulting (`arch_prctl(ARCH_SET_CPUID, 0)`, where the CPU or hypervisor offers
// `cpuid_fault` in /proc/cpuinfo) turns every `cpuid` of the process into SIGSEGV; the handler runs
// the instruction with faulting briefly re-enabled, clears the hidden feature bits and steps over
// it. Threads inherit the setting; execve resets it. Build and use (bench/masked_cpu_vs_ort.py does
// both):
//   gcc -O2 -shared -fPIC -o /tmp/cpuid_mask.so bench/cpuid_mask.c
//   CPUID_MASK=avx2 LD_PRELOAD=/tmp/cpuid_mask.so python bench/...
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int keep_avxvnni;

static long set_cpuid(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }

static void on_segv(int sig, siginfo_t *si, void *ctx) {
    ucontext_t *uc = (ucontext_t *)ctx;
    uint8_t *ip = (uint8_t *)uc->uc_mcontext.gregs[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        // A real fault: let it happen again without this handler.
        signal(SIGSEGV, SIG_DFL);
        (void)sig;
        (void)si;
        return;
    }
    unsigned leaf = (unsigned)uc->uc_mcontext.gregs[REG_RAX], sub = (unsigned)uc->uc_mcontext.gregs[REG_RCX];
    unsigned a, b, c, d;
    set_cpuid(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_cpuid(0);
    if (leaf == 7 && sub == 0) {
        // EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31
        b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        // ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14
        c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        // EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, AVX512-FP16 23, AMX-TILE 24, AMX-INT8 25
        d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        // EAX: AVX-VNNI 4, AVX512-BF16 5, AVX-IFMA 23
        a &= ~((keep_avxvnni ? 0u : (1u << 4)) | (1u << 5) | (1u << 23));
    }
    uc->uc_mcontext.gregs[REG_RAX] = a;
    uc->uc_mcontext.gregs[REG_RBX] = b;
    uc->uc_mcontext.gregs[REG_RCX] = c;
    uc->uc_mcontext.gregs[REG_RDX] = d;
    uc->uc_mcontext.gregs[REG_RIP] += 2;
}

__attribute__((constructor)) static void init(void) {
    const char *m = getenv("CPUID_MASK");
    if (!m || !*m) return;
    if (strcmp(m, "avx2") && strcmp(m, "avxvnni")) {
        fprintf(stderr, "cpuid_mask: CPUID_MASK must be avx2 or avxvnni, not %s\n", m);
        exit(2);
    }
    keep_avxvnni = !strcmp(m, "avxvnni");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    if (set_cpuid(0) != 0) {
        perror("cpuid_mask: arch_prctl(ARCH_SET_CPUID) (no cpuid_fault on this CPU?)");
        exit(2);
    }
}
