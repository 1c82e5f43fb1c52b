"""The tokenizer test corpus: a fixed, deterministic list of inputs.

Each entry is either text (a Python str) or raw bytes (for invalid UTF-8). Categories:
English prose and code, Chinese, Japanese, Korean, Arabic, Hindi, emoji and ZWJ
sequences, digits of every length, whitespace runs / tabs / CRLF, text containing
special-token spellings, the empty string, invalid UTF-8, Unicode normalization cases,
and seeded random mixtures of all of these. Written for deepshard; regenerate the
fixtures with make_tokenizer_fixtures.py after any change.
"""

import random

PROSE = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It's a truth universally acknowledged that tokenizers are subtle.",
    "I'm sure we'll see they've done it; you're right, isn't it?",
    "Dr. Smith arrived at 10:45 a.m. on Jan. 3rd, 2024 -- late, as usual.",
    "She said: \"Don't forget the milk!\" and left.",
    "Prices rose 3.5% in Q2; revenue was $1,234,567.89 (up from $987,654.32).",
    "E-mail me at someone@example.com or visit https://example.org/path?q=1&r=2#frag.",
    "Well... that's odd!!! Really??? Yes!?",
    "UPPER CASE WORDS AND MiXeD CaSe WoRdS",
    "A sentence with\ttabs\tin the middle.",
    "Multiple   spaces    between     words.",
    "Trailing spaces   ",
    "   Leading spaces",
    "New\nlines\nand\n\nblank lines\n",
    "Windows\r\nline\r\nendings\r\n",
    "Mixed \r\n\r\n endings \n\r here",
    "Hyphenated-words and en–dashes and em—dashes.",
    "Quotes: ‘single’ “double” «guillemets» „low“.",
    "Apostrophes: don't, won't, can't, it's, we're, they've, I'd, you'll.",
    "Ellipsis… and bullets • and arrows → ← ↑ ↓",
    "Math: x² + y² = z², ∑ᵢ aᵢ, ∫ f(x) dx ≈ π/2, √2 ≠ 1.41",
    "Temperatures: 25°C, 77°F, −40°",
    "Café, naïve, résumé, façade, Zürich, São Paulo, Kraków.",
    "Straße and STRASSE, İstanbul and ıi, Σίσυφος ΣΊΣΥΦΟΣ.",
    "The year 1999 was followed by 2000, then 2001.",
    "Version 3.14.159-rc2+build.42",
    "tokenizer.json, tokenizer_config.json and config.json",
    "OK",
    "a",
    " ",
    ".",
    "?!",
    "'s",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "Once upon a time, in a land far away, there lived a programmer who loved byte pairs.",
    "To be, or not to be: that is the question.",
    "Lorem ipsum is a placeholder; this sentence is not Latin at all.",
]

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i ** 2)\n",
    "class Foo:\n    def __init__(self, x: int) -> None:\n        self.x = x\n",
    "#include <vector>\nint main() {\n  std::vector<int> v{1, 2, 3};\n  return v.size();\n}\n",
    "if (a && b || !c) { x += 1; } else { x -= 1; }",
    "const f = (x) => x?.y ?? 0;  // optional chaining",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "<html><body><p class=\"x\">Hello &amp; welcome</p></body></html>",
    "$ ls -la /tmp | grep '\\.log$' && echo done",
    "    indented with four spaces\n        and eight\n",
    "\t\tindented with tabs\n\t\t\tand three",
    "x=1;y=2;z=x*y/3-4%5",
    "a_b_c __dunder__ CamelCase snake_case kebab-case SCREAMING_CASE",
    "// TODO(someone): fix this\n/* block\n   comment */",
    "fn main() { let v: Vec<u8> = vec![0xFF, 0x00]; println!(\"{:?}\", v); }",
    "matrix[i][j] = matrix[i-1][j] + matrix[i][j-1];",
    "0x1F 0b1010 0o777 1e-10 3.14f 42L",
    "```python\nprint('hi')\n```",
    "git commit -m \"Fix: handle CRLF\\r\\n in input\"",
    "@decorator\ndef f(*args, **kwargs): ...",
    "=> -> <- <= >= == != === !== :: ... ..= |> <|",
]

CHINESE = [
    "你好，世界！",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "深度求索发布了新的大语言模型。",
    "这是一个包含数字123和English的句子。",
    "中文标点：，。！？；：“”‘’（）【】《》",
    "繁體中文與簡體中文並不完全相同。",
    "一二三四五六七八九十百千万亿",
    "龘靐齉爩",
]

JAPANESE = [
    "こんにちは、世界！",
    "今日はいい天気ですね。",
    "カタカナとひらがなと漢字が混ざった文章です。",
    "東京タワーは333メートルです。",
    "ｶﾀｶﾅ（半角）とカタカナ（全角）",
    "ー〜・「」『』",
]

