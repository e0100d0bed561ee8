#!/usr/bin/env python3
"""Convert an official RMT checkpoint (booydar/recurrent-memory-transformer) into the directory
engram::rmt::load reads: config.json (the backbone's Hugging Face config with an "rmt" object) and
model.safetensors (the backbone's Hugging Face tensor names, plus "memory" for the decoder layout).

    /usr/bin/python3 examples/convert_rmt_checkpoint.py CHECKPOINT OUT_DIR --config BACKBONE_CONFIG.json
        [--segment-size S] [--input-size 512] [--tokenizer PATH] [--dtype f32|bf16|f16]

CHECKPOINT is a state dict saved by the official scripts: a file written by torch.save (a bare
state dict, or a dict holding it under "model_state_dict", as lm_experiments_tools' trainer
writes model_best.pth), or a directory holding pytorch_model.bin or model.safetensors (accelerate's
save_model). A "module." prefix (DDP) is removed. The layout is recognised by its tensors:

decoder (babilong-release modeling_rmt/language_modeling.py: RecurrentWrapper(MemoryCell(GPT2LMHeadModel)))
    memory_cell.memory [m, d]                   -> memory [m, d]
    memory_cell.model.transformer.<name>        -> <name> (wte, wpe, h.<i>.*, ln_f: GPT2Model names)
    memory_cell.model.lm_head.weight            -> dropped; must equal wte (GPT-2 ties them)
    memory_cell.model.transformer.h.<i>.attn.bias / .masked_bias   -> dropped (causal-mask buffers)
  --segment-size is required (the content tokens per segment, a run argument of the scripts:
  BABILong uses 512); segments are left-aligned, the memory mask is GPT-2's causal one (rmt.md 1.3).

encoder (scaling-report modeling_rmt/base.py + sequence_classification.py:
RMTEncoderForSequenceClassification(BertForSequenceClassification))
    model.bert.<name>, model.classifier.<name>  -> bert.<name>, classifier.<name>
    model.bert.embeddings.word_embeddings.weight [V + m, d]: the memory is its last m rows
    mem_token_ids [m]                           -> must be V .. V+m-1; num_mem_tokens = m
    cls_token [1], sep_token [1]                -> rmt.cls_token_id, rmt.sep_token_id
    model.embeddings.weight                     -> dropped; the alias of the word embeddings that
                                                   extend_word_embeddings registers (must be equal)
    *.position_ids, *.token_type_ids            -> dropped (index buffers)
  --input-size (default 512, every scaling-report script) gives segment_size = input_size - m - 3;
  segments are right-aligned (rmt.md 1.2). The pad id is the backbone config's pad_token_id.

--config is the backbone's config.json (e.g. gpt2's or bert-base-cased's): n_head / num_attention_heads
cannot be read off the tensors. Every size the tensors imply is checked against it; the encoder's
vocab_size becomes V + m and num_labels the classifier's rows. --tokenizer copies tokenizer.json,
tokenizer.model, vocab.txt, tokenizer_config.json and special_tokens_map.json from a directory
(or one such file) into OUT_DIR, so the text programs find them. A tensor the layout does not
name (another variant: a memory aggregator, ARMT's associative layers, ...) is an error listing
them. Needs torch (Debian: apt install python3-torch); everything runs on the CPU.
"""
import argparse
import json
import os
import re
import shutil
import struct
import sys

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def die(message):
    sys.exit("convert_rmt_checkpoint: error: " + message)


# ----------------------------------------------------------------------------- reading

