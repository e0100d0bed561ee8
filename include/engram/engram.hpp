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

#include "engram/io/checkpoint.hpp"
#include "engram/io/hf.hpp"
#include "engram/io/json.hpp"
#include "engram/io/safetensors.hpp"
#include "engram/nn/block.hpp"
#include "engram/nn/cache_policy.hpp"
#include "engram/nn/classifier.hpp"
#include "engram/nn/config.hpp"
#include "engram/nn/decoder.hpp"
#include "engram/nn/init.hpp"
#include "engram/nn/kv_cache.hpp"
#include "engram/nn/sampling.hpp"
