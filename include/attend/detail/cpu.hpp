#pragma once
/// \file
/// Which instructions the 16-bit kernels use, decided at run time: the build may target any x86-64 (the tests and
/// a default Debian build use SSE2 only), while the machine may have AVX-512, AVX512-BF16 and AMX. Code for those
/// lives in functions with their own `target` attributes (the approach of Highway and oneDNN), called only when
/// the CPU and the operating system support them. Three paths, each a superset of the one before:
///
///   generic     16-bit tiles converted to float, then the float mainloops (compiled for the build's target)
///   avx512bf16  AVX-512 conversions in registers for decoding; prefill tile products either widened to float
///               in registers, then FMA (tile16_products.hpp's WidenProducts), or vdpbf16ps on the bfloat16
///               pairs (DotProducts), whichever the CPU runs faster (Bf16Products below)
///   amx         AMX tiles (tdpbf16ps) for prefill; the AVX-512 decode loops
///
/// AMX needs the process to ask Linux for the tile state once (arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)); a refusal leaves the avx512bf16 path. The environment variable ATTEND_BF16_PATH
/// (generic, avx512bf16 or amx), read once, caps the path, and tests may set it with set_bf16_path(); a path the
/// machine lacks falls back to the best one below it. ATTEND_BF16_PRODUCTS (widen or dot), read once, and
/// set_bf16_products() choose the avx512bf16 path's prefill products in the same way. Define
/// ATTEND_NO_X86_DISPATCH to compile the generic path only.

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(ATTEND_NO_X86_DISPATCH)
#define ATTEND_X86_DISPATCH 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace attend::detail {

#if defined(ATTEND_X86_DISPATCH)
/// The mask of the first min(n, 16) lanes of a 16-lane vector (n >= 0): the tail of a row, a block or a run of keys,
/// for the AVX-512 loops of every path.
inline __mmask16 first_lanes(std::ptrdiff_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }
#endif

enum class Bf16Path { generic = 0, avx512bf16 = 1, amx = 2 };

inline const char* path_name(Bf16Path p) {
  return p == Bf16Path::amx ? "amx" : p == Bf16Path::avx512bf16 ? "avx512bf16" : "generic";
}

/// What the CPU and the operating system offer.
struct CpuFeatures {
  bool avx512 = false;      ///< AVX-512 F, BW, VL, DQ with the OS saving the zmm and mask state
  bool avx512bf16 = false;  ///< and vdpbf16ps, vcvtne2ps2bf16
  bool avx512vnni = false;  ///< and vpdpbusd (8-bit integer dot products)
  bool amx = false;         ///< AMX-TILE and AMX-BF16 with the OS supporting the tile state (permission aside)
  bool amd = false;         ///< the vendor string is AuthenticAMD
  /// AVX-512 run as two 256-bit halves (AMD family 19h, Zen 4): a vector load or multiply-add takes its unit for
  /// two halves, where CPUs with full-width units (Intel's, AMD's from Zen 5) do one per cycle on each.
  bool avx512_double_pumped = false;
};

#if defined(ATTEND_X86_DISPATCH)
inline CpuFeatures probe_cpu() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid(0, a, b, c, d);
  f.amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "Auth" "enti" "cAMD"
  __cpuid(1, a, b, c, d);
  const unsigned base_family = (a >> 8) & 0xf;
  const unsigned family = base_family == 0xf ? base_family + ((a >> 20) & 0xff) : base_family;
  const bool osxsave = (c >> 27) & 1;
  if (!osxsave) return f;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const unsigned long long xcr0 = (static_cast<unsigned long long>(xcr0_hi) << 32) | xcr0_lo;
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;               // xmm, ymm, opmask, zmm_hi256, hi16_zmm
  const bool os_amx = (xcr0 & (3ull << 17)) == (3ull << 17);  // xtilecfg, xtiledata
  __cpuid_count(7, 0, a, b, c, d);
  const bool f512 = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
  const bool vnni = (c >> 11) & 1;
  __cpuid_count(7, 1, a, b, c, d);
  const bool bf16 = (a >> 5) & 1;
  f.avx512 = os_avx512 && f512 && dq && bw && vl;
  f.avx512_double_pumped = f.avx512 && f.amd && family == 0x19;
  f.avx512bf16 = f.avx512 && bf16;
  f.avx512vnni = f.avx512 && vnni;
  f.amx = f.avx512bf16 && os_amx && amx_tile && amx_bf16;
  return f;
}
#else
inline CpuFeatures probe_cpu() { return {}; }
#endif

