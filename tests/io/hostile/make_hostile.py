#!/usr/bin/env python3
"""Generates the hostile-config corpus: config.json files that each must load to an engram::Error
(never a crash, a hang, bad_alloc or a leak) when paired with the real fixture weights.

    python3 tests/io/hostile/make_hostile.py      # rewrites tests/io/hostile/cases/ and cases.tsv

Every family starts from a fixture's valid config and applies one mutation: every shape key set to
zero, negative, huge, over the bound, the wrong type or missing; non-divisible head counts; eps,
theta and RoPE-scaling values out of range (NaN and Infinity literals too, which Python writes and
JSON forbids); size-budget cases (a config asking for far more than its checkpoint holds); and
malformed documents. cases.tsv lists family, file and a substring the Error must contain (the key,
or the tensor, it names). tests/io/test_hostile.cpp runs them all (ASan suite included).
"""
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "fixtures")

# family -> fixture directory whose weights the hostile config meets (the loader is chosen by family).
FAMILIES = {
    "llama": "llama_tiny",
    "gpt2": "gpt2_tiny",
    "bert": "rmt/encoder",
    "ttt": "ttt/model_linear_T",
    "ttt_mlp": "ttt/model_mlp_M",
    "rmt_decoder": "rmt/decoder",
    "rmt_encoder": "rmt/encoder",
}

DELETE = object()  # a mutation value: remove the key
OVERFLOW = "__overflows_double__"  # a mutation value: the literal 1e999
HUGE = 1 << 40
INT64_MAX = (1 << 63) - 1


def base(family):
    with open(os.path.join(FIXTURES, FAMILIES[family], "config.json")) as f:
        cfg = json.load(f)
    if family == "bert":
        cfg.pop("rmt", None)
    return cfg


def set_path(cfg, path, value):
    obj = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        obj = obj[k]
    if value is DELETE:
        obj.pop(keys[-1], None)
    else:
        obj[keys[-1]] = value


cases = []  # (family, name, text, expect)


def add(family, name, mutations, expect, raw=None):
    """mutations: {dotted key: value}; raw: the document text itself (malformed cases)."""
    if raw is None:
        cfg = base(family)
        for k, v in mutations.items():
            set_path(cfg, k, v)
        raw = json.dumps(cfg, indent=1, allow_nan=True)  # allow_nan: NaN / Infinity literals stay as Python writes them
        raw = raw.replace(json.dumps(OVERFLOW), "1e999")
    cases.append((family, name, raw, expect))


def shape_key(family, key, lo=1, required=True, bound=None):
    """The neighbours of an integer shape key."""
    add(family, f"{key}.zero" if lo > 0 else f"{key}.minus_one", {key: 0 if lo > 0 else -1}, key)
    add(family, f"{key}.negative", {key: -7}, key)
    add(family, f"{key}.huge", {key: HUGE}, key)
    add(family, f"{key}.int64_max", {key: INT64_MAX}, key)
    add(family, f"{key}.beyond_int64", {key: 1 << 70}, key)  # not an int64: a non-integer number
    if bound is not None:
        add(family, f"{key}.over_bound", {key: bound + 1}, key)
    add(family, f"{key}.string", {key: "32"}, key)
    add(family, f"{key}.float", {key: 32.5}, key)
    add(family, f"{key}.bool", {key: True}, key)
    add(family, f"{key}.array", {key: [32]}, key)
    add(family, f"{key}.object", {key: {"value": 32}}, key)
    add(family, f"{key}.nan", {key: float("nan")}, "config.json")  # NaN is not JSON: a parse error naming the file
    add(family, f"{key}.infinity", {key: float("inf")}, "config.json")
    if required:
        add(family, f"{key}.missing", {key: DELETE}, key)
        add(family, f"{key}.null", {key: None}, key)


