#!/usr/bin/env python3
"""Tokenizer fixtures for deepshard, computed with Hugging Face `tokenizers` / `transformers`.

Writes, under tests/data/tokenizers/:
  corpus.json                  the test corpus (tools/reference/tokenizer_corpus.py)
  <name>/tokenizer.json        synthetic tokenizers built here with the `tokenizers` library
  <name>/tokenizer_config.json (synth-sentencepiece only)
  <name>/fixtures.json         reference ids and texts for every corpus entry, plus decodes
                               of random id sequences
  oniguruma_classes.json       code points matched by \\w, \\s, \\p{L}, ... in Oniguruma, the
                               regex engine of `tokenizers` (checks deepshard's PCRE2 translation)

Tokenizers:
  deepseek-v3          the real DeepSeek-V3/R1 files (copied there by hand, see PROVENANCE.md),
                       reference: transformers.AutoTokenizer (applies tokenizer_config.json)
  synth-bytelevel      NFKC/Replace/Lowercase/Strip normalizers, Digits(individual) + Split +
                       ByteLevel(add_prefix_space) pre-tokenizers, TemplateProcessing, added
                       tokens with lstrip/rstrip/single_word/normalized; reference: tokenizers
  synth-sentencepiece  NFC/Prepend/Replace normalizers, no pre-tokenizer (long words), BPE with
                       byte_fallback, decoders Replace/ByteFallback/Fuse/Strip, and a
                       tokenizer_config.json (LlamaTokenizerFast, add_bos/add_eos, string and
                       object special tokens, a pad token outside the vocabulary,
                       additional_special_tokens, added_tokens_decoder, clean_up_tokenization_spaces,
                       list-form chat_template); reference: transformers.AutoTokenizer
  synth-splits         NFD/StripAccents/Replace normalizers, Split with every behaviour, invert,
                       String patterns and Oniguruma-specific regex syntax (\\s \\w \\d \\h (?i)
                       lookahead, empty matches), Digits; BPE with unk_token + fuse_unk,
                       continuing_subword_prefix, end_of_word_suffix, ignore_merges; decoders
                       Replace/Strip; Sequence[ByteLevel, RobertaProcessing]; reference: tokenizers

Inputs that are not valid UTF-8 (corpus entries with "hex") are given to the reference as
bytes.decode("utf-8", errors="replace"), which is what deepshard does with raw bytes.

Usage (from the repository root, with tools/reference/requirements.txt installed):
  python tools/reference/make_tokenizer_fixtures.py            # regenerate everything
  python tools/reference/make_tokenizer_fixtures.py --check    # compare, write nothing
  python tools/reference/make_tokenizer_fixtures.py --rebuild-synthetic   # also retrain synth-*
"""

import argparse
import json
import os
import random
import sys
import tempfile

import tokenizers
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_corpus  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "tokenizers")
DECODE_CASES = 80


def corpus_texts(entries):
    """The str the reference sees for each entry."""
    out = []
    for e in entries:
        if "bytes" in e:
            out.append(e["bytes"].decode("utf-8", errors="replace"))
        else:
            out.append(e["text"])
    return out


def training_iterator(entries):
    texts = corpus_texts(entries)
    for _ in range(3):
        yield from texts


# ------------------------------------------------------------------------------------------
# Synthetic tokenizers


