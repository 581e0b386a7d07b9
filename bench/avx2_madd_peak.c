/* Peak multiply-accumulate rates of three AVX2 int8/int16 instruction sequences on this core, for
 * comparing lowbit's exact AVX2 kernels with ONNX Runtime's u8s8 ones (issue 19 line 3 on AVX2):
 *   exact:      vpmaddwd + vpaddd                 (16-bit products, what lowbit's AVX2 path runs)
 *   u8s8:       vpmaddubsw + vpmaddwd(ones) + vpaddd (ONNX Runtime MLAS's AVX2 u8s8 sequence; saturates)
 *   u8s8 i16:   vpmaddubsw + vpaddw               (16-bit accumulation; saturates)
 * Six independent accumulators (more spill on 16 ymm registers), 200M iterations each, three rounds.
 * usage: gcc -O2 -mavx2 -mfma -o /tmp/avx2_madd_peak bench/avx2_madd_peak.c && /tmp/avx2_madd_peak
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define ACC6(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define DECL(i) __m256i c##i=_mm256_set1_epi32(i);
#define SUM(i) s=_mm256_add_epi32(s,c##i);
#define EX(i) c##i=_mm256_add_epi32(c##i,_mm256_madd_epi16(a,b##i));
#define SA(i) c##i=_mm256_add_epi32(c##i,_mm256_madd_epi16(_mm256_maddubs_epi16(a,b##i),ones));
#define SB(i) c##i=_mm256_add_epi16(c##i,_mm256_maddubs_epi16(a,b##i));
#define BDECL(i) __m256i b##i=_mm256_set1_epi16(i+1);
__attribute__((noinline)) __m256i exact(long n, __m256i a){ ACC6(DECL) ACC6(BDECL)
  for(long it=0;it<n;it++){ ACC6(EX) __asm__ volatile("":"+x"(a)); }
  __m256i s=c0; ACC6(SUM) return s;}
__attribute__((noinline)) __m256i sat(long n, __m256i a){ ACC6(DECL) ACC6(BDECL) __m256i ones=_mm256_set1_epi16(1);
  for(long it=0;it<n;it++){ ACC6(SA) __asm__ volatile("":"+x"(a)); }
  __m256i s=c0; ACC6(SUM) return s;}
__attribute__((noinline)) __m256i sat16(long n, __m256i a){ ACC6(DECL) ACC6(BDECL)
  for(long it=0;it<n;it++){ ACC6(SB) __asm__ volatile("":"+x"(a)); }
  __m256i s=c0; ACC6(SUM) return s;}
int main(){ long n=200000000; __m256i a=_mm256_set1_epi16(3); volatile int sink;
 for(int r=0;r<3;r++){
 double t=now(); __m256i s=exact(n,a); double e=now()-t; sink=_mm256_extract_epi32(s,0);
 printf("exact vpmaddwd+vpaddd: %.1f GMAC/s\n", n*6.0*16/e/1e9);
 t=now(); s=sat(n,a); e=now()-t; sink=_mm256_extract_epi32(s,0);
 printf("vpmaddubsw+vpmaddwd+vpaddd: %.1f GMAC/s\n", n*6.0*32/e/1e9);
 t=now(); s=sat16(n,a); e=now()-t; sink=_mm256_extract_epi32(s,0);
 printf("vpmaddubsw+vpaddw: %.1f GMAC/s\n", n*6.0*32/e/1e9);}
}