def real_key(family, key, allow_zero=False):
    """The neighbours of a real-valued key (eps, theta, factors)."""
    if not allow_zero:
        add(family, f"{key}.zero", {key: 0.0}, key)
    add(family, f"{key}.negative", {key: -1e-5}, key)
    add(family, f"{key}.huge", {key: 1e300}, key)
    add(family, f"{key}.overflows_double", {key: OVERFLOW}, "config.json")  # 1e999: out of range for a double
    add(family, f"{key}.nan", {key: float("nan")}, "config.json")
    add(family, f"{key}.minus_infinity", {key: float("-inf")}, "config.json")
    add(family, f"{key}.string", {key: "1e-5"}, key)
    add(family, f"{key}.bool", {key: False}, key)


def documents(family):
    """Malformed documents, whatever the family."""
    good = json.dumps(base(family))
    add(family, "doc.empty", {}, "config.json", raw="")
    add(family, "doc.array", {}, "config.json", raw="[]")
    add(family, "doc.number", {}, "config.json", raw="42")
    add(family, "doc.string", {}, "config.json", raw='"llama"')
    add(family, "doc.truncated", {}, "config.json", raw=good[: len(good) // 2])
    add(family, "doc.trailing_garbage", {}, "config.json", raw=good + " }")
    add(family, "doc.duplicate_brace", {}, "config.json", raw="{" + good)
    add(family, "doc.nul_byte", {}, "config.json", raw=good[:10] + "\0" + good[10:])
    add(family, "doc.deep_nesting", {}, "config.json", raw="[" * 1000 + "]" * 1000)
    add(family, "doc.model_type_number", {"model_type": 7}, "model_type")


MAX_DIM = 1 << 20

# ---- llama ---------------------------------------------------------------------------------------
F = "llama"
documents(F)
add(F, "model_type.unknown", {"model_type": "mamba"}, "model_type")
add(F, "model_type.missing", {"model_type": DELETE}, "model_type")
for k in ["hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"]:
    shape_key(F, k, bound=None if k == "vocab_size" else (16 * MAX_DIM if k == "intermediate_size" else MAX_DIM))
shape_key(F, "num_hidden_layers", lo=0, bound=MAX_DIM)
shape_key(F, "num_key_value_heads", required=False)
shape_key(F, "head_dim", required=False, bound=MAX_DIM)
shape_key(F, "max_position_embeddings", required=False)
add(F, "vocab_size.int32_max", {"vocab_size": (1 << 31) - 1}, "checkpoint")  # in range; far more than the checkpoint holds
add(F, "vocab_size.over_int32", {"vocab_size": 1 << 31}, "vocab_size")
add(F, "vocab_size.neighbour", {"vocab_size": 68}, "embed_tokens")  # one more row: the binder names the tensor
add(F, "intermediate_size.budget", {"intermediate_size": 1 << 24}, "checkpoint")
add(F, "num_hidden_layers.budget", {"num_hidden_layers": 1 << 20}, "checkpoint")
add(F, "num_hidden_layers.neighbour", {"num_hidden_layers": 3}, "model.layers.2")
add(F, "hidden_size.budget", {"hidden_size": MAX_DIM, "head_dim": DELETE}, "checkpoint")
add(F, "head_dim.budget", {"head_dim": 65536}, "checkpoint")
add(F, "head_dim.odd", {"head_dim": 7}, "head_dim")
add(F, "head_dim.implied_odd", {"head_dim": DELETE, "hidden_size": 36, "num_attention_heads": 4}, "even")
add(F, "heads.not_dividing_hidden", {"head_dim": DELETE, "hidden_size": 30}, "num_attention_heads")
add(F, "kv_heads.not_dividing", {"num_key_value_heads": 3}, "num_key_value_heads")
add(F, "kv_heads.more_than_heads", {"num_key_value_heads": 8}, "num_key_value_heads")
add(F, "heads.zero_with_head_dim", {"num_attention_heads": 0, "head_dim": 8}, "num_attention_heads")
real_key(F, "rms_norm_eps")
add(F, "rms_norm_eps.above_one", {"rms_norm_eps": 2.0}, "rms_norm_eps")
real_key(F, "rope_theta")
add(F, "rope_scaling.string", {"rope_scaling": "linear"}, "rope_scaling")
add(F, "rope_scaling.array", {"rope_scaling": [2.0]}, "rope_scaling")
add(F, "rope_scaling.dynamic", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic")
add(F, "rope_scaling.unknown_type", {"rope_scaling": {"type": "yarn", "factor": 2.0}}, "yarn")
add(F, "rope_scaling.type_number", {"rope_scaling": {"type": 3, "factor": 2.0}}, "rope_scaling.type")
for kind in ["linear", "ntk", "llama3"]:
    for name, v in [("zero", 0.0), ("negative", -2.0), ("huge", 1e300), ("string", "2"), ("nan", float("nan")), ("inf", float("inf"))]:
        add(F, f"rope_scaling.{kind}.factor_{name}", {"rope_scaling": {"type": kind, "factor": v}},
            "config.json" if name in ("nan", "inf") else "rope_scaling.factor")
for name, v in [("zero", 0.0), ("negative", -1.0), ("huge", 1e300), ("nan", float("nan"))]:
    add(F, f"rope_scaling.ntk.alpha_{name}", {"rope_scaling": {"type": "ntk", "factor": 2.0, "alpha": v}},
        "config.json" if name == "nan" else "rope_scaling.alpha")
add(F, "rope_scaling.ntk.base_not_positive", {"rope_scaling": {"type": "ntk", "factor": 0.5, "alpha": 3.0}}, "rope_scaling.alpha")
add(F, "rope_scaling.llama3.high_below_low", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                                               "high_freq_factor": 1.0}}, "high_freq_factor")
add(F, "rope_scaling.llama3.high_equals_low", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                                                                "high_freq_factor": 2.0}}, "high_freq_factor")
add(F, "rope_scaling.llama3.low_zero", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0}}, "low_freq_factor")
add(F, "rope_scaling.llama3.original_zero", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                              "original_max_position_embeddings": 0}}, "original_max_position_embeddings")
add(F, "rope_scaling.llama3.original_float", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                               "original_max_position_embeddings": 0.5}}, "original_max_position_embeddings")
add(F, "hidden_act.unknown", {"hidden_act": "swiglu2"}, "hidden_act")
add(F, "hidden_act.number", {"hidden_act": 1}, "hidden_act")
add(F, "tie_word_embeddings.string", {"tie_word_embeddings": "false"}, "tie_word_embeddings")
add(F, "attention_bias.number", {"attention_bias": 1}, "attention_bias")
add(F, "attention_bias.neighbour", {"attention_bias": True}, "q_proj.bias")
add(F, "sliding_window.zero", {"sliding_window": 0, "use_sliding_window": True}, "sliding_window")
add(F, "sliding_window.negative", {"sliding_window": -16, "use_sliding_window": True}, "sliding_window")
add(F, "sliding_window.string", {"sliding_window": "16"}, "sliding_window")
add(F, "sliding_window.float", {"sliding_window": 16.5}, "sliding_window")
add(F, "use_sliding_window.string", {"sliding_window": 16, "use_sliding_window": "yes"}, "use_sliding_window")