KOREAN = [
    "안녕하세요, 세계!",
    "오늘 날씨가 정말 좋네요.",
    "한국어 문장에 숫자 42와 영어 word가 섞여 있습니다.",
    "ㄱㄴㄷㄹ ㅏㅑㅓㅕ",
]

ARABIC = [
    "مرحبا بالعالم",
    "اللغة العربية تكتب من اليمين إلى اليسار.",
    "الأرقام العربية: ٠١٢٣٤٥٦٧٨٩ والأرقام الغربية: 0123456789",
    "كَتَبَ الطَّالِبُ الدَّرْسَ",
    "English mixed with العربية in one line.",
]

HINDI = [
    "नमस्ते दुनिया",
    "हिन्दी भाषा देवनागरी लिपि में लिखी जाती है।",
    "संख्याएँ: ०१२३४५६७८९",
    "क्षत्रिय ज्ञान श्री",
]

EMOJI = [
    "😀",
    "I love pizza 🍕 and tacos 🌮!",
    "👨‍👩‍👧‍👦 family",
    "👩🏽‍💻 coding",
    "🏳️‍🌈 🏴‍☠️",
    "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "🇯🇵🇺🇸🇫🇷🇩🇪",
    "1️⃣ 2️⃣ #️⃣ *️⃣",
    "❤️ ♥ ☺️ ✌️",
    "🧑‍🤝‍🧑🫶🏼🪿",
    "emoji without spaces😀😃😄😁",
    "🙂🙃🙂🙃🙂🙃🙂🙃🙂🙃🙂🙃",
]

NORMALIZATION = [
    "e\u0301 vs \u00e9",  # combining acute vs precomposed
    "\u1e9b\u0323",  # long s with dot above + dot below
    "\ufb01nance \ufb02ow",  # ligatures
    "\uff21\uff22\uff23\uff11\uff12\uff13",  # full-width letters and digits
    "\u2460\u2461\u2462 \u00bd \u2153",  # circled digits, fractions
    "\u212b \u2126 \u00c5 \u03a9",  # Angstrom / Ohm signs
    "\u1100\u1161\u11a8 \uac01",  # Hangul jamo vs syllable
    "\u0130stanbul \u0049\u0307",  # dotted capital I
    "\u03a3\u0391\u03a3 \u03c3\u03c2",  # final sigma
    "x\u00a0y\u2009z\u3000w",  # no-break, thin, ideographic spaces
    "soft\u00adhyphen zero\u200bwidth joiner\u200dnon\u200cjoiner",
    "\u2028line separator\u2029paragraph separator",
    "next\u0085line",
    "\u00b5 \u03bc \u2126",
    "A\u030a\u0328",
    "\u0041\u030a \u00c5 \u212b",
    "\u1e0b\u0323 \u1e0d\u0307",
    "control\u0001chars\u001f\u007f",
    "\ufeffbyte order mark",
    "tab\u000bvertical\u000cform feed",
    "\U0001d400\U0001d401 mathematical bold",
    "\u00e6\u0153\u00df\u0131",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "     ",
    "\t",
    "\t\t\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r\n\r\n",
    "\r",
    " \n ",
    "a b",
    "a  b",
    "a   b",
    "a\tb",
    "a \tb",
    "a\t b",
    "a\nb",
    "a \nb",
    "a\n b",
    "a\r\nb",
    "word    \n",
    "word\n    ",
    "    \n    word",
    "x" + " " * 20 + "y",
    " " * 64,
    "\t" * 16 + "end",
    "line1\r\n\r\n\r\nline2",
    "end with newline\n",
    "end with spaces and newline  \n",
    "  \t \n \r\n \t  ",
    "\u3000\u3000全角空格",
]

SPECIAL_TEXT = [
    "<｜begin▁of▁sentence｜>",
    "<｜begin▁of▁sentence｜>Hello",
    "Hello<｜end▁of▁sentence｜>",
    "<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>",
    "<｜User｜> spaced <｜Assistant｜> ",
    "  <｜begin▁of▁sentence｜>  leading and trailing spaces  <｜end▁of▁sentence｜>  ",
    "<｜begin▁of▁sentence｜><｜begin▁of▁sentence｜>",
    "<｜begin▁of▁sentence",
    "｜begin▁of▁sentence｜>",
    "<|begin▁of▁sentence|>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "<think>\nreasoning here\n</think>\n\nanswer",
    "<|EOT|>",
    "text<|EOT|>text",
    "<｜fim▁begin｜>def f():<｜fim▁hole｜>\n<｜fim▁end｜>",
    "<｜▁pad▁｜>",
    "<s> </s> <unk> [CLS] [SEP] [MASK] <pad>",
    "<s>Hello</s>",
    "[CLS] hello [SEP]",
    "word[MASK]word [MASK] [MASK][MASK]",
    "<mask> <mask>x x<mask>",
    "<special> and <SPECIAL> and < special >",
    "abc<sep>def < sep >ghi",
    "hello <extra_id> world",
    "single word:hello hellohello hello_world hello",
    "Start<｜end▁of▁sentence｜>middle<｜begin▁of▁sentence｜>end",
    "<|im_start|>user\nhi<|im_end|>",
    "a  <think>  b  </think>  c",
]