def build_synth_bytelevel(entries):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Replace("``", '"'),
        normalizers.Replace(Regex(r"\s{2,}"), " "),
        normalizers.Lowercase(),
        normalizers.Strip(left=True, right=True),
    ])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(Regex(r"\p{Han}+"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["[CLS]", "[SEP]", "[PAD]"])
    tok.train_from_iterator(training_iterator(entries), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.add_special_tokens([
        AddedToken("[MASK]", lstrip=True, rstrip=False, normalized=False, special=True),
        AddedToken("<sep>", lstrip=False, rstrip=True, normalized=False, special=True),
    ])
    tok.add_tokens([
        AddedToken("HELLO", single_word=True, normalized=True),
        AddedToken("<special>", lstrip=True, rstrip=True, normalized=False),
        AddedToken("world", normalized=True),
        AddedToken("😀", normalized=False),
    ])
    return tok, None


def build_synth_sentencepiece(entries):
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(),
        normalizers.Prepend("▁"),
        normalizers.Replace(" ", "▁"),
    ])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    trainer = trainers.BpeTrainer(vocab_size=1800, min_frequency=2, limit_alphabet=120, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    # Train on pieces cut at "▁" so that merges stay inside words.
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(training_iterator(entries), trainer=trainer)
    tok.pre_tokenizer = None
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    # Add the 256 byte-fallback tokens to the model vocabulary.
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for b in range(256):
        name = "<0x%02X>" % b
        if name not in vocab:
            vocab[name] = next_id
            next_id += 1
    tok = Tokenizer.from_str(json.dumps(state))
    tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
    config = {
        "tokenizer_class": "LlamaTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": True,
        "bos_token": "<s>",
        "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False},
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": ["<extra_id>"],
        # One new special token, and one existing token whose flags change (lstrip/rstrip).
        "added_tokens_decoder": {
            "2056": {"content": "<think>", "lstrip": True, "normalized": False, "rstrip": True,
                     "single_word": False, "special": False},
            "2058": {"content": "<|im_start|>", "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True},
        },
        "clean_up_tokenization_spaces": True,
        "legacy": True,
        "model_max_length": 4096,
        "chat_template": [
            {"name": "default", "template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
            {"name": "tool_use", "template": "{{ tools | length }}"},
        ],
    }
    return tok, config


def build_synth_splits(entries):
    tok = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=True, continuing_subword_prefix="##",
                               end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFD(),
        normalizers.StripAccents(),
        normalizers.Replace(Regex("[\u2018\u2019]"), "'"),
    ])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), "removed"),
        pre_tokenizers.Split("-", "merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[,.;:!?]+"), "merged_with_next"),
        pre_tokenizers.Split(Regex(r"\d"), "contiguous"),
        pre_tokenizers.Split(Regex(r"\h+"), "isolated", invert=True),
        pre_tokenizers.Split(Regex(r"(?i)th|(?=[QZ])|zz+"), "isolated"),
        pre_tokenizers.Split(Regex(r"\w\W"), "merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[^\w\s]"), "isolated"),
        pre_tokenizers.Digits(individual_digits=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=2, limit_alphabet=100, show_progress=False,
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>",
                                  special_tokens=["[UNK]", "<s>", "</s>"])
    tok.train_from_iterator(training_iterator(entries), trainer=trainer)
    state = json.loads(tok.to_str())
    state["model"]["unk_token"] = "[UNK]"
    state["model"]["fuse_unk"] = True
    state["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(state))
    tok.decoder = decoders.Sequence([
        decoders.Replace("##", ""),
        decoders.Replace(Regex("</w>"), " "),
        decoders.Strip(" ", 0, 1),
    ])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.RobertaProcessing(sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>"))),
    ])
    return tok, None


SYNTHETIC = {
    "synth-bytelevel": build_synth_bytelevel,
    "synth-sentencepiece": build_synth_sentencepiece,
    "synth-splits": build_synth_splits,
}


# ------------------------------------------------------------------------------------------
# Reference runs


class TokenizersRef:
    """The `tokenizers` library on tokenizer.json alone."""

    name = "tokenizers.Tokenizer.from_file"

    def __init__(self, directory):
        self.tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text, add_special_tokens):
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens):
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def special_ids(self):
        return sorted(i for i, t in self.tok.get_added_tokens_decoder().items() if t.special)


class TransformersRef:
    """transformers.AutoTokenizer on the directory (tokenizer.json + tokenizer_config.json)."""

    name = "transformers.AutoTokenizer.from_pretrained"

    def __init__(self, directory):
        self.tok = transformers.AutoTokenizer.from_pretrained(directory)
        self.vocab_size = len(self.tok)

    def encode(self, text, add_special_tokens):
        return self.tok.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids, skip_special_tokens):
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def special_ids(self):
        return sorted(i for i, t in self.tok.added_tokens_decoder.items() if t.special)


def random_decode_cases(ref, seed):
    rng = random.Random(seed)
    specials = ref.special_ids()
    cases = []
    for k in range(DECODE_CASES):
        n = rng.randint(0 if k == 0 else 1, 40)
        ids = []
        for _ in range(n):
            r = rng.random()
            if r < 0.1 and specials:
                ids.append(rng.choice(specials))
            elif r < 0.13:
                ids.append(ref.vocab_size + rng.randint(0, 5))  # no such token
            elif r < 0.5:
                ids.append(rng.randint(0, min(ref.vocab_size, 600) - 1))  # bytes, short tokens
            else:
                ids.append(rng.randint(0, ref.vocab_size - 1))
        cases.append({
            "ids": ids,
            "text": ref.decode(ids, False),
            "text_skip": ref.decode(ids, True),
        })
    return cases


def make_fixture(name, ref, entries):
    texts = corpus_texts(entries)
    encode = []
    for i, text in enumerate(texts):
        ids = ref.encode(text, True)
        ids_plain = ref.encode(text, False)
        encode.append({
            "i": i,
            "ids": ids,
            "ids_plain": ids_plain,
            "text": ref.decode(ids, False),
            "text_skip": ref.decode(ids, True),
        })
    return {
        "tokenizer": name,
        "reference": ref.name,
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__},
        "vocab_size": ref.vocab_size,
        "encode": encode,
        "decode": random_decode_cases(ref, seed=hash_name(name)),
    }


def hash_name(name):
    h = 0
    for c in name.encode():
        h = (h * 131 + c) % (1 << 31)
    return h