# ---- gpt2 ----------------------------------------------------------------------------------------
F = "gpt2"
documents(F)
for k in ["n_embd", "n_head", "vocab_size"]:
    shape_key(F, k, bound=None if k == "vocab_size" else MAX_DIM)
shape_key(F, "n_layer", lo=0, bound=MAX_DIM)
shape_key(F, "n_positions", required=False)
shape_key(F, "n_inner", required=False, bound=16 * MAX_DIM)
add(F, "n_embd.not_divisible", {"n_embd": 33}, "n_head")  # the heap corruption of issue 14
add(F, "n_embd.not_divisible_neighbour", {"n_embd": 30}, "n_head")
add(F, "n_embd.divisible_mismatch", {"n_embd": 36}, "wte.weight")  # divisible, wrong for the weights: itemised by the binder
add(F, "n_head.not_dividing", {"n_head": 3}, "n_head")
add(F, "n_head.more_than_width", {"n_head": 64}, "n_head")
add(F, "n_positions.budget", {"n_positions": (1 << 31) - 1}, "checkpoint")
add(F, "n_positions.over_int32", {"n_positions": 1 << 31}, "n_positions")
add(F, "n_positions.neighbour", {"n_positions": 65}, "wpe.weight")
add(F, "vocab_size.budget", {"vocab_size": (1 << 31) - 1}, "checkpoint")
add(F, "n_inner.budget", {"n_inner": 1 << 24}, "checkpoint")
real_key(F, "layer_norm_epsilon")
add(F, "activation_function.unknown", {"activation_function": "gelu_old"}, "activation_function")

