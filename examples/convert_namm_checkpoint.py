#!/usr/bin/env python3
"""Convert an evo-memory (SakanaAI) NAMM checkpoint (ckpt.pt / iter_<n>.pt) into engram's small
NAMM weights file, which engram-namm --namm-weights and engram::namm::load_namm read.

Output (safetensors): theta F32 [4172] (the BAM parameters in the official flat layout), mu F32 [17]
and var F32 [17] (the frozen normalisation statistics), and the configuration in __metadata__
(n_up, gamma, max_freq, n_fft, hop, hidden).

    /usr/bin/python3 examples/convert_namm_checkpoint.py ckpt.pt namm.safetensors [--use mean|best]

--use mean (default, what the paper evaluates) takes evolution_state['mean'] with the
'stored_buffers_to_save.' statistics; --use best takes 'best_member' with the
'best_stored_buffers_to_save.' ones. Needs torch (Debian: apt install python3-torch); the checkpoint
is loaded on the CPU.
"""
import argparse
import json
import struct
import sys

THETA_SIZE = 4172
BINS = 17


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer: F32 tensors given as lists of floats."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, values in tensors:
        data = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--use", choices=["mean", "best"], default="mean")
    p.add_argument("--n-up", type=int, default=512, help="update interval the model was trained with (default 512)")
    p.add_argument("--gamma", type=float, default=0.99, help="EMA coefficient (default 0.99)")
    args = p.parse_args()

    import torch  # imported here so --help works without torch

    ckpt = torch.load(args.checkpoint, map_location="cpu")
    state = ckpt.get("evolution_state", ckpt)
    key = "mean" if args.use == "mean" else "best_member"
    prefix = "stored_buffers_to_save." if args.use == "mean" else "best_stored_buffers_to_save."
    if key not in state:
        sys.exit("error: %s has no evolution_state['%s'] (keys: %s)" % (args.checkpoint, key, ", ".join(sorted(state))[:300]))
    theta = state[key].detach().double().flatten()
    if theta.numel() != THETA_SIZE:
        sys.exit("error: %s has %d parameters, the BAM NAMM has %d" % (key, theta.numel(), THETA_SIZE))
    stats = {}
    for name in ("output_mean", "output_var"):
        full = prefix + "token_embedding_0_" + name
        if full not in state:
            sys.exit("error: missing normalisation buffer %s" % full)
        stats[name] = state[full].detach().double().flatten()
        if stats[name].numel() != BINS:
            sys.exit("error: %s has %d values, expected %d" % (full, stats[name].numel(), BINS))
    if not bool(torch.isfinite(theta).all()):
        sys.exit("error: %s contains non-finite values" % key)
    metadata = {
        "format": "engram-namm-1",
        "source": args.checkpoint,
        "use": args.use,
        "iteration": str(int(ckpt.get("iter_num", -1))) if isinstance(ckpt, dict) else "-1",
        "n_up": str(args.n_up),
        "gamma": repr(args.gamma),
        "max_freq": "50000",
        "n_fft": "32",
        "hop": "16",
        "hidden": "32",
    }
    write_safetensors(args.output, [("theta", theta.tolist()), ("mu", stats["output_mean"].tolist()),
                                    ("var", stats["output_var"].tolist())], metadata)
    print("wrote %s: theta[%d], mu[17], var[17] from %s (%s)" % (args.output, THETA_SIZE, args.checkpoint, key))


if __name__ == "__main__":
    main()