# (label, bytes): inputs that are not valid UTF-8.
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"abc\x80def",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xe4\xb8",
    b"\xe4\xb8\xad\xe6",
    b"\xf0\x9f\x98",
    b"Hello \xf0\x9f\x98 world",
    b"\xc3",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\xbc",
    b"valid \xe4\xb8\xad then \x80\x80\x80 bad",
    b"\x00\x01\x02 nulls",
    b"<\xef\xbd\x9cbegin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\xff",
]


def _digits():
    out = []
    rng = random.Random(7)
    for n in range(1, 41):
        out.append("".join(rng.choice("0123456789") for _ in range(n)))
    out += [
        "0", "00", "007", "1234567890", "12,345,678", "3.14159265358979", "-42", "+1e10",
        "v1.2.3", "abc123def456", "x1y22z333w4444", "2024-11-30T12:34:56Z",
        "١٢٣٤٥", "１２３４５", "Ⅻ ⅻ", "²³¹", "12 34 567 8901 23456",
    ]
    return out


_WORDS = {
    "en": "the of and to in is was for on with as by at from that this it be are not or have".split(),
    "zh": list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年"),
    "ja": list("あいうえおかきくけこさしすせそたちつてとアイウエオカキクケコ日本語"),
    "ko": ["안녕", "하세요", "감사", "합니다", "사랑", "해요", "한국", "어"],
    "ar": ["مرحبا", "كتاب", "العالم", "في", "من", "على", "إلى"],
    "hi": ["नमस्ते", "भारत", "हिन्दी", "और", "है", "में"],
    "emoji": ["😀", "🍕", "👨‍👩‍👧", "🏳️‍🌈", "👍🏽", "🇫🇷", "✨", "🔥"],
    "digits": ["0", "7", "42", "123", "2024", "99999", "3.5"],
    "punct": [".", ",", "!", "?", ";", ":", "--", "...", "(", ")", "\"", "'", "«", "»", "、", "。"],
    "space": [" ", "  ", "\t", "\n", "\r\n", " \n", "\u00a0", "\u3000"],
    "special": ["<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "[MASK]", "<s>", "</s>"],
    "marks": ["e\u0301", "a\u0308", "\u0301", "n\u0303", "\u0130", "\u03a3", "\ufb01", "\uff21"],
    "code": ["def", "(", ")", "{", "}", "=>", "==", "x_1", "self.", "->", "::", "#include"],
}


def _random_mixes(count):
    rng = random.Random(20261130)
    keys = sorted(_WORDS)
    out = []
    for _ in range(count):
        n = rng.randint(1, 24)
        parts = []
        for _ in range(n):
            k = rng.choice(keys)
            parts.append(rng.choice(_WORDS[k]))
            if rng.random() < 0.5:
                parts.append(" ")
        out.append("".join(parts))
    return out


def _random_codepoints(count):
    """Random code points from assorted blocks (no surrogates), short strings."""
    rng = random.Random(1130)
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
              (0x590, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xACFF),
              (0x1F300, 0x1F64F), (0x2000, 0x206F), (0xFF00, 0xFFEF), (0x9, 0xD)]
    out = []
    for _ in range(count):
        n = rng.randint(1, 16)
        s = []
        for _ in range(n):
            lo, hi = rng.choice(ranges)
            s.append(chr(rng.randint(lo, hi)))
        out.append("".join(s))
    return out


def _long_inputs():
    para = " ".join(PROSE[:12])
    return [
        para,
        "\n".join(CODE),
        "".join(CHINESE + JAPANESE + KOREAN),
        " ".join(ARABIC + HINDI),
        "".join(EMOJI),
        "a" * 300,
        "ab" * 200,
        " " * 300 + "x",
        "1" * 100,
        "\n" * 50,
        "-" * 120 + "\n" + "=" * 120,
        "abc" * 50 + " " + "xyz" * 50,
    ]


def corpus():
    """Returns a list of entries: dicts with "category" and "text" (str) or "bytes"."""
    entries = []

    def add(category, items):
        for item in items:
            if isinstance(item, bytes):
                entries.append({"category": category, "bytes": item})
            else:
                entries.append({"category": category, "text": item})

    add("prose", PROSE)
    add("code", CODE)
    add("chinese", CHINESE)
    add("japanese", JAPANESE)
    add("korean", KOREAN)
    add("arabic", ARABIC)
    add("hindi", HINDI)
    add("emoji", EMOJI)
    add("normalization", NORMALIZATION)
    add("whitespace", WHITESPACE)
    add("special-text", SPECIAL_TEXT)
    add("invalid-utf8", INVALID_UTF8)
    add("digits", _digits())
    add("long", _long_inputs())
    add("random-mix", _random_mixes(220))
    add("random-codepoints", _random_codepoints(80))
    return entries
