#!/usr/bin/env python3
"""ctest of examples/convert_rmt_checkpoint.py: checkpoints in the official layouts (module names
and shapes of booydar/recurrent-memory-transformer, rmt.md 1.2 and 1.3; random tensors, saved with
torch.save as the official scripts do) are converted, loaded by engram (rmt_probe: rmt::load, then
a run) and compared with the independent PyTorch reference (tests/reference/rmt_ref.py) run on
the original tensors; broken layouts must be clear errors, from the converter or from engram.

    /usr/bin/python3 tests/rmt/test_convert_rmt.py --probe build/tests/rmt_probe --work /tmp/dir
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONVERTER = os.path.join(ROOT, "examples", "convert_rmt_checkpoint.py")
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "examples"))

try:
    import torch
except ImportError:
    sys.exit("test_convert_rmt: needs torch (Debian: apt install python3-torch; cmake/bootstrap.sh installs it)")
import convert_rmt_checkpoint as converter  # noqa: E402
import rmt_ref as ref  # noqa: E402

FAILURES = []


def expect(name, ok, detail=""):
    print("%s %s%s" % ("ok  " if ok else "FAIL", name, (": " + detail) if detail and not ok else ""))
    if not ok:
        FAILURES.append(name)


def rel_err(got, want):
    got, want = torch.tensor(got, dtype=torch.float64), want.to(torch.float64)
    if list(got.shape) != list(want.shape):
        return float("inf")
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def same_f32(got, want):
    """Printed floats (9 significant digits) read back to float32 are exactly `want` (float32)."""
    return torch.equal(torch.tensor(got, dtype=torch.float32), want.to(torch.float32))


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return {k: v["shape"] for k, v in h.items()}


# ----------------------------------------------------------------------------- official layouts

GPT2_CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": ref.GPT2["V"], "n_embd": ref.GPT2["d"],
               "n_layer": ref.GPT2["L"], "n_head": ref.GPT2["n_head"], "n_positions": ref.GPT2["n_pos"], "n_inner": None,
               "layer_norm_epsilon": ref.GPT2["eps"], "activation_function": "gelu_new"}
BERT_CONFIG = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": ref.BERT["V"], "hidden_size": ref.BERT["d"],
               "num_hidden_layers": ref.BERT["L"], "num_attention_heads": ref.BERT["n_head"], "intermediate_size": ref.BERT["f"],
               "hidden_act": "gelu", "max_position_embeddings": ref.BERT["n_pos"], "type_vocab_size": 2,
               "layer_norm_eps": ref.BERT["eps"], "pad_token_id": ref.PAD}


def official_decoder(seed, m=3):
    """RecurrentWrapper(MemoryCell(GPT2LMHeadModel, m)).state_dict(): the memory parameter, the HF
    model under memory_cell.model (its tied lm_head the same tensor as wte), and the causal-mask
    buffers older transformers versions save."""
    dr = ref.Draw(seed)
    P = ref.gpt2_params(dr)
    memory = dr.randn(m, ref.GPT2["d"]) * P["wte.weight"].std()  # create_memory: randn(m, d) * std(wte)
    sd = {"memory_cell.memory": memory}
    n = ref.GPT2["n_pos"]
    for k, v in P.items():
        sd["memory_cell.model.transformer." + k] = v
        if k.endswith("ln_1.weight"):  # one per block
            block = k[:-len("ln_1.weight")]
            sd["memory_cell.model.transformer." + block + "attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
            sd["memory_cell.model.transformer." + block + "attn.masked_bias"] = torch.tensor(-1e4)
    sd["memory_cell.model.lm_head.weight"] = sd["memory_cell.model.transformer.wte.weight"]
    return sd, P, memory


def official_encoder(seed):
    """RMTEncoderForSequenceClassification(BertForSequenceClassification).state_dict(): the special
    token buffers, mem_token_ids = arange(V, V + m) over the resized word embeddings, the HF model
    under model. (with its position_ids buffer) and the model.embeddings alias of the word
    embeddings that extend_word_embeddings registers."""
    dr = ref.Draw(seed)
    P = ref.bert_params(dr)  # word embeddings already [V + m, d]
    V, m = ref.BERT["V"], ref.BERT["m"]
    sd = {"cls_token": torch.tensor([ref.CLS]), "sep_token": torch.tensor([ref.SEP]), "mem_token_ids": torch.arange(V, V + m)}
    for k, v in P.items():
        sd["model." + k] = v
    sd["model.bert.embeddings.position_ids"] = torch.arange(ref.BERT["n_pos"]).view(1, -1)
    sd["model.embeddings.weight"] = sd["model.bert.embeddings.word_embeddings.weight"]
    return sd, P


# ----------------------------------------------------------------------------- running

def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def convert_in_process(argv):
    """Runs the converter's main() in this process (no torch import per run): (exit message or None, stdout)."""
    old = sys.argv
    sys.argv = ["convert_rmt_checkpoint.py"] + argv
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            converter.main()
        return None, out.getvalue()
    except SystemExit as e:
        return str(e.code), out.getvalue()
    finally:
        sys.argv = old