# Character classes whose Oniguruma meaning deepshard's PCRE2 translation must reproduce
# (text/tokenizer/regex.h), checked for every code point by the C++ tests.
ONIG_CLASSES = [
    ("w", r"\w"), ("w_in_class", r"[\w]"), ("W", r"\W"), ("s", r"\s"), ("S", r"\S"),
    ("s_in_class", r"[\s]"), ("d", r"\d"), ("h", r"\h"), ("L", r"\p{L}"), ("N", r"\p{N}"),
    ("P", r"\p{P}"), ("S_symbol", r"\p{S}"), ("M", r"\p{M}"), ("Lu", r"\p{Lu}"), ("Han", r"\p{Han}"),
    ("Hiragana", r"\p{Hiragana}"), ("Latin", r"\p{Latin}"), ("not_L_N", r"[^\s\p{L}\p{N}]"),
    ("ci_k", r"(?i)k"),
]


def onig_classes():
    """Code point ranges matched by each pattern in ONIG_CLASSES (one code point at a time)."""
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    text = "".join(chr(c) for c in cps)
    out = []
    for name, pattern in ONIG_CLASSES:
        kept = pre_tokenizers.Split(Regex(pattern), "removed").pre_tokenize_str(text)
        unmatched = bytearray(len(cps))
        for _, (a, b) in kept:  # character offsets of the pieces that did not match
            unmatched[a:b] = b"\x01" * (b - a)
        ranges = []
        for i, c in enumerate(cps):
            if unmatched[i]:
                continue
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            elif ranges and ranges[-1][1] == 0xD7FF and c == 0xE000:
                ranges[-1][1] = c  # contiguous across the surrogate gap
            else:
                ranges.append([c, c])
        out.append({"name": name, "pattern": pattern, "ranges": ranges})
    return {"reference": f"tokenizers {tokenizers.__version__} (Oniguruma), each code point matched alone",
            "classes": out}


def corpus_json(entries):
    out = []
    for e in entries:
        if "bytes" in e:
            out.append({"category": e["category"], "hex": e["bytes"].hex()})
        else:
            out.append({"category": e["category"], "text": e["text"]})
    return out


def dump(obj):
    return json.dumps(obj, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n"


def write_or_check(path, content, check, problems):
    if check:
        try:
            with open(path, encoding="utf-8") as f:
                old = f.read()
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            return
        if old != content:
            problems.append(f"{path}: differs")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    print(f"wrote {os.path.relpath(path, ROOT)} ({len(content.encode())} bytes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    parser.add_argument("--rebuild-synthetic", action="store_true",
                        help="retrain the synthetic tokenizer.json files (new ids: commit them with the fixtures)")
    args = parser.parse_args()

    entries = tokenizer_corpus.corpus()
    print(f"corpus: {len(entries)} entries; tokenizers {tokenizers.__version__}, "
          f"transformers {transformers.__version__}")
    problems = []
    write_or_check(os.path.join(OUT, "corpus.json"), dump(corpus_json(entries)), args.check, problems)
    write_or_check(os.path.join(OUT, "oniguruma_classes.json"), dump(onig_classes()), args.check, problems)

    # Synthetic tokenizers. BPE training is not bit-for-bit reproducible (ties between
    # equally frequent pairs), so the committed tokenizer.json files are reused unless
    # --rebuild-synthetic is given; the fixtures are always recomputed from them.
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in SYNTHETIC.items():
            d = os.path.join(OUT, name)
            if args.rebuild_synthetic or not os.path.exists(os.path.join(d, "tokenizer.json")):
                if args.check:
                    problems.append(f"{d}: missing tokenizer.json")
                    continue
                tok, config = build(entries)
                d = os.path.join(tmp, name)
                os.makedirs(d)
                tok.save(os.path.join(d, "tokenizer.json"))
                if config is not None:
                    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                        f.write(json.dumps(config, ensure_ascii=False, indent=2) + "\n")
                for fname in ("tokenizer.json", "tokenizer_config.json"):
                    path = os.path.join(d, fname)
                    if os.path.exists(path):
                        content = open(path, encoding="utf-8").read()
                        write_or_check(os.path.join(OUT, name, fname), content, False, problems)
            has_config = os.path.exists(os.path.join(d, "tokenizer_config.json"))
            ref = TransformersRef(d) if has_config else TokenizersRef(d)
            fixture = make_fixture(name, ref, entries)
            write_or_check(os.path.join(OUT, name, "fixtures.json"), dump(fixture), args.check, problems)

    # DeepSeek-V3: the real files, through transformers (which applies tokenizer_config.json).
    ds_dir = os.path.join(OUT, "deepseek-v3")
    ref = TransformersRef(ds_dir)
    fixture = make_fixture("deepseek-v3", ref, entries)
    # Cross-check: transformers = tokenizers + BOS from add_bos_token.
    raw = TokenizersRef(ds_dir)
    bos = ref.tok.bos_token_id
    for case, text in zip(fixture["encode"], corpus_texts(entries)):
        plain = raw.encode(text, False)
        if case["ids_plain"] != plain or case["ids"] != [bos] + plain:
            problems.append(f"deepseek-v3: transformers and tokenizers disagree on {text!r}")
    write_or_check(os.path.join(ds_dir, "fixtures.json"), dump(fixture), args.check, problems)

    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