def read_safetensors(path, torch):
    """Minimal safetensors reader (the format of accelerate's model.safetensors)."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        die("%s: truncated safetensors file" % path)
    n = struct.unpack("<Q", blob[:8])[0]
    try:
        header = json.loads(blob[8:8 + n])
    except ValueError as e:
        die("%s: bad safetensors header: %s" % (path, e))
    data = bytearray(blob[8 + n:])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            die("%s: tensor %s has dtype %s (supported: %s)" % (path, name, info["dtype"], ", ".join(dtypes)))
        a, b = info["data_offsets"]
        t = torch.frombuffer(data[a:b], dtype=dtypes[info["dtype"]]) if b > a else torch.empty(0, dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def load_state_dict(path, torch):
    if os.path.isdir(path):
        for name in ("pytorch_model.bin", "model.safetensors", "model_best.pth", "model.pth"):
            if os.path.isfile(os.path.join(path, name)):
                return load_state_dict(os.path.join(path, name), torch)
        die("%s has no pytorch_model.bin, model.safetensors or model_best.pth" % path)
    if not os.path.isfile(path):
        die("%s is not a file or directory" % path)
    if path.endswith(".safetensors"):
        sd = read_safetensors(path, torch)
    else:
        try:
            sd = torch.load(path, map_location="cpu")
        except Exception as e:  # pickle errors, truncated files, ...
            die("%s: torch.load failed: %s" % (path, e))
    if isinstance(sd, dict):
        for key in ("model_state_dict", "state_dict", "model"):  # trainer checkpoints wrap the state dict
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        die("%s does not hold a state dict (a name -> tensor mapping)" % path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# ----------------------------------------------------------------------------- checks

def require(sd, name, shape=None, where=""):
    if name not in sd:
        die("missing tensor %s%s" % (name, where))
    if shape is not None and list(sd[name].shape) != list(shape):
        die("tensor %s has shape %s, expected %s%s" % (name, list(sd[name].shape), list(shape), where))
    return sd[name]


def check_config(cfg, key, value, source):
    """The backbone config's `key` must be `value` (what the tensors imply); a missing key is set."""
    if cfg.get(key) is not None and cfg[key] != value:
        die("%s: %s is %r but the checkpoint's tensors have %r" % (source, key, cfg[key], value))
    cfg[key] = value


def layer_count(names, pattern):
    layers = {int(m.group(1)) for m in (re.match(pattern, n) for n in names) if m}
    if not layers:
        die("no transformer layers found (expected tensors matching %s)" % pattern)
    n = max(layers) + 1
    if layers != set(range(n)):
        die("layers %s are missing" % sorted(set(range(n)) - layers))
    return n


def reject_unexpected(unexpected, layout):
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:12]) + (" ..." if len(unexpected) > 12 else "")
        die("%d tensors that the official %s layout does not have (another RMT variant?): %s" % (len(unexpected), layout, shown))


# ----------------------------------------------------------------------------- layouts

def convert_decoder(sd, cfg, args, torch):
    src = args.config
    if cfg.get("model_type") != "gpt2":
        die("%s: model_type is %r; the decoder RMT checkpoints are over GPT-2 (model_type gpt2)" % (src, cfg.get("model_type")))
    if args.segment_size is None:
        die("the decoder layout needs --segment-size (content tokens per segment; BABILong's scripts use 512)")
    prefix = "memory_cell.model.transformer."
    memory = require(sd, "memory_cell.memory")
    if memory.dim() != 2:
        die("memory_cell.memory has shape %s, expected [num_mem_tokens, n_embd]" % list(memory.shape))
    out, unexpected = {}, []
    for k, v in sd.items():
        if k == "memory_cell.memory" or k == "memory_cell.model.lm_head.weight":
            continue
        if k.startswith(prefix):
            name = k[len(prefix):]
            if re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", name):
                continue  # GPT-2's causal-mask buffers, saved by older transformers
            out[name] = v
        else:
            unexpected.append(k)
    reject_unexpected(unexpected, "decoder (MemoryCell over GPT2LMHeadModel)")
    wte = require(out, "wte.weight", where=" (as %swte.weight)" % prefix)
    V, d = wte.shape
    n_pos = require(out, "wpe.weight", where=" (as %swpe.weight)" % prefix).shape[0]
    L = layer_count(out, r"h\.(\d+)\.")
    f = require(out, "h.0.mlp.c_fc.weight").shape[1]
    m = memory.shape[0]
    if memory.shape[1] != d:
        die("memory_cell.memory has width %d, the backbone's n_embd is %d" % (memory.shape[1], d))
    if "memory_cell.model.lm_head.weight" in sd:
        head = sd["memory_cell.model.lm_head.weight"]
        if list(head.shape) != [V, d] or not torch.equal(head, wte):
            die("memory_cell.model.lm_head.weight differs from the token embeddings: engram's GPT-2 ties the LM head to wte")
    check_config(cfg, "vocab_size", int(V), src)
    check_config(cfg, "n_embd", int(d), src)
    check_config(cfg, "n_layer", int(L), src)
    for key in ("n_positions", "n_ctx"):
        if cfg.get(key) is not None and cfg[key] != n_pos:
            die("%s: %s is %r but wpe has %d positions" % (src, key, cfg[key], n_pos))
    cfg["n_positions"] = int(n_pos)
    if (cfg.get("n_inner") or 4 * d) != f:  # n_inner null means 4 * n_embd
        die("%s: n_inner is %r but the MLP has %d hidden units" % (src, cfg.get("n_inner"), f))
    if args.segment_size < 1 or args.segment_size + 2 * m > n_pos:
        die("--segment-size %d: a segment with its %d read and %d write memory tokens must fit the %d positions" %
            (args.segment_size, m, m, n_pos))
    cfg["tie_word_embeddings"] = True
    out["memory"] = memory
    rmt = {"layout": "decoder", "num_mem_tokens": int(m), "segment_size": int(args.segment_size),
           "memory_mask": "causal", "segment_alignment": "left"}
    return out, rmt, "decoder: GPT-2 d=%d x %d layers, vocabulary %d, %d memory tokens, segments of %d" % (d, L, V, m, args.segment_size)


