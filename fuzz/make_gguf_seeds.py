#!/usr/bin/env python3
"""Writes the seed corpus of the `gguf` fuzz target into fuzz/corpus/gguf/: small GGUF files
with a byte-level (gpt2) or SentencePiece (llama) vocabulary, a Llama config, a ChatML
template and one block of every tensor type we dequantize, plus truncated and corrupted
variants. Deterministic: rerunning it rewrites the same bytes."""

import os
import random
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "gguf")
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
# ggml type: (id, elements per block, bytes per block)
TYPES = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22),
         "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
         "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "BF16": (30, 1, 2)}
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def scalar(t, v):
    fmt = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q",
           F64: "d"}
    return string(v) if t == STRING else struct.pack("<" + fmt[t], v)


def value(t, v):
    if t == ARRAY:
        item_type, items = v
        body = b"".join(value(item_type, i) for i in items)
        return struct.pack("<IQ", item_type, len(items)) + body
    return scalar(t, v)


def gguf(kvs, tensors, version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims, type name)]; data is random."""
    rng = random.Random(len(tensors) * 7919 + len(kvs))
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    head += b"".join(string(k) + struct.pack("<I", t) + value(t, v) for k, t, v in kvs)
    data, infos = b"", b""
    for name, dims, tname in tensors:
        tid, block, size = TYPES[tname]
        n = 1
        for d in dims:
            n *= d
        infos += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", tid, len(data))
        data += bytes(rng.randrange(256) for _ in range(n // block * size))
        data += b"\0" * (-len(data) % alignment)
    out = head + infos
    out += b"\0" * (-len(out) % alignment)
    return out + data


def byte_level_char(b):
    # GPT-2's bytes_to_unicode.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def llama_config(vocab):
    a = "llama"
    return [("general.architecture", STRING, a), (a + ".context_length", U32, 64), (a + ".embedding_length", U32, 8),
            (a + ".block_count", U32, 1), (a + ".feed_forward_length", U32, 16),
            (a + ".attention.head_count", U32, 2), (a + ".attention.head_count_kv", U32, 1),
            (a + ".attention.layer_norm_rms_epsilon", F32, 1e-5), (a + ".rope.freq_base", F32, 10000.0),
            (a + ".vocab_size", U32, vocab)]


def gpt2_vocab():
    tokens = [byte_level_char(b) for b in range(256)] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ġt", "he",
                                                         "Ġthe", "in"]
    types = [1] * 256 + [3, 3, 3, 1, 1, 1, 1]
    merges = ["Ġ t", "h e", "Ġt he", "i n"]
    return tokens, [("tokenizer.ggml.model", STRING, "gpt2"), ("tokenizer.ggml.pre", STRING, "smollm"),
                    ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
                    ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
                    ("tokenizer.ggml.merges", ARRAY, (STRING, merges)),
                    ("tokenizer.ggml.bos_token_id", U32, 257), ("tokenizer.ggml.eos_token_id", U32, 258),
                    ("tokenizer.chat_template", STRING, CHATML)]


def spm_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["▁", "▁the", "▁a", "he", "llo",
                                                                               "▁hello", "<start_of_turn>"]
    types = [2, 3, 3] + [6] * 256 + [1] * 6 + [4]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -1.5, 0.0]
    return tokens, [("tokenizer.ggml.model", STRING, "llama"), ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
                    ("tokenizer.ggml.scores", ARRAY, (F32, scores)),
                    ("tokenizer.ggml.token_type", ARRAY, (I32, types)),
                    ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
                    ("tokenizer.ggml.add_bos_token", BOOL, True),
                    ("tokenizer.chat_template", STRING, "{{ bos_token }}{% for m in messages %}<start_of_turn>"
                     "{{ m.role }}\n{{ m.content | trim }}<end_of_turn>\n{% endfor %}")]


def every_type_tensors():
    return [(f"t.{name}", [TYPES[name][1] * (2 if TYPES[name][1] == 1 else 1)], name) for name in TYPES]


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {}
    tokens, gpt2 = gpt2_vocab()
    seeds["gpt2-llama-every-type.gguf"] = gguf(llama_config(len(tokens)) + gpt2, every_type_tensors())
    tokens, spm = spm_vocab()
    model = [("token_embd.weight", [8, len(tokens)], "F16"), ("output_norm.weight", [8], "F32"),
             ("blk.0.attn_q.weight", [32, 8], "Q8_0"), ("blk.0.ffn_down.weight", [256, 1], "Q4_K")]
    seeds["spm-llama-model.gguf"] = gguf(llama_config(len(tokens)) + spm, model)
    seeds["v2-aligned-64.gguf"] = gguf([("general.alignment", U32, 64), ("general.name", STRING, "tiny")],
                                       [("a", [4, 2], "F32"), ("b", [32], "Q4_0")], version=2, alignment=64)
    nested = [("general.architecture", STRING, "qwen2"), ("x.nested", ARRAY, (ARRAY, [(U8, [1, 2]), (U8, [])])),
              ("x.every", ARRAY, (I64, [-1, 0, 2**62])), ("x.f64", F64, 1e300), ("x.i8", I8, -5),
              ("x.u16", U16, 65535), ("x.i16", I16, -1), ("x.u64", U64, 2**64 - 1), ("x.empty", STRING, "")]
    seeds["every-value-type.gguf"] = gguf(nested, [])
    seeds["empty.gguf"] = gguf([], [])
    whole = seeds["gpt2-llama-every-type.gguf"]
    for cut in (3, 12, 24, 200, 2000, len(whole) - 40):
        seeds[f"truncated-at-{cut}.gguf"] = whole[:cut]
    bad_count = bytearray(seeds["v2-aligned-64.gguf"])
    bad_count[16:24] = struct.pack("<Q", 2**40)
    seeds["huge-kv-count.gguf"] = bytes(bad_count)
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {OUT}")


if __name__ == "__main__":
    main()