def probe(probe_exe, directory, tokens):
    r = subprocess.run([probe_exe, directory] + [str(t) for t in tokens], capture_output=True, text=True, timeout=120)
    return r.returncode, (json.loads(r.stdout) if r.returncode == 0 else None), r.stderr


def test_decoder(work, probe_exe):
    sd, P, memory = official_decoder(20240611)
    ckpt = os.path.join(work, "decoder_ckpt")
    os.makedirs(ckpt, exist_ok=True)
    torch.save(sd, os.path.join(ckpt, "pytorch_model.bin"))  # accelerate's save_model without safetensors
    cfg = os.path.join(work, "gpt2_config.json")
    write_json(cfg, GPT2_CONFIG)
    out = os.path.join(work, "decoder")
    # The real command line once, as a user runs it.
    r = subprocess.run([sys.executable, CONVERTER, ckpt, out, "--config", cfg, "--segment-size", "6"], capture_output=True, text=True)
    expect("decoder: converter exits 0", r.returncode == 0, r.stderr)
    names = read_header(os.path.join(out, "model.safetensors"))
    want = {k: list(v.shape) for k, v in P.items()}
    want["memory"] = [3, ref.GPT2["d"]]
    expect("decoder: tensors are GPT2Model's names + memory, shapes kept (lm_head and mask buffers dropped)", names == want,
           "got %s" % sorted(set(names) ^ set(want)))
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    expect("decoder: config.json rmt object", config.get("rmt") == {"layout": "decoder", "num_mem_tokens": 3, "segment_size": 6,
                                                                    "memory_mask": "causal", "segment_alignment": "left"}, str(config.get("rmt")))
    expect("decoder: backbone config kept", all(config[k] == v for k, v in GPT2_CONFIG.items() if v is not None), str(config))

    tokens = torch.randint(0, ref.GPT2["V"], (15,), generator=torch.Generator().manual_seed(3)).tolist()
    rc, got, err = probe(probe_exe, out, tokens)
    expect("decoder: engram loads the converted checkpoint", rc == 0, err)
    if rc != 0:
        return
    expect("decoder: engram's config (m 3, s 6, V 37, d 16, 2 layers)",
           (got["layout"], got["num_mem_tokens"], got["segment_size"], got["vocab_size"], got["d_model"], got["n_layers"]) ==
           ("decoder", 3, 6, ref.GPT2["V"], ref.GPT2["d"], ref.GPT2["L"]))
    expect("decoder: engram's memory parameter is [3, 16]", got["parameters"].get("memory") == [3, ref.GPT2["d"]])
    expect("decoder: initial memory == memory_cell.memory exactly", same_f32(got["initial_memory"], memory))
    P64 = {k: v.to(torch.float64) for k, v in P.items()}
    _, logits, final = ref.decoder_run(P64, torch.tensor(tokens), 6, memory.to(torch.float64), "causal")
    e = rel_err(got["outputs"], logits)
    expect("decoder: logits of 15 tokens (segments 6, 6, 3) == reference on the official tensors (rel %.1e)" % e, e < 2e-5)
    e = rel_err(got["final_memory"], final)
    expect("decoder: final memory == reference (rel %.1e)" % e, e < 2e-5)

    # --tokenizer puts the tokenizer where the text programs look for it.
    fixture = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "tiny_metaspace_bpe.json")
    with_tok = os.path.join(work, "decoder_tokenizer")
    msg, _ = convert_in_process([ckpt, with_tok, "--config", cfg, "--segment-size", "6", "--tokenizer", fixture, "--dtype", "bf16"])
    with open(fixture, "rb") as a, open(os.path.join(with_tok, "tokenizer.json"), "rb") as b:
        expect("decoder: --tokenizer FILE is copied as tokenizer.json", msg is None and a.read() == b.read(), str(msg))
    rc, got_bf16, err = probe(probe_exe, with_tok, tokens)
    e = rel_err(got_bf16["outputs"], logits) if rc == 0 else float("inf")
    expect("decoder: --dtype bf16 loads and stays close to the reference (rel %.1e)" % e, e < 5e-2, err)

    # Layouts the converter must refuse, each with a message naming the problem.
    def refused(name, state, phrase, extra=(), config=None):
        path = os.path.join(work, "bad.bin")
        torch.save(state, path)
        c = cfg
        if config is not None:
            c = os.path.join(work, "bad_config.json")
            write_json(c, config)
        msg, _ = convert_in_process([path, os.path.join(work, "bad_out"), "--config", c] + list(extra))
        expect("decoder refused: " + name, msg is not None and phrase in msg, str(msg))

    plain = {k[len("memory_cell.model."):]: v for k, v in sd.items() if k.startswith("memory_cell.model.")}
    refused("a plain GPT-2 state dict", plain, "not an official RMT checkpoint", ["--segment-size", "6"])
    untied = dict(sd)
    untied["memory_cell.model.lm_head.weight"] = sd["memory_cell.model.lm_head.weight"] + 1
    refused("an untied LM head", untied, "ties the LM head", ["--segment-size", "6"])
    variant = dict(sd)
    variant["memory_aggregator.norm1.weight"] = torch.ones(ref.GPT2["d"])
    refused("tensors of another variant", variant, "memory_aggregator.norm1.weight", ["--segment-size", "6"])
    refused("no --segment-size", sd, "--segment-size")
    refused("segments longer than the positions", sd, "must fit", ["--segment-size", "27"])
    refused("a config that disagrees with the tensors", sd, "n_layer is 3", ["--segment-size", "6"], dict(GPT2_CONFIG, n_layer=3))
    wide = dict(sd)
    wide["memory_cell.memory"] = torch.zeros(3, ref.GPT2["d"] + 1)
    refused("memory wider than n_embd", wide, "width 17", ["--segment-size", "6"])
    refused("a file that is no state dict", {"step": 3}, "does not hold a state dict", ["--segment-size", "6"])

    # A tensor of the wrong shape passes the converter's structural checks; engram's loader names it.
    broken = dict(sd)
    broken["memory_cell.model.transformer.h.1.mlp.c_fc.weight"] = torch.zeros(ref.GPT2["d"], 60)
    torch.save(broken, os.path.join(work, "broken.bin"))
    msg, _ = convert_in_process([os.path.join(work, "broken.bin"), os.path.join(work, "broken"), "--config", cfg, "--segment-size", "6"])
    expect("decoder: a mis-shaped tensor converts", msg is None, str(msg))
    rc, _, err = probe(probe_exe, os.path.join(work, "broken"), tokens)
    expect("decoder: engram names the mis-shaped tensor", rc == 1 and "h.1.mlp.c_fc.weight" in err, err)


