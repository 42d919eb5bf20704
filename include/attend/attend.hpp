#pragma once
/// \file
/// Umbrella header: everything attend offers.

#include "attend/convert.hpp"
#include "attend/errors.hpp"
#include "attend/latent.hpp"
#include "attend/layers.hpp"
#include "attend/masks.hpp"
#include "attend/multi_head.hpp"
#include "attend/reference.hpp"
#include "attend/rope.hpp"
#include "attend/scaled_dot_product.hpp"
#include "attend/shapes.hpp"
#include "attend/softmax.hpp"
#include "attend/version.hpp"