# ---- bert ----------------------------------------------------------------------------------------
F = "bert"
documents(F)
for k in ["hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"]:
    shape_key(F, k, bound=None if k == "vocab_size" else (16 * MAX_DIM if k == "intermediate_size" else MAX_DIM))
shape_key(F, "num_hidden_layers", lo=0, bound=MAX_DIM)
shape_key(F, "max_position_embeddings", required=False)
shape_key(F, "type_vocab_size", lo=0, required=False, bound=MAX_DIM)
add(F, "hidden_size.not_divisible", {"hidden_size": 17}, "num_attention_heads")
add(F, "heads.not_dividing", {"num_attention_heads": 3}, "num_attention_heads")
add(F, "max_position_embeddings.budget", {"max_position_embeddings": (1 << 31) - 1}, "checkpoint")
add(F, "type_vocab_size.big", {"type_vocab_size": MAX_DIM}, "token_type_embeddings")  # within the slack: built, then itemised
add(F, "type_vocab_size.neighbour", {"type_vocab_size": 3}, "token_type_embeddings")
real_key(F, "layer_norm_eps")
add(F, "hidden_act.unknown", {"hidden_act": "tanh"}, "hidden_act")

# ---- ttt -----------------------------------------------------------------------------------------
for F in ["ttt", "ttt_mlp"]:
    documents(F)
    add(F, "empty_object", {}, "hidden_size", raw="{}")  # must not become the 1.3B shape
    add(F, "only_model_type", {}, "hidden_size", raw='{"model_type": "ttt"}')
    add(F, "model_type.llama", {"model_type": "llama"}, "model_type")
    for k in ["hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"]:
        shape_key(F, k, bound=None if k == "vocab_size" else (16 * MAX_DIM if k == "intermediate_size" else MAX_DIM))
    shape_key(F, "num_hidden_layers", lo=0, bound=MAX_DIM)
    shape_key(F, "mini_batch_size", required=False, bound=1 << 16)
    shape_key(F, "conv_kernel", required=False, bound=1 << 16)
    add(F, "heads.not_dividing", {"num_attention_heads": 3}, "num_attention_heads")
    add(F, "head_dim.odd", {"hidden_size": 36}, "even")
    add(F, "hidden_size.budget", {"hidden_size": MAX_DIM, "num_attention_heads": 4}, "checkpoint")
    add(F, "vocab_size.budget", {"vocab_size": (1 << 31) - 1}, "checkpoint")
    add(F, "layers.budget", {"num_hidden_layers": MAX_DIM}, "checkpoint")
    add(F, "layers.neighbour", {"num_hidden_layers": 3}, "model.layers.2")
    add(F, "mini_batch.neighbour", {"mini_batch_size": 8}, "learnable_token_idx")
    real_key(F, "rms_norm_eps")
    real_key(F, "rope_theta")
    real_key(F, "ttt_base_lr", allow_zero=True)
    add(F, "ttt_layer_type.unknown", {"ttt_layer_type": "rnn"}, "ttt_layer_type")
    add(F, "ttt_layer_type.neighbour", {"ttt_layer_type": "mlp" if F == "ttt" else "linear"}, "W2")
    add(F, "share_qk.string", {"share_qk": "yes"}, "share_qk")
    add(F, "share_qk.neighbour", {"share_qk": F == "ttt"}, "k_proj")
    add(F, "hidden_act.gelu", {"hidden_act": "gelu"}, "hidden_act")