def test_encoder(work, probe_exe):
    sd, P = official_encoder(20240612)
    ckpt = os.path.join(work, "model_best.pth")
    # lm_experiments_tools' trainer: the state dict inside a training checkpoint.
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {}, "iteration": 100}, ckpt)
    cfg = os.path.join(work, "bert_config.json")
    write_json(cfg, BERT_CONFIG)
    out = os.path.join(work, "encoder")
    input_size = ref.BERT["input_size"]
    msg, _ = convert_in_process([ckpt, out, "--config", cfg, "--input-size", str(input_size), "--dtype", "f32"])
    expect("encoder: converter succeeds", msg is None, str(msg))
    names = read_header(os.path.join(out, "model.safetensors"))
    want = {k: list(v.shape) for k, v in P.items()}
    expect("encoder: tensors are BertForSequenceClassification's names (alias and buffers dropped)", names == want,
           "got %s" % sorted(set(names) ^ set(want)))
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    expect("encoder: config.json rmt object", config.get("rmt") == {
        "layout": "encoder", "num_mem_tokens": 3, "input_size": 16, "segment_size": 10, "cls_token_id": ref.CLS,
        "sep_token_id": ref.SEP, "pad_token_id": ref.PAD, "memory_mask": "causal", "segment_alignment": "right"}, str(config.get("rmt")))
    expect("encoder: vocab_size counts the memory rows, num_labels the classifier's",
           config["vocab_size"] == ref.BERT["V"] + 3 and config["num_labels"] == ref.BERT["labels"], str(config))

    tokens = torch.randint(3, ref.BERT["V"], (23,), generator=torch.Generator().manual_seed(4)).tolist()
    rc, got, err = probe(probe_exe, out, tokens)
    expect("encoder: engram loads the converted checkpoint", rc == 0, err)
    if rc != 0:
        return
    expect("encoder: engram's config (m 3, s 10, V 40)", (got["layout"], got["num_mem_tokens"], got["segment_size"], got["vocab_size"]) ==
           ("encoder", 3, 10, ref.BERT["V"] + 3))
    expect("encoder: engram has the classifier [6, 16]", got["parameters"].get("classifier.weight") == [ref.BERT["labels"], ref.BERT["d"]])
    words = P["bert.embeddings.word_embeddings.weight"]
    expect("encoder: initial memory == the last 3 word-embedding rows exactly", same_f32(got["initial_memory"], words[-3:]))
    P64 = {k: v.to(torch.float64) for k, v in P.items()}
    segs = ref.encoder_run(P64, torch.tensor(tokens), 3, input_size)
    e = rel_err(got["outputs"], segs[-1]["logits"][None])
    expect("encoder: class logits of 23 tokens (segments 3, 10, 10) == reference (rel %.1e)" % e, e < 2e-5)
    e = rel_err(got["final_memory"], segs[-1]["mem_out"])
    expect("encoder: final memory == reference (rel %.1e)" % e, e < 2e-5)

    def refused(name, state, phrase, extra=()):
        path = os.path.join(work, "bad.pth")
        torch.save(state, path)
        msg, _ = convert_in_process([path, os.path.join(work, "bad_out"), "--config", cfg] + list(extra))
        expect("encoder refused: " + name, msg is not None and phrase in msg, str(msg))

    moved = dict(sd)
    moved["mem_token_ids"] = torch.arange(0, 3)
    refused("memory ids that are not the last rows", moved, "last 3 rows", ["--input-size", "16"])
    no_sep = {k: v for k, v in sd.items() if k != "sep_token"}
    refused("no sep_token buffer", no_sep, "missing tensor sep_token", ["--input-size", "16"])
    alias = dict(sd)
    alias["model.embeddings.weight"] = sd["model.embeddings.weight"] * 2
    refused("an embeddings alias that differs", alias, "they are one module", ["--input-size", "16"])
    refused("an input larger than the positions", sd, "--input-size 512")  # the default, for bert-base's 512 positions
    headless = {k: v for k, v in sd.items() if not k.startswith("model.classifier.")}
    refused("no classification head", headless, "classifier.weight", ["--input-size", "16"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe", required=True, help="the rmt_probe executable")
    p.add_argument("--work", required=True, help="scratch directory (emptied)")
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    test_decoder(args.work, args.probe)
    test_encoder(args.work, args.probe)
    if FAILURES:
        print("%d failed: %s" % (len(FAILURES), "; ".join(FAILURES)))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