def convert_encoder(sd, cfg, args, torch):
    src = args.config
    if cfg.get("model_type") != "bert":
        die("%s: model_type is %r; the encoder RMT checkpoints are over BERT (model_type bert)" % (src, cfg.get("model_type")))
    ids = require(sd, "mem_token_ids")
    words = require(sd, "model.bert.embeddings.word_embeddings.weight")
    rows, d = words.shape
    m = ids.numel()
    if ids.dim() != 1 or ids.tolist() != list(range(rows - m, rows)):
        die("mem_token_ids are %s, expected the last %d rows of the word embeddings (%d..%d): engram reads the memory there" %
            (ids.tolist()[:8], m, rows - m, rows - 1))
    specials = {}
    for name in ("cls_token", "sep_token"):
        t = require(sd, name, where=" (the buffer extract_special_tokens registers)")
        if t.numel() != 1:
            die("%s has %d values, expected 1" % (name, t.numel()))
        specials[name] = int(t.item())
    out, unexpected = {}, []
    for k, v in sd.items():
        if k in ("mem_token_ids", "cls_token", "sep_token", "eos_token", "bos_token"):
            continue
        if k == "model.embeddings.weight":  # the alias extend_word_embeddings registers
            if not torch.equal(v, words):
                die("model.embeddings.weight differs from model.bert.embeddings.word_embeddings.weight (they are one module)")
            continue
        if re.search(r"\.(position_ids|token_type_ids)$", k):
            continue
        if k.startswith("model.bert.") or k.startswith("model.classifier."):
            out[k[len("model."):]] = v
        else:
            unexpected.append(k)
    reject_unexpected(unexpected, "encoder (RMTEncoderForSequenceClassification over BertForSequenceClassification)")
    L = layer_count(out, r"bert\.encoder\.layer\.(\d+)\.")
    n_pos = require(out, "bert.embeddings.position_embeddings.weight").shape[0]
    types = require(out, "bert.embeddings.token_type_embeddings.weight").shape[0]
    f = require(out, "bert.encoder.layer.0.intermediate.dense.weight").shape[0]
    labels = require(out, "classifier.weight", where=" (the sequence classification head)").shape[0]
    base_vocab = cfg.get("vocab_size")
    if base_vocab not in (None, rows, rows - m):
        die("%s: vocab_size is %r; the word embeddings have %d rows (%d tokens + %d memory rows)" % (src, base_vocab, rows, rows - m, m))
    cfg["vocab_size"] = int(rows)  # the memory rows are part of the vocabulary, as rmt::load reads them
    check_config(cfg, "hidden_size", int(d), src)
    check_config(cfg, "num_hidden_layers", int(L), src)
    check_config(cfg, "max_position_embeddings", int(n_pos), src)
    check_config(cfg, "type_vocab_size", int(types), src)
    check_config(cfg, "intermediate_size", int(f), src)
    cfg["num_labels"] = int(labels)
    cfg["architectures"] = ["BertForSequenceClassification"]
    cfg.pop("id2label", None), cfg.pop("label2id", None)  # may name a different number of labels
    input_size = args.input_size
    if input_size < m + 4 or input_size > n_pos:
        die("--input-size %d: needs [CLS] %d memory tokens [SEP] >= 1 token [SEP] and at most the %d positions" % (input_size, m, n_pos))
    pad = int(cfg.get("pad_token_id") if cfg.get("pad_token_id") is not None else 0)
    rmt = {"layout": "encoder", "num_mem_tokens": int(m), "input_size": int(input_size), "segment_size": int(input_size - m - 3),
           "cls_token_id": specials["cls_token"], "sep_token_id": specials["sep_token"], "pad_token_id": pad,
           "memory_mask": "causal", "segment_alignment": "right"}
    return out, rmt, ("encoder: BERT d=%d x %d layers, vocabulary %d + %d memory rows, %d labels, input %d (segments of %d)" %
                      (d, L, rows - m, m, labels, input_size, input_size - m - 3))