inline const CpuFeatures& cpu() {
  static const CpuFeatures f = probe_cpu();
  return f;
}

/// Asks Linux, once per process, for the AMX tile state; true when granted. Tile configuration is per thread
/// (each AMX mainloop loads its own), the permission per process.
inline bool amx_permitted() {
#if defined(ATTEND_X86_DISPATCH) && defined(__linux__)
  static const bool granted = [] {
    if (!cpu().amx) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
#else
  return false;
#endif
}

/// The highest path allowed: ATTEND_BF16_PATH, read once (amx when unset).
inline Bf16Path env_path_cap() {
  static const Bf16Path cap = [] {
    const char* e = std::getenv("ATTEND_BF16_PATH");
    if (e && std::strcmp(e, "generic") == 0) return Bf16Path::generic;
    if (e && std::strcmp(e, "avx512bf16") == 0) return Bf16Path::avx512bf16;
    return Bf16Path::amx;
  }();
  return cap;
}

/// The program's choice of a `Choice` (Bf16Path's cap, Bf16Products), set by tests and benchmarks: -1 for none.
/// One slot per enum, so each setter and its reset read the same way.
template <class Choice>
std::atomic<int>& override_slot() {
  static std::atomic<int> p{-1};
  return p;
}

/// Caps the 16-bit path at `p` for the rest of the process (or until called again); no effect on paths the
/// machine lacks. For tests and benchmarks that compare paths.
inline void set_bf16_path(Bf16Path p) { override_slot<Bf16Path>().store(static_cast<int>(p)); }
/// Removes the cap of set_bf16_path() (ATTEND_BF16_PATH still applies).
inline void reset_bf16_path() { override_slot<Bf16Path>().store(-1); }

/// How the avx512bf16 path multiplies the 16-bit prefill tiles: bfloat16 pairs widened to float, then FMA (the
/// weights stay float), or vdpbf16ps on the pairs as they are (the weights rounded to bfloat16, as on AMX). One
/// vdpbf16ps does the multiplies of two FMAs; whether it also issues at the FMA rate is a property of the core:
/// AMD's cores with AVX512-BF16 (Zen 4 on) issue it like an FMA, Intel's split it and run it at half the FMA
/// FLOP rate (docs/kernel-notes.md). The vendor decides the default, so a process's results never depend on a
/// timing.
enum class Bf16Products { widen = 0, dot = 1 };

inline const char* products_name(Bf16Products p) { return p == Bf16Products::dot ? "dot" : "widen"; }

/// The products chosen by ATTEND_BF16_PRODUCTS (read once), else by the vendor.
inline Bf16Products env_products() {
  static const Bf16Products p = [] {
    const char* e = std::getenv("ATTEND_BF16_PRODUCTS");
    if (e && std::strcmp(e, "widen") == 0) return Bf16Products::widen;
    if (e && std::strcmp(e, "dot") == 0) return Bf16Products::dot;
    return cpu().amd ? Bf16Products::dot : Bf16Products::widen;
  }();
  return p;
}

/// Sets the avx512bf16 path's prefill products for the rest of the process (or until called again); for tests and
/// benchmarks that compare them.
inline void set_bf16_products(Bf16Products p) { override_slot<Bf16Products>().store(static_cast<int>(p)); }
/// Removes the choice of set_bf16_products() (ATTEND_BF16_PRODUCTS and the vendor decide again).
inline void reset_bf16_products() { override_slot<Bf16Products>().store(-1); }

/// The products the avx512bf16 path's prefill tiles take now.
inline Bf16Products bf16_products_now() {
  const int o = override_slot<Bf16Products>().load(std::memory_order_relaxed);
  return o >= 0 ? static_cast<Bf16Products>(o) : env_products();
}

/// The path the 16-bit kernels take now.
inline Bf16Path bf16_path_now() {
  Bf16Path cap = env_path_cap();
  const int o = override_slot<Bf16Path>().load(std::memory_order_relaxed);
  if (o >= 0 && o < static_cast<int>(cap)) cap = static_cast<Bf16Path>(o);
  if (cap == Bf16Path::amx && cpu().amx && amx_permitted()) return Bf16Path::amx;
  if (cap >= Bf16Path::avx512bf16 && cpu().avx512bf16) return Bf16Path::avx512bf16;
  return Bf16Path::generic;
}

}  // namespace attend::detail