# ---- rmt -----------------------------------------------------------------------------------------
for F in ["rmt_decoder", "rmt_encoder"]:
    documents(F)
    add(F, "rmt.missing", {"rmt": DELETE}, "rmt")
    add(F, "rmt.array", {"rmt": [3, 6]}, "rmt")
    add(F, "rmt.number", {"rmt": 3}, "rmt")
    add(F, "rmt.empty", {"rmt": {}}, "num_mem_tokens")
    shape_key(F, "rmt.num_mem_tokens", lo=0, bound=1 << 16)
    add(F, "rmt.layout.unknown", {"rmt.layout": "sideways"}, "rmt.layout")
    add(F, "rmt.memory_mask.unknown", {"rmt.memory_mask": "none"}, "rmt.memory_mask")
    add(F, "rmt.segment_alignment.unknown", {"rmt.segment_alignment": "center"}, "rmt.segment_alignment")
    add(F, "backbone.n_positions_zero" if F == "rmt_decoder" else "backbone.heads_zero",
        {"n_positions": 0} if F == "rmt_decoder" else {"num_attention_heads": 0}, "n_positions" if F == "rmt_decoder" else "num_attention_heads")
F = "rmt_decoder"
shape_key(F, "rmt.segment_size", bound=1 << 24)
add(F, "rmt.num_mem_tokens.neighbour", {"rmt.num_mem_tokens": 4}, "memory")  # the checkpoint's memory is [3, 16]
add(F, "rmt.num_mem_tokens.none", {"rmt.num_mem_tokens": 0}, "unexpected tensor memory")
add(F, "rmt.layout_beyond_positions", {"rmt.segment_size": 27}, "max positions")  # 27 + 2 * 3 > 32
add(F, "rmt.encoder_layout_on_decoder", {"rmt.layout": "encoder", "rmt.segment_size": DELETE, "rmt.input_size": 16, "rmt.cls_token_id": 1, "rmt.sep_token_id": 2,
                                         "rmt.pad_token_id": 0}, "bidirectional backbone")
add(F, "rmt.bidirectional_mask_big_memory", {"rmt.memory_mask": "bidirectional", "rmt.num_mem_tokens": 65536,
                                             "rmt.segment_size": 65536}, "max positions")
add(F, "rmt.segment_shorter_than_memory", {"rmt.num_mem_tokens": 5, "rmt.segment_size": 4}, "smaller than the memory")
F = "rmt_encoder"
shape_key(F, "rmt.input_size", bound=1 << 24)
add(F, "rmt.input_size.too_small_for_memory", {"rmt.input_size": 6}, "rmt.input_size")
add(F, "rmt.segment_size.inconsistent", {"rmt.segment_size": 11}, "rmt.segment_size")
add(F, "rmt.input_size.beyond_positions", {"rmt.input_size": 17, "rmt.segment_size": 11}, "max positions")
for key in ["cls_token_id", "sep_token_id", "pad_token_id"]:
    add(F, f"rmt.{key}.negative", {f"rmt.{key}": -1}, key)
    add(F, f"rmt.{key}.wraps_int32", {f"rmt.{key}": (1 << 32) + 1}, key)  # would wrap to a valid id 1
    add(F, f"rmt.{key}.outside_vocab", {f"rmt.{key}": 40}, "vocabulary")
    add(F, f"rmt.{key}.missing", {f"rmt.{key}": DELETE}, key)
add(F, "rmt.num_mem_tokens.beyond_vocab", {"rmt.num_mem_tokens": 41, "rmt.input_size": 86, "rmt.segment_size": 42}, "vocabulary")
add(F, "rmt.memory_mask.bidirectional", {"rmt.memory_mask": "bidirectional"}, "memory_mask")
add(F, "rmt.decoder_layout_on_encoder", {"rmt.layout": "decoder", "rmt.segment_size": 6}, "causal backbone")


def main():
    out = os.path.join(HERE, "cases")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    seen = set()
    rows = []
    for family, name, text, expect in cases:
        file = f"{family}.{name}.json"
        assert file not in seen, file
        seen.add(file)
        with open(os.path.join(out, file), "w", newline="") as f:
            f.write(text)
        rows.append(f"{family}\t{file}\t{expect}")
    with open(os.path.join(HERE, "cases.tsv"), "w") as f:
        f.write("# family\tfile\tsubstring of the Error (generated by make_hostile.py)\n")
        f.write("\n".join(rows) + "\n")
    print(f"{len(rows)} hostile configs in {out}")


if __name__ == "__main__":
    main()