# ----------------------------------------------------------------------------- writing

def write_safetensors(path, tensors, dtype, torch):
    names = {"f32": ("F32", torch.float32), "bf16": ("BF16", torch.bfloat16), "f16": ("F16", torch.float16)}
    tag, tdtype = names[dtype]
    header, blobs, offset = {"__metadata__": {"format": "pt", "source": "convert_rmt_checkpoint.py"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32)
        if not bool(torch.isfinite(t).all()):
            die("tensor %s holds NaN or infinity" % name)
        t = t.to(tdtype).contiguous()
        data = (t.view(torch.int16) if tdtype != torch.float32 else t).numpy().tobytes()
        header[name] = {"dtype": tag, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def copy_tokenizer(path, out_dir):
    """Copies the tokenizer files of directory `path`, or the file `path` under the name its type
    has in a model directory (*.json: tokenizer.json, *.model: tokenizer.model, *.txt: vocab.txt)."""
    if os.path.isfile(path):
        kinds = {".json": "tokenizer.json", ".model": "tokenizer.model", ".txt": "vocab.txt"}
        ext = os.path.splitext(path)[1]
        if ext not in kinds:
            die("--tokenizer %s: expected a directory, or a .json, .model or .txt tokenizer file" % path)
        pairs = [(path, kinds[ext])]
    else:
        pairs = [(os.path.join(path, n), n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))]
    if not pairs:
        die("--tokenizer %s: no %s" % (path, ", ".join(TOKENIZER_FILES)))
    for src, name in pairs:
        shutil.copyfile(src, os.path.join(out_dir, name))
    return [name for _, name in pairs]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("output", help="directory to write (created if needed)")
    p.add_argument("--config", required=True, help="the backbone's Hugging Face config.json")
    p.add_argument("--segment-size", type=int, help="decoder: content tokens per segment (required)")
    p.add_argument("--input-size", type=int, default=512, help="encoder: tokens per segment with [CLS], memory and [SEP]s (default 512)")
    p.add_argument("--tokenizer", help="a tokenizer directory or file to copy beside the weights")
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32", help="dtype of the written tensors (default f32)")
    args = p.parse_args()

    try:
        import torch  # imported here so --help works without torch
    except ImportError:
        die("needs torch (Debian: apt install python3-torch, then run it with /usr/bin/python3)")

    try:
        with open(args.config) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        die("--config %s: %s" % (args.config, e))
    if not isinstance(cfg, dict):
        die("--config %s: expected a JSON object" % args.config)
    cfg.pop("rmt", None)
    sd = load_state_dict(args.checkpoint, torch)
    if "memory_cell.memory" in sd:
        tensors, rmt, what = convert_decoder(sd, cfg, args, torch)
    elif "mem_token_ids" in sd:
        tensors, rmt, what = convert_encoder(sd, cfg, args, torch)
    else:
        die("%s is not an official RMT checkpoint: no memory_cell.memory (decoder: MemoryCell/RecurrentWrapper) and no "
            "mem_token_ids (encoder: RMTEncoderForSequenceClassification); first tensors: %s" %
            (args.checkpoint, ", ".join(sorted(sd)[:6])))
    cfg["rmt"] = rmt
    os.makedirs(args.output, exist_ok=True)
    write_safetensors(os.path.join(args.output, "model.safetensors"), tensors, args.dtype, torch)
    with open(os.path.join(args.output, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    copied = copy_tokenizer(args.tokenizer, args.output) if args.tokenizer else []
    print("wrote %s: %s; %d tensors (%s)%s" % (args.output, what, len(tensors), args.dtype,
                                              "; tokenizer: " + ", ".join(copied) if copied else ""))


if __name__ == "__main__":
    main()
