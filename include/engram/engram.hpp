// Umbrella header: the whole public API of engram.
#pragma once

#include "engram/core/attention.hpp"
#include "engram/core/error.hpp"
#include "engram/core/flops.hpp"
#include "engram/core/gemm.hpp"
#include "engram/core/ops.hpp"
#include "engram/core/parallel.hpp"
#include "engram/core/simd.hpp"
#include "engram/core/tensor.hpp"
