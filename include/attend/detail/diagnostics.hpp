#pragma once
/// \file
/// Warnings silenced around code built from AVX-512 intrinsics, with the reason once:
///
/// GCC 12's AVX-512 intrinsics start some vectors from the self-initialized `__m512 __Y = __Y`
/// (_mm512_undefined_ps), which it reports as used uninitialized once inlined into the caller: a false positive that
/// -Werror would make fatal for anyone compiling attend's headers. ATTEND_AVX512_WARNINGS_BEGIN and _END enclose
/// the files that use the intrinsics.

#if defined(__GNUC__) && !defined(__clang__)
#define ATTEND_AVX512_WARNINGS_BEGIN                                                   \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define ATTEND_AVX512_WARNINGS_END _Pragma("GCC diagnostic pop")
#else
#define ATTEND_AVX512_WARNINGS_BEGIN
#define ATTEND_AVX512_WARNINGS_END
#endif
