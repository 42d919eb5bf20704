#pragma once
/// \file
/// Umbrella header: everything attend offers (ring attention over MPI is separate: <attend/mpi.hpp>).
///
/// Concept -> header:
///
///   scaled dot-product attention, attention_weights     scaled_dot_product.hpp
///   multi-head (MHA), grouped-query (GQA), multi-query (MQA) attention   multi_head.hpp
///   masks (causal, top-left causal, sliding window)      masks.hpp
///   options: scale, softcap, mask, sinks, ALiBi; the default scale   options.hpp
///   results with log-sum-exp, merge_attention, apply_sinks   result.hpp
///   gradients: multi_head_attention_backward, scaled_dot_product_attention_backward   backward.hpp
///   sinks and ALiBi: Options::sinks, alibi_slopes        options.hpp; geometric_alibi_slopes: alibi.hpp
///   softmax of a score matrix                            softmax.hpp
///   bfloat16 / half inputs and caches, bf16_path()       precision.hpp (accumulator_t: shapes.hpp)
///   8-bit keys and values: Q8Matrix, quantize_q8         quantized.hpp; the kernels over them: quantized_attention.hpp
///   Linear, RMSNorm                                      linear.hpp
///   MultiHeadAttention (MHA/GQA/MQA layer)               layers.hpp
///   MultiHeadLatentAttention (DeepSeek MLA)              latent.hpp
///   KVCache, LatentCache                                 caches.hpp
///   ragged batches of sequences: Ragged, multi_head_attention(q, k, v, Ragged, ...)   ragged.hpp
///   paged caches for continuous batching: PagedKVCache, PagedLatentCache   paged_cache.hpp
///   MHA -> GQA (to_grouped), MHA -> MLA (to_latent)      convert.hpp
///   rotary position embedding                            rope.hpp
///   the double-precision oracle                          reference.hpp
///   shape_error, Matrix, Vector, Heads                   errors.hpp, shapes.hpp
///   the kernel itself (tiles, mainloops, schedules)      detail/attention.hpp has its map
///   ring attention across processes                      mpi.hpp (not included here)

#include "attend/alibi.hpp"
#include "attend/backward.hpp"
#include "attend/caches.hpp"
#include "attend/convert.hpp"
#include "attend/errors.hpp"
#include "attend/latent.hpp"
#include "attend/layers.hpp"
#include "attend/linear.hpp"
#include "attend/masks.hpp"
#include "attend/multi_head.hpp"
#include "attend/options.hpp"
#include "attend/paged_cache.hpp"
#include "attend/precision.hpp"
#include "attend/quantized.hpp"
#include "attend/quantized_attention.hpp"
#include "attend/ragged.hpp"
#include "attend/reference.hpp"
#include "attend/result.hpp"
#include "attend/rope.hpp"
#include "attend/scaled_dot_product.hpp"
#include "attend/shapes.hpp"
#include "attend/softmax.hpp"
#include "attend/version.hpp"
