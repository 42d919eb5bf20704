#pragma once
/// \file
/// Reduced precision: the kernels take Eigen::bfloat16 and Eigen::half inputs (or float queries over 16-bit keys
/// and values), compute scores, the softmax statistics and the accumulators in float (attend::accumulator_t), and
/// round only what is stored in 16 bits: the inputs, the output, and the weights where a 16-bit multiplier
/// consumes them (AMX). This header says which instructions do that work on this machine.

#include "attend/detail/cpu.hpp"

namespace attend {

/// The instructions the 16-bit kernels use in this build on this CPU, decided at run time:
///
///   "amx"         AMX tiles (tdpbf16ps) for prefill; AVX-512 loops reading 16-bit keys and values for decoding
///   "avx512bf16"  AVX-512 loops throughout (16-bit values widened to float in registers), on CPUs with
///                 AVX512-BF16 but no AMX, or when Linux refuses the process the AMX tile state
///   "generic"     16-bit tiles converted to float, then the float kernel (any CPU; builds without x86 dispatch)
///
/// The environment variable ATTEND_BF16_PATH (amx, avx512bf16 or generic), read once, caps the path. Asking for
/// the path may ask Linux for the AMX tile state (once per process).
inline const char* bf16_path() { return detail::path_name(detail::bf16_path_now()); }

}  // namespace attend
