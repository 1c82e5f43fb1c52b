#!/usr/bin/env python3
"""Chat-template fixtures for deepshard's Jinja interpreter (text/chat/chat_template.*).

Writes three files under tests/data/chat_templates/, each a list of (template, inputs, expected
output) rendered by Hugging Face transformers' own chat-template path:

  deepseek_v3.json  DeepSeek-V3's chat_template (copied from its tokenizer_config.json) on
                    conversations: system prompts, multi-turn, tool calls and tool outputs, edge cases.
                    Every expected string is rendered twice, by
                    `transformers.utils.chat_template_utils.render_jinja_template` (what
                    `apply_chat_template(tokenize=False)` calls) and by
                    `AutoTokenizer.from_pretrained(dir).apply_chat_template(..., tokenize=False)`,
                    and the two must agree.
  templates.json    Chat templates written for these tests (not copied from any model) that use
                    the constructs real templates use: macros, tojson, selectattr, loop variables,
                    raise_exception, string methods; each on several conversations.
  snippets.json     Small templates, one construct each (expressions, statements, whitespace control,
                    tests, filters, methods, undefined semantics), with their context.

Cases whose reference raises record `"error"` (exception type and message) instead of `"expected"`;
the C++ test then requires an error too.

Snippets are rendered with `_compile_jinja_template(source).render(**context)`: the same
ImmutableSandboxedEnvironment (trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson,
raise_exception, strftime_now) that apply_chat_template uses.

Usage (from the repository root, inside the venv of tools/reference/requirements.txt):
  python tools/reference/make_chat_template_fixtures.py            # regenerate
  python tools/reference/make_chat_template_fixtures.py --check    # compare with committed files
"""

import argparse
import json
import os
import sys

import jinja2
import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(ROOT, "tests", "data", "chat_templates")
DEFAULT_TOKENIZER_DIRS = [
    os.path.join(ROOT, "tests", "data", "tokenizers", "deepseek-v3"),
    "/work/shared/tokenizers/deepseek-v3",
]


def render(source, context):
    """Renders like apply_chat_template; returns ("expected", text) or ("error", "Type: message")."""
    try:
        return "expected", _compile_jinja_template(source).render(**context)
    except Exception as e:  # noqa: BLE001 - any exception is a recorded outcome
        return "error", f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------------------------------------
# DeepSeek-V3 conversations
# ------------------------------------------------------------------------------------------------

def call(name, arguments, call_type="function"):
    return {"type": call_type, "function": {"name": name, "arguments": arguments}}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
U2 = {"role": "user", "content": "And of Italy?"}
A2 = {"role": "assistant", "content": "Rome."}
U3 = {"role": "user", "content": "Thanks!"}

TOOL_USER = {"role": "user", "content": "What's the weather in Paris and in Tokyo?"}
TOOL_CALL_1 = {"role": "assistant", "content": None,
               "tool_calls": [call("get_weather", '{"city": "Paris"}')]}
TOOL_CALL_2 = {"role": "assistant", "content": None,
               "tool_calls": [call("get_weather", '{"city": "Paris"}'), call("get_weather", '{"city": "Tokyo", "unit": "c"}')]}
TOOL_OUT_1 = {"role": "tool", "content": '{"temperature": 18, "sky": "cloudy"}'}
TOOL_OUT_2 = {"role": "tool", "content": '{"temperature": 25, "sky": "clear"}'}
TOOL_FINAL = {"role": "assistant", "content": "Paris: 18°C, cloudy. Tokyo: 25°C, clear."}

DEEPSEEK_CASES = [
    # (name, messages, add_generation_prompt, tools)
    ("single_user", [U1], False, None),
    ("single_user_generation_prompt", [U1], True, None),
    ("system_user", [SYS, U1], True, None),
    ("multi_turn", [SYS, U1, A1, U2, A2, U3], True, None),
    ("multi_turn_ends_with_assistant", [SYS, U1, A1, U2, A2], False, None),
    ("assistant_last_with_generation_prompt", [U1, A1], True, None),
    ("two_system_prompts", [SYS, {"role": "system", "content": "Answer in French."}, U1], True, None),
    ("system_after_user", [U1, {"role": "system", "content": "Be brief."}, A1, U2], True, None),
    ("only_system", [SYS], True, None),
    ("tool_call_round_trip", [SYS, TOOL_USER, TOOL_CALL_1, TOOL_OUT_1, TOOL_FINAL], False, None),
    ("tool_call_then_generation_prompt", [TOOL_USER, TOOL_CALL_1, TOOL_OUT_1], True, None),
    ("tool_call_output_last_no_prompt", [TOOL_USER, TOOL_CALL_1, TOOL_OUT_1], False, None),
    ("two_tool_calls_one_message", [TOOL_USER, TOOL_CALL_2, TOOL_OUT_1, TOOL_OUT_2, TOOL_FINAL], True, None),
    ("consecutive_tool_outputs", [TOOL_USER, TOOL_CALL_2, TOOL_OUT_1, TOOL_OUT_2], True, None),
    ("three_tool_outputs", [TOOL_USER, TOOL_CALL_2, TOOL_OUT_1, TOOL_OUT_2,
                            {"role": "tool", "content": "third"}, TOOL_FINAL, U3], True, None),
    ("tool_outputs_then_user", [TOOL_USER, TOOL_CALL_1, TOOL_OUT_1, U2], True, None),
    ("second_tool_call_round", [TOOL_USER, TOOL_CALL_1, TOOL_OUT_1, TOOL_FINAL, U2,
                                {"role": "assistant", "content": None,
                                 "tool_calls": [call("get_weather", '{"city": "Rome"}')]},
                                {"role": "tool", "content": "21"}], True, None),
    ("assistant_content_and_tool_calls", [TOOL_USER,
                                          {"role": "assistant", "content": "Let me check.",
                                           "tool_calls": [call("get_weather", '{"city": "Paris"}')]},
                                          TOOL_OUT_1], True, None),
    ("assistant_none_without_tool_calls", [U1, {"role": "assistant", "content": None}, U2], True, None),
    ("tool_arguments_unicode_newlines", [TOOL_USER,
                                         {"role": "assistant", "content": None,
                                          "tool_calls": [call("search", '{\n  "q": "東京 天気 ☀",\n  "lang": "ja"\n}')]},
                                         {"role": "tool", "content": "晴れ\n25度"}], True, None),
    ("tools_argument_is_ignored", [SYS, U1], True, [WEATHER_TOOL]),
    ("empty_user_content", [{"role": "user", "content": ""}], True, None),
    ("empty_system_content", [{"role": "system", "content": ""}, U1], True, None),
    ("empty_assistant_content", [U1, {"role": "assistant", "content": ""}, U2], True, None),
    ("empty_tool_output", [TOOL_USER, TOOL_CALL_1, {"role": "tool", "content": ""}], True, None),
    ("unicode_content", [{"role": "system", "content": "Réponds en français, s'il te plaît. 🙂"},
                         {"role": "user", "content": "日本語で答えて。Здравствуйте! مرحبا 👋🏽 e\u0301"},
                         {"role": "assistant", "content": "はい、わかりました。"}], True, None),
    ("jinja_looking_content", [{"role": "user", "content": "Explain {{ messages }} and {% if x %}y{% endif %} {# c #}"},
                               {"role": "assistant", "content": "{%- raw %}{{ it }}{% endraw -%} is Jinja."}], True, None),
    ("special_token_text_in_content", [{"role": "user", "content": "<｜User｜>fake<｜Assistant｜><｜end▁of▁sentence｜>"}],
     True, None),
    ("whitespace_content", [{"role": "system", "content": "  \n"}, {"role": "user", "content": "\t line one \n\n line two  "},
                            {"role": "assistant", "content": "\n"}], True, None),
    ("long_conversation", [SYS] + [m for i in range(8) for m in (
        {"role": "user", "content": f"Question {i}: what is {i} squared?"},
        {"role": "assistant", "content": f"{i} squared is {i * i}."})] + [U3], True, None),
    ("messages_with_extra_keys", [{"role": "user", "content": "hi", "name": "alice", "id": 7},
                                  {"role": "assistant", "content": "hello", "reasoning_content": "think"}], True, None),
    ("empty_conversation", [], True, None),
    ("user_content_none_is_an_error", [{"role": "user", "content": None}], True, None),
]


def make_deepseek(tokenizer_dir):
    with open(os.path.join(tokenizer_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    template = config["chat_template"]
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    bos, eos = tok.bos_token, tok.eos_token
    cases = []
    for name, messages, agp, tools in DEEPSEEK_CASES:
        case = {"name": name, "messages": messages, "add_generation_prompt": agp}
        if tools is not None:
            case["tools"] = tools
        try:
            text = render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                         add_generation_prompt=agp, bos_token=bos, eos_token=eos)[0][0]
            outcome = ("expected", text)
        except Exception as e:  # noqa: BLE001
            outcome = ("error", f"{type(e).__name__}: {e}")
        # Cross-check against the tokenizer's own apply_chat_template (it cannot take an empty list).
        if messages:
            try:
                via_tok = ("expected", tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                                               add_generation_prompt=agp))
            except Exception as e:  # noqa: BLE001
                via_tok = ("error", f"{type(e).__name__}: {e}")
            if via_tok[0] != outcome[0] or (outcome[0] == "expected" and via_tok[1] != outcome[1]):
                sys.exit(f"{name}: render_jinja_template and apply_chat_template disagree:\n{outcome}\n{via_tok}")
        case[outcome[0]] = outcome[1]
        cases.append(case)
    return {
        "source": "DeepSeek-V3 tokenizer_config.json chat_template",
        "bos_token": bos,
        "eos_token": eos,
        "template": template,
        "cases": cases,
    }


# ------------------------------------------------------------------------------------------------
# Templates written for these tests, in the style of real chat templates
# ------------------------------------------------------------------------------------------------

# ChatML-like with a tools block, tool calls rendered as JSON, and tool responses grouped.
TEMPLATE_CHATML_TOOLS = """\
{%- macro render_tool(tool) -%}
{{ tool | tojson }}
{%- endmacro -%}
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions.\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- render_tool(tool) }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama-style: system prompt extraction, role alternation check, trimmed content, date header.
TEMPLATE_ALTERNATING = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if system_message %}
<<SYS>>
{{ system_message }}
<</SYS>>

{% endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + message['content'] | trim + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] | trim + ' ' + eos_token }}
    {%- else %}
        {{- raise_exception('Unknown role: ' ~ message['role']) }}
    {%- endif %}
{%- endfor %}
"""

# Reasoning-style: strips <think> blocks from past turns, finds the last user turn with a
# namespace, renders tool calls with tojson and content given as a list of parts.
TEMPLATE_REASONING = """\
{%- set ns = namespace(last_user=-1, sys='') -%}
{%- for m in messages -%}
  {%- if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif -%}
  {%- if m.role == 'system' %}{% set ns.sys = ns.sys ~ m.content %}{% endif -%}
{%- endfor -%}
{%- macro text_of(content) -%}
  {%- if content is string -%}{{ content }}
  {%- elif content is iterable and content is not mapping -%}
    {%- for part in content if part.type == 'text' -%}{{ part.text }}{% if not loop.last %}{{ '\\n' }}{% endif %}{%- endfor -%}
  {%- elif content is none -%}
  {%- else -%}{{ raise_exception('bad content type') }}
  {%- endif -%}
{%- endmacro -%}
{%- if ns.sys %}<|system|>{{ ns.sys }}
{% endif -%}
{%- if tools is not none and tools | length > 0 -%}
<|tools|>{% for t in tools %}{{ t.function.name }}({{ t.function.parameters.properties | list | join(', ') }}){{ ', ' if not loop.last }}{% endfor %}
{% endif -%}
{%- for m in messages if m.role != 'system' -%}
  {%- set content = text_of(m.content) -%}
  {%- if m.role == 'user' -%}
<|user|>{{ content }}
  {%- elif m.role == 'assistant' -%}
    {%- if '</think>' in content -%}
      {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}
      {%- set content = content.split('</think>')[-1].lstrip('\\n') -%}
    {%- else -%}
      {%- set reasoning = '' -%}
    {%- endif %}
<|assistant|>
    {%- if loop.index0 > ns.last_user and reasoning -%}<think>{{ reasoning.strip() }}</think>{%- endif -%}
    {{- content -}}
    {%- if m.tool_calls is defined and m.tool_calls -%}
      {%- for tc in m.tool_calls %}
<|call|>{{ tc.function.name }} {{ tc.function.arguments | tojson if tc.function.arguments is mapping else tc.function.arguments }}
      {%- endfor -%}
    {%- endif -%}
{{ eos_token }}
  {%- elif m.role == 'tool' -%}
<|tool|>{{ content }}
  {%- endif %}
{% endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{%- endif -%}
"""

TEMPLATES = {
    "chatml_tools": TEMPLATE_CHATML_TOOLS,
    "alternating_roles": TEMPLATE_ALTERNATING,
    "reasoning": TEMPLATE_REASONING,
}

CONVERSATIONS = {
    "plain": ([SYS, U1, A1, U2], None),
    "no_system": ([U1, A1, U2, A2], None),
    "tools_in_system": ([SYS, TOOL_USER], [WEATHER_TOOL]),
    "tool_calls_mapping_arguments": ([TOOL_USER,
                                      {"role": "assistant", "content": "",
                                       "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
                                                      {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
                                      TOOL_OUT_1, TOOL_OUT_2, TOOL_FINAL], [WEATHER_TOOL]),
    "tool_calls_string_arguments": ([TOOL_USER, TOOL_CALL_2, TOOL_OUT_1, TOOL_OUT_2], [WEATHER_TOOL]),
    "reasoning_turns": ([SYS, U1, {"role": "assistant", "content": "<think>\nParis is the capital.\n</think>\n\nParis."},
                         U2, {"role": "assistant", "content": "<think>Rome, surely.</think>Rome."}], None),
    "content_parts": ([{"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image"},
                                                    {"type": "text", "text": "this picture."}]},
                       {"role": "assistant", "content": "A cat."}], None),
    "not_alternating": ([U1, U2], None),
    "unicode_and_padding": ([{"role": "system", "content": "  Be nice. ✓  "}, {"role": "user", "content": " 日本 "},
                             {"role": "assistant", "content": " Ja. "}], None),
}


def make_templates(templates=TEMPLATES, extra_vars=None):
    cases = []
    for tname, source in templates.items():
        for cname, (messages, tools) in CONVERSATIONS.items():
            for agp in (False, True):
                ctx = {"messages": messages, "tools": tools, "documents": None, "add_generation_prompt": agp,
                       "bos_token": "<s>", "eos_token": "</s>", **(extra_vars or {})}
                kind, text = render(source, ctx)
                case = {"name": f"{tname}/{cname}/agp={int(agp)}", "template": tname, "messages": messages,
                        "add_generation_prompt": agp, kind: text}
                if tools is not None:
                    case["tools"] = tools
                cases.append(case)
    return {"bos_token": "<s>", "eos_token": "</s>", "extra_vars": extra_vars or {}, "templates": templates,
            "cases": cases}


# ------------------------------------------------------------------------------------------------
# Snippets
# ------------------------------------------------------------------------------------------------

BASE_CONTEXT = {
    "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi there"},
                 {"role": "assistant", "content": "Hello!"}],
    "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "search", "description": "Web search",
                                                              "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
    "bos_token": "<s>",
    "eos_token": "</s>",
    "add_generation_prompt": True,
    "s": "  Hello World  ",
    "n": None,
    "i": 7,
    "f": 2.5,
    "l": [3, 1, 2],
    "d": {"b": 2, "a": 1},
    "t": True,
    "e": "",
    "u8": "héllo wörld ✓ 日本語 😀",
    "nested": {"a": {"b": [10, 20, {"c": "deep"}]}},
}

SNIPPETS = [
    # --- whitespace control and lexing ---
    ("ws_trim_blocks", "{% if true %}\n  yes\n{% endif %}\nafter"),
    ("ws_lstrip_blocks", "  {% if true %}x{% endif %}  \n  y"),
    ("ws_minus_both_sides", "a  {%- if true -%}  b  {%- endif -%}  c"),
    ("ws_variable_minus", "  \n {{- 'x' -}} \n  |"),
    ("ws_plus_keeps_lstrip", "  {%+ if true %}a{% endif %}"),
    ("ws_plus_keeps_newline", "{% if true +%}\nb{% endif %}"),
    ("ws_comment_lines", "a\n  {# comment #}\nb{#- tight -#}  c"),
    ("ws_comment_minus", "a {#- c -#} b"),
    ("ws_raw", "{% raw %}{{ not evaluated }} {% if %}{% endraw %}|"),
    ("ws_raw_minus", "x  {%- raw -%}  {{ y }}  {%- endraw -%}  z"),
    ("ws_trailing_newline_removed", "x\n"),
    ("ws_only_one_trailing_newline_removed", "x\n\n"),
    ("ws_crlf", "a\r\nb\r\n{% if true %}\r\nc{% endif %}\r\n"),
    ("ws_tabs", "\t{% if true %}\n\tx\n\t{% endif %}\n"),
    ("ws_for_lines", "{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n"),
    ("ws_variable_not_lstripped", "  {{ 'x' }}\n  y"),
    ("ws_after_variable_same_line", "{{ 'a' }}  {% if true %}b{% endif %}"),
    ("ws_after_variable_newline", "{{ 'a' }}\n  {% if true %}b{% endif %}"),
    ("ws_minus_newlines", "{%- if true %}\n\n  x{% endif %}"),
    ("ws_unicode_space_lstrip", "\u3000{% if true %}x{% endif %}"),
    ("ws_set_lines", "{% set x = 1 %}\n{% set y = 2 %}\n{{ x + y }}\n"),
    ("ws_nested_indent", "{% for i in [1, 2] %}\n    {% if i == 1 %}\n        one\n    {% else %}\n        other\n    {% endif %}\n{% endfor %}"),
    ("ws_brace_in_expr", "{{ {'a': {'b': 1}}['a'] }}"),
    ("ws_literal_braces", "{ {x} } %} }}"),
    # --- arithmetic and literals ---
    ("arith_ints", "{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 7 / 2 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ -7 % 3 }}|{{ 7 % -3 }}|{{ 2 ** 10 }}|{{ 2 ** -1 }}"),
    ("arith_precedence_quirks", "{{ 2 ** 3 ** 2 }}|{{ -2 ** 2 }}|{{ 10 - 2 - 3 }}|{{ 2 * 3 ~ 4 }}|{{ 'a' ~ 2 * 3 }}|{{ (1 + 2) ~ 3 }}"),
    ("arith_floats", "{{ 0.1 + 0.2 }}|{{ 1.0 }}|{{ 1e20 }}|{{ 1.5e-7 }}|{{ 3.0 * 2 }}|{{ 10 / 4 }}|{{ 1e16 }}|{{ 1e15 }}|{{ 123456789.123 }}|{{ f * 2 }}|{{ 7.5 % 2 }}|{{ -7.5 // 2 }}|{{ 0.0001 }}|{{ 0.00001 }}"),
    ("arith_mixed_bool", "{{ true + 1 }}|{{ false * 3 }}|{{ 1 + 1.5 }}|{{ 4 / 2 }}|{{ i - f }}"),
    ("arith_strings", "{{ 'a' + 'b' }}|{{ 'ab' * 3 }}|{{ 3 * '-' }}|{{ 'x' * 0 }}|{{ [1] * 2 }}|{{ [1] + [2, 3] }}|{{ (1,) + (2,) }}"),
    ("concat_tilde", "{{ 'a' ~ 1 ~ none ~ true ~ 2.0 ~ [1] ~ undefined_var ~ '!' }}"),
    ("number_literals", "{{ 10 }}|{{ -0.0 }}|{{ 1_000 }}|{{ 0x1F }}|{{ 0o17 }}|{{ 0b101 }}|{{ 2.50 }}|{{ 1E3 }}|{{ 12345678901234 }}"),
    ("const_literals", "{{ none }}|{{ None }}|{{ true }}|{{ True }}|{{ false }}|{{ False }}|{{ n }}|{{ t }}"),
    ("container_literals", "{{ [1, 'a', none, true, 1.5] }}|{{ (1, 2) }}|{{ (1,) }}|{{ () }}|{{ {'k': 'v', 'n': [1]} }}|{{ {} }}|{{ [] }}|{{ [1, 2,] }}"),
    ("string_escapes", "{{ 'tab\\there' }}|{{ 'nl\\n' }}|{{ '\\u00e9\\x41\\101' }}|{{ \"it's\" }}|{{ 'back\\\\slash' }}|{{ 'q\\'s' }}|{{ 'a' 'b' \"c\" }}|{{ 'unknown\\q' }}"),
    ("string_repr_in_list", "{{ ['it\\'s', 'q\"', 'both\\'\"', 'nl\\n', 'tab\\t', 'é', '\\x01', '\\x7f', '\\\\', '日本'] }}"),
    ("dict_repr", "{{ {'a': 1, 'b': [none, true], 'c': {'d': 'e'}} }}|{{ d }}|{{ messages[0] }}"),
    ("tuple_output", "{{ 1, 2 }}|{{ 'a', }}"),
    # --- comparisons and logic ---
    ("compare_basic", "{{ 1 < 2 }}|{{ 1 == 1.0 }}|{{ 'a' < 'b' }}|{{ [1, 2] < [1, 3] }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 5 }}|{{ none == none }}|{{ 'a' != 'b' }}|{{ true == 1 }}|{{ 2 >= 2 }}|{{ 2 <= 1 }}|{{ [1] == [1] }}|{{ d == {'a': 1, 'b': 2} }}|{{ (1, 2) == [1, 2] }}"),
    ("compare_undefined_eq", "{{ undefined_a == undefined_b }}|{{ undefined_a == none }}|{{ undefined_a != 1 }}"),
    ("in_operator", "{{ 'ell' in 'hello' }}|{{ 2 in [1, 2] }}|{{ 'a' in {'a': 1} }}|{{ 3 not in [1, 2] }}|{{ 'x' in undefined_var }}|{{ 'role' in messages[0] }}|{{ 'z' not in d }}|{{ '' in 'abc' }}"),
    ("logic_values", "{{ true and 'x' }}|{{ false or 'y' }}|{{ none or 0 or '' }}|{{ not none }}|{{ 0 and 1 }}|{{ [] or 'empty' }}|{{ 'a' and 'b' or 'c' }}|{{ not 1 == 2 }}|{{ not (true and false) }}"),
    ("ternary", "{{ 'yes' if t else 'no' }}|{{ 'yes' if n else 'no' }}|[{{ 'x' if false }}]|{{ 1 if false else 2 if true else 3 }}|{{ ('a' if true else 'b') ~ 'c' }}"),
    ("truthiness", "{% for v in [0, 1, '', 'a', [], [0], {}, {'a': 1}, none, 0.0, 0.1, false, true, ' '] %}{{ 'T' if v else 'F' }}{% endfor %}"),
    # --- subscripts, slices and attributes ---
    ("subscripts", "{{ l[0] }}|{{ l[-1] }}|{{ l[1:] }}|{{ l[::-1] }}|{{ l[:2] }}|{{ l[::2] }}|[{{ l[5] }}]|{{ l[-100:] }}|{{ l[1:-1] }}|{{ l[10:] }}|{{ l[2:0:-1] }}|{{ l[-1:-4:-1] }}"),
    ("string_slices", "{{ 'hello'[1:4] }}|{{ 'hello'[::-1] }}|{{ u8[::-1] }}|{{ u8[1] }}|{{ u8[-1] }}|{{ 'abc'[-5:10] }}|{{ 'abcdef'[::2] }}|{{ 'abc'[5:] }}|{{ u8[6:11] }}"),
    ("attribute_access", "{{ d.a }}|{{ d['b'] }}|[{{ d.missing }}]|{{ d.missing is defined }}|{{ messages[0].role }}|{{ messages.0.content }}|{{ nested.a.b[2].c }}|{{ nested['a']['b'][0] }}|{{ messages[-1]['content'] }}"),
    ("attribute_of_none_is_undefined", "[{{ n.attr }}]|{{ n.attr is defined }}|[{{ n['x'] }}]"),
    ("undefined_printing", "[{{ undefined_thing }}]|[{{ d.nope }}]|{{ undefined_thing is defined }}|{{ undefined_thing is undefined }}|{{ undefined_thing | length }}|{% for x in undefined_thing %}x{% endfor %}|{{ undefined_thing ~ 'a' }}"),
    ("undefined_attribute_is_error", "{{ undefined_thing.attr }}"),
    ("undefined_nested_attribute_is_error", "{{ d.missing.deeper }}"),
    ("none_attribute_of_attribute_is_error", "{{ n.a.b }}"),
    ("dict_method_beats_key", "{{ {'items': 5}['items'] }}|{{ ({'items': 5}.items() | list)[0][0] }}"),
    ("dict_getitem_falls_back_to_method", "{{ (d['keys']() | list) }}"),
    ("list_index_out_of_range_undefined", "[{{ l[3] }}]|{{ l[3] is defined }}|[{{ 'ab'[5] }}]|[{{ l['x'] }}]"),
    # --- statements ---
    ("set_and_tuple_set", "{% set x = 5 %}{{ x }}{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set (c, e2) = ['p', 'q'] %}{{ c }}{{ e2 }}"),
    ("set_block", "{% set x %}hello {{ 'world' }}{% endset %}[{{ x }}]{% set y | upper | trim %} abc {% endset %}[{{ y }}]"),
    ("namespace_counter", "{% set ns = namespace(c=0, s='') %}{% for m in messages %}{% set ns.c = ns.c + 1 %}{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.c }} {{ ns.s }}"),
    ("namespace_shared_reference", "{% set ns = namespace(a=1) %}{% set ns2 = ns %}{% set ns2.a = 5 %}{{ ns.a }}{{ ns['a'] }}"),
    ("namespace_from_dict", "{% set ns = namespace({'x': 1}, y=2) %}{{ ns.x }}{{ ns.y }}[{{ ns.z }}]"),
    ("loop_scope_does_not_leak", "{% set x = 0 %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}[{{ x }}]{% endfor %}{{ x }}"),
    ("loop_scope_undefined_outer", "{% for i in [1, 2] %}[{{ y }}]{% set y = i %}{% endfor %}[{{ y }}]"),
    ("if_scope_leaks", "{% if true %}{% set y = 3 %}{% endif %}{{ y }}"),
    ("loop_variables", "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}"),
    ("loop_previtem_nextitem_cycle", "{% for x in [1, 2, 3] %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('a', 'b') }}-{{ loop.previtem is defined }};{% endfor %}"),
    ("for_if_filter", "{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.index }}{{ loop.length }}{{ loop.last }};{% endfor %}"),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in [1] if false %}x{% else %}filtered{% endfor %}|{% for x in [1] %}{{ x }}{% else %}no{% endfor %}"),
    ("for_over_dict", "{% for k in d %}{{ k }}{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}|{% for k, v in d | dictsort %}{{ k }}{{ v }}{% endfor %}"),
    ("for_over_string", "{% for c in 'abc' %}{{ c }}.{% endfor %}|{% for c in u8[:5] %}[{{ c }}]{% endfor %}"),
    ("for_nested_outer_loop", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in [3, 4] %}{{ outer.index }}{{ loop.index }} {% endfor %}{% endfor %}"),
    ("for_tuple_unpack", "{% for a, b in [[1, 2], (3, 4), 'xy'] %}{{ a }}{{ b }};{% endfor %}"),
    ("break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
    ("if_elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}other{% endif %} {% endfor %}"),
    ("macro_defaults_kwargs", "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }} {{ greet() }}"),
    ("macro_varargs_kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4) }}|{{ m(0) }}"),
    ("macro_caller", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}inside {{ 1 + 1 }}{% endcall %}"),
    ("macro_caller_args", "{% macro each(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) each([1, 2]) %}[{{ x }}]{% endcall %}"),
    ("macro_sees_current_globals", "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}"),
    ("macro_recursion", "{% macro fact(k) %}{% if k <= 1 %}1{% else %}{{ k * fact(k - 1) | int }}{% endif %}{% endmacro %}{{ fact(5) }}"),
    ("macro_local_set", "{% macro m() %}{% set z = 9 %}{{ z }}{% endmacro %}{{ m() }}[{{ z }}]"),
    ("macro_returns_string", "{% macro m() %}5{% endmacro %}{{ m() ~ '!' }}|{{ m() is string }}|{{ m() | int + 1 }}"),
    ("filter_block", "{% filter upper %}abc {{ 'def' }}{% endfilter %}|{% filter replace('a', 'o') | trim %}  banana  {% endfilter %}"),
    ("with_block", "{% with a = 1, b = 'x' %}{{ a }}{{ b }}{% endwith %}[{{ a }}]"),
    ("print_statement", "{% print 'hi' %}{% print 1 + 1 %}"),
    ("generation_block", "{% generation %}gen {{ 1 }}{% endgeneration %}|{% generation %}{% set g = 1 %}{% endgeneration %}[{{ g }}]"),
    ("raise_exception", "{{ raise_exception('Bad role: ' ~ messages[0].role) }}"),
    ("raise_exception_in_if", "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"),
    ("add_generation_prompt_default", "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ add_generation_prompt }}"),
    # --- tests ---
    ("tests_types", "{{ n is none }}{{ 1 is none }}{{ 'a' is string }}{{ 1 is string }}{{ d is mapping }}{{ l is mapping }}{{ l is iterable }}{{ 'a' is iterable }}{{ 1 is iterable }}{{ l is sequence }}{{ d is sequence }}{{ 'a' is sequence }}{{ 1 is sequence }}"),
    ("tests_numbers", "{{ 1 is number }}{{ 1.5 is number }}{{ true is number }}{{ 'a' is number }}{{ true is boolean }}{{ 1 is boolean }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 0 is false }}{{ 1 is integer }}{{ true is integer }}{{ 1.0 is float }}{{ 1 is float }}"),
    ("tests_comparison", "{{ 1 is eq 1 }}{{ 1 is equalto 2 }}{{ 2 is gt 1 }}{{ 2 is greaterthan 3 }}{{ 2 is lt 1 }}{{ 2 is lessthan 3 }}{{ 2 is ge 2 }}{{ 2 is le 1 }}{{ 2 is ne 3 }}{{ 2 is in [1, 2] }}{{ 'a' is in 'abc' }}"),
    ("tests_misc", "{{ 3 is odd }}{{ 3 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(2) }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ 'Abc' is lower }}{{ '1' is lower }}{{ none is sameas none }}{{ true is sameas true }}{{ 'upper' is filter }}{{ 'nope' is filter }}{{ 'odd' is test }}{{ range is callable }}{{ 'a' is callable }}{{ x is not defined }}{{ 1 is not none }}"),
    ("tests_on_undefined", "{{ u is sequence }}{{ u is iterable }}{{ u is string }}{{ u is none }}{{ u is mapping }}{{ u is number }}{{ u is defined }}{{ u is callable }}"),
    ("test_not_and_or", "{{ n is not none and 1 is number }}|{{ n is none or x }}|{{ not n is none }}"),
    # --- filters ---
    ("filters_strings", "{{ s | trim }}|{{ s | length }}|{{ s | upper }}|{{ s | lower }}|{{ 'hello world' | capitalize }}|{{ 'hELLO wORLD' | title }}|{{ s | replace('l', 'L') }}|{{ s | replace('l', 'L', 1) }}|{{ 'xxhixx' | trim('x') }}"),
    ("filter_title_rules", "{{ \"they're bill's friends from the UK\" | title }}|{{ 'hello-world (foo) [bar] <baz> {q}' | title }}|{{ 'ßx straße' | title }}|{{ 'ÉCOLE école' | title }}"),
    ("filter_capitalize_unicode", "{{ 'ßabc' | capitalize }}|{{ 'éCOLE' | capitalize }}|{{ '' | capitalize }}|{{ 1 | capitalize }}"),
    ("filter_join", "{{ l | join(', ') }}|{{ l | join }}|{{ messages | join(',', attribute='role') }}|{{ [1, none, 'a'] | join('-') }}|{{ 'abc' | join('.') }}|{{ d | join('+') }}"),
    ("filter_first_last", "{{ l | first }}|{{ l | last }}|{{ 'abc' | first }}|{{ 'abc' | last }}|[{{ [] | first }}]|{{ d | first }}|{{ d | last }}|{{ messages | last | attr('role') }}"),
    ("filter_default", "{{ undefined_var | default('dflt') }}|{{ n | default('x') }}|{{ '' | default('empty', true) }}|{{ '' | d('e2', boolean=true) }}|{{ 0 | default(5) }}|[{{ undefined_var | default }}]|{{ d.zz | default(d.a) }}"),
    ("filter_tojson", "{{ messages | tojson }}|{{ {'a': [1, 2.5, none, true, false], 'é': 'ü😀'} | tojson }}|{{ d | tojson(sort_keys=true) }}|{{ 1.0 | tojson }}|{{ 'x' | tojson }}|{{ [] | tojson }}|{{ (1, 2) | tojson }}"),
    ("filter_tojson_indent", "{{ d | tojson(indent=2) }}|{{ l | tojson(indent=4) }}|{{ {} | tojson(indent=2) }}|{{ [[]] | tojson(indent=2) }}|{{ {'a': {'b': [1, {}]}} | tojson(indent=1) }}|{{ d | tojson(indent='\\t') }}|{{ l | tojson(indent=0) }}"),
    ("filter_tojson_escapes", "{{ 'quote\"back\\\\slash\\nnl\\ttab\\x01\\x1f\\x7f\\b\\f\\r' | tojson }}|{{ 'é😀\\u2028' | tojson(ensure_ascii=true) }}|{{ d | tojson(separators=(',', ':')) }}|{{ tools[0] | tojson }}"),
    ("filter_tojson_positional_is_ensure_ascii", "{{ 'é' | tojson(2) }}"),
    ("filter_tojson_floats", "{{ [0.1, 1e-05, 1e16, 1e15, -0.0, 3.0, 123.456, 1.5e300] | tojson }}"),
    ("filter_tojson_undefined_is_error", "{{ undefined_var | tojson }}"),
    ("filter_conversions", "{{ 12 | string + 'x' }}|{{ '42' | int + 1 }}|{{ '3.7' | int }}|{{ 'abc' | int }}|{{ 'abc' | int(7) }}|{{ 3.9 | int }}|{{ -3.9 | int }}|{{ '2.5' | float }}|{{ 'x' | float }}|{{ 5 | float }}|{{ ' 12 ' | int }}|{{ true | int }}|{{ none | int }}|{{ '1_000' | int }}|{{ '-7' | int }}|{{ ' 1e3 ' | float }}|{{ [1] | string }}|{{ none | string }}"),
    ("filter_list_items", "{{ 'abc' | list }}|{{ d | list }}|{{ d | items | list }}|{{ (1, 2) | list }}|{{ undefined_var | items | list }}|{{ undefined_var | list }}"),
    ("filter_selectattr", "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages | rejectattr('role', 'eq', 'system') | map(attribute='role') | join(',') }}|{{ messages | selectattr('content') | list | length }}|{{ [{'a': 1}, {'a': 0}, {}] | selectattr('a') | list }}|{{ tools | selectattr('function.name', 'in', ['get_weather']) | list | length }}|{{ messages | selectattr('role', '==', 'assistant') | list | length }}"),
    ("filter_map", "{{ messages | map(attribute='role') | list }}|{{ l | map('string') | join('+') }}|{{ ['a', 'B'] | map('upper') | list }}|{{ [{'x': {'y': 1}}, {}] | map(attribute='x.y', default='-') | list }}|{{ messages | map(attribute='role') | unique | list }}|{{ l | map('int') | sum }}|{{ ['  a ', 'b '] | map('trim') | join }}|{{ [[1, 2], [3]] | map(attribute=0) | list }}"),
    ("filter_select_reject", "{{ range(10) | select('odd') | list }}|{{ range(10) | reject('divisibleby', 3) | list }}|{{ [0, 1, '', 'a', none] | select | list }}|{{ [0, 1, '', 'a', none] | reject | list }}|{{ [1, 5, 10] | select('gt', 3) | list }}"),
    ("filter_sort_unique", "{{ l | sort }}|{{ l | sort(reverse=true) }}|{{ ['b', 'A', 'c'] | sort }}|{{ ['b', 'A', 'c'] | sort(case_sensitive=true) }}|{{ messages | sort(attribute='role') | map(attribute='role') | join(',') }}|{{ [3, 1, 3, 2, 1] | unique | list }}|{{ ['a', 'A', 'b'] | unique | list }}|{{ ['a', 'A', 'b'] | unique(case_sensitive=true) | list }}|{{ [1, 1.0, true] | unique | list }}"),
    ("filter_reverse_min_max_sum", "{{ l | reverse | list }}|{{ 'abc' | reverse }}|{{ u8 | reverse }}|{{ l | min }}|{{ l | max }}|{{ ['b', 'A', 'c'] | max }}|{{ ['b', 'A', 'c'] | min(case_sensitive=true) }}|{{ l | sum }}|{{ [1.5, 2] | sum }}|{{ [] | sum }}|{{ l | sum(start=10) }}|[{{ [] | max }}]|{{ [{'v': 3}, {'v': 1}] | max(attribute='v') }}|{{ [{'v': 3}, {'v': 1}] | sum(attribute='v') }}"),
    ("filter_escape_safe", "{{ '<a href=\"x\">&\\'</a>' | e }}|{{ '<b>' | safe }}|{{ '<i>' | escape }}|{{ 5 | e }}"),
    ("filter_indent", "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}|{{ 'x\\ny' | indent('> ') }}|{{ '' | indent(first=true) }}|{{ 'a\\r\\nb' | indent(1) }}"),
    ("filter_round_abs", "{{ 2.5 | round }}|{{ 3.5 | round }}|{{ 2.675 | round(2) }}|{{ -1.5 | round }}|{{ 3.14159 | round(3, 'floor') }}|{{ 3.14159 | round(1, 'ceil') }}|{{ -5 | abs }}|{{ -2.5 | abs }}|{{ 7 | round }}|{{ 0.125 | round(2) }}|{{ 1234.5 | round(-2) }}"),
    ("filter_length_count", "{{ d | length }}|{{ d | count }}|{{ messages | length }}|{{ u8 | length }}|{{ '' | length }}|{{ (1, 2, 3) | count }}"),
    ("filter_attr", "[{{ d | attr('a') }}]|{{ ('abc' | attr('upper'))() }}|{{ (d | attr('keys'))() | list }}"),
    ("filter_dictsort", "{{ d | dictsort }}|{{ d | dictsort(by='value', reverse=true) }}|{{ {'B': 1, 'a': 2} | dictsort }}|{{ {'B': 1, 'a': 2} | dictsort(true) }}"),
    ("filter_on_undefined", "[{{ u | upper }}][{{ u | trim }}][{{ u | join(',') }}][{{ u | first }}][{{ u | string }}][{{ u | list }}][{{ u | sort }}][{{ u | replace('a', 'b') }}][{{ u | title }}]"),
    ("filter_int_on_undefined_is_error", "{{ u | int }}"),
    ("filter_chains_and_precedence", "{{ -3 | abs }}|{{ 'a' ~ 'b' | upper }}|{{ ('a' ~ 'b') | upper }}|{{ l | length + 1 }}|{{ not 'x' | length }}|{{ 1 + l | sum }}"),
    # --- methods ---
    ("str_methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ 'xyhiyx'.lstrip('xy') }}|{{ s.upper() }}|{{ s.lower() }}|{{ 'hello world'.title() }}|{{ \"they're o'neil 3rd\".title() }}|{{ 'Hello'.capitalize() }}|{{ 'hello'.replace('l', 'L') }}|{{ 'hello'.replace('l', 'L', 1) }}|{{ 'ab'.replace('', '-') }}"),
    ("str_split", "{{ 'a,b,,c'.split(',') }}|{{ '  a  b c '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ '  a  b c '.rsplit(None, 1) }}|{{ ''.split() }}|{{ ''.split(',') }}|{{ 'a<think>b</think>c'.split('</think>')[-1] }}|{{ 'x'.split('x') }}"),
    ("str_predicates", "{{ 'hello'.startswith('he') }}|{{ 'hello'.endswith(('x', 'lo')) }}|{{ 'hello'.startswith('lo') }}|{{ 'hello'.find('l') }}|{{ 'hello'.rfind('l') }}|{{ 'hello'.find('z') }}|{{ 'hello'.count('l') }}|{{ 'abc'.isdigit() }}|{{ '123'.isdigit() }}|{{ 'abc'.isalpha() }}|{{ ' \\t'.isspace() }}|{{ 'abc'.islower() }}|{{ 'ABC'.isupper() }}|{{ 'a1'.isalnum() }}|{{ u8.find('✓') }}"),
    ("str_join_splitlines", "{{ '-'.join(['a', 'b']) }}|{{ ', '.join(l | map('string')) }}|{{ 'a\\nb\\r\\nc\\n'.splitlines() }}|{{ 'a\\nb'.splitlines(true) }}|{{ 'prefix-x'.removeprefix('prefix-') }}|{{ 'x.txt'.removesuffix('.txt') }}"),
    ("str_unicode_case", "{{ 'ÉCOLE'.lower() }}|{{ 'straße'.upper() }}|{{ 'привет'.upper() }}|{{ 'ΑΒΓ'.lower() }}|{{ u8.upper() }}|{{ u8 | title }}|{{ 'ÀÉÎ' | lower }}"),
    ("dict_methods", "{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.items() | list }}|{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 'dflt') }}|{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}|{{ messages[0].get('role') }}|{{ messages[0].get('tool_calls', []) | length }}"),
    ("list_methods", "{{ [1, 2, 1].count(1) }}|{{ ['a', 'b'].index('b') }}"),
    ("list_append_is_unsafe", "{% set x = [1] %}{{ x.append(2) }}{{ x }}"),
    ("dict_update_is_unsafe", "{{ d.update({'c': 3}) }}"),
    ("str_format", "{{ '{} x'.format(1) }}|{{ '{0}-{1}-{0}'.format('a', 2) }}|{{ '{name}!'.format(name='bob') }}|{{ '{:>5}|{:<4}|{:^7}|{:*^7}'.format('ab', 'c', 'mid', 'x') }}|{{ '{:.2f} {:5d} {:05d} {:+d} {:x} {:e} {:.1%}'.format(3.14159, 42, -7, 3, 255, 12345.678, 0.256) }}|{{ '{0.role} {0[content]} {1[0]}'.format(messages[1], l) }}|{{ '{!r} {!s}'.format('q', none) }}|{{ '{{}} {}'.format(f) }}"),
    ("percent_format", "{{ '%s and %s' % ('a', 1) }}|{{ '%d%%' % 50 }}|{{ '%5.1f|%-5s|%5s|%05d|%+d|%x|%X|%o' % (3.14159, 'ab', 'cd', -42, 7, 255, 255, 8) }}|{{ '%(a)s-%(b)03d' % {'a': 'x', 'b': 7} }}|{{ '%s' % [1, 2] }}|{{ '%r' % 'q' }}|{{ '%.2s' % 'abcdef' }}|{{ '%c%c' % (72, 'i') }}|{{ '%e %g %G' % (12345.678, 0.00001234, 1e20) }}|{{ '%d' % 3.9 }}|{{ '%i' % true }}"),
    ("error_percent_not_all_converted", "{{ 'x' % 1 }}"),
    ("error_percent_not_enough_args", "{{ '%s %s' % ('a',) }}"),
    ("error_format_index", "{{ '{1}'.format('a') }}"),
    ("range_and_dict", "{{ range(3) | list }}|{{ range(1, 10, 3) | list }}|{{ range(5, 0, -2) | list }}|{{ range(0) | list }}|{{ dict(a=1, b='x') }}|{{ dict(d, c=3) }}"),
    ("range_too_big", "{{ range(100001) | length }}"),
    # --- more edge cases ---
    ("ws_comment_at_line_start", "a\n  {# c #}  b\n{#- d #}\n  {#+ e #}\nf"),
    ("ws_block_after_text_same_line", "text {% if true %}x{% endif %}\n  {% if true %}y{% endif %} tail"),
    ("ws_minus_after_variable", "{{ 'a' }}\n\n  {%- if true %}b{% endif %}"),
    ("ws_raw_lstrip", "line\n    {% raw %}  r  {% endraw %}\nend"),
    ("ws_endraw_trim", "{% raw %}x\n  {% endraw %}\ny"),
    ("ws_newline_after_comment_trimmed", "{# a #}\nb"),
    ("ws_variable_end_no_trim", "{{ 'a' }}\nb"),
    ("ws_multiline_tag", "{% if\n  true\n%}\nyes{% endif %}"),
    ("ws_empty_template", ""),
    ("ws_only_newlines", "\n\n\n"),
    ("macro_default_refers_to_param", "{% macro m(a, b=a ~ '!') %}{{ a }}{{ b }}{% endmacro %}{{ m('x') }}|{{ m('x', 'y') }}"),
    ("macro_in_loop_sees_loop_var", "{% for i in [1, 2] %}{% macro show() %}[{{ i }}]{% endmacro %}{{ show() }}{% endfor %}"),
    ("macro_called_before_definition", "{{ m() }}{% macro m() %}x{% endmacro %}"),
    ("macro_kwargs_only_when_used", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(a=1) }}"),
    ("error_macro_unknown_kwarg", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(b=1) }}"),
    ("macro_missing_arg_is_undefined", "{% macro m(a, b) %}[{{ a }}][{{ b }}][{{ b is defined }}]{% endmacro %}{{ m(1) }}"),
    ("error_call_block_without_caller_use", "{% macro m() %}plain{% endmacro %}{% call m() %}body{% endcall %}"),
    ("set_shadowing_in_macro", "{% set x = 'outer' %}{% macro m() %}{% set x = 'inner' %}{{ x }}{% endmacro %}{{ m() }}{{ x }}"),
    ("set_in_loop_with_namespace_and_if", "{% set ns = namespace(found=none) %}{% for m in messages %}{% if m.role == 'user' and ns.found is none %}{% set ns.found = loop.index0 %}{% endif %}{% endfor %}{{ ns.found }}"),
    ("loop_in_loop_scope", "{% for a in [1, 2] %}{% for b in [1] %}{% set a = 'shadow' %}{{ a }}{% endfor %}{{ a }}{% endfor %}"),
    ("loop_revindex_filtered", "{% for m in messages if m.role != 'system' %}{{ loop.revindex }}{{ loop.first }}{{ loop.previtem is defined }}{% endfor %}"),
    ("loop_over_tuple_and_range", "{% for x in (1, 'a') %}{{ x }}{% endfor %}|{% for i in range(3, 0, -1) %}{{ i }}{% endfor %}"),
    ("loop_break_in_nested", "{% for a in [1, 2, 3] %}{% for b in [1, 2, 3] %}{% if b == 2 %}{% break %}{% endif %}{{ a }}{{ b }} {% endfor %}{% endfor %}"),
    ("loop_continue_with_loop_vars", "{% for x in range(5) %}{% if x is odd %}{% continue %}{% endif %}{{ loop.index }}:{{ x }}{{ ',' if not loop.last }}{% endfor %}"),
    ("loop_else_after_break", "{% for x in [1] %}{% break %}{% else %}else{% endfor %}done"),
    ("loop_else_after_continue_and_partial_break", "{% for x in [1, 2] %}{% continue %}{% else %}E1{% endfor %}|{% for x in [1, 2] %}{% if x == 2 %}{% break %}{% endif %}{% else %}E2{% endfor %}|{% for x in [1, 2] %}{% if x == 1 %}{% continue %}{% endif %}{% else %}E3{% endfor %}"),
    ("slice_variants", "{{ messages[1:][0].role }}|{{ messages[-2:] | map(attribute='role') | join }}|{{ l[:-1] }}|{{ l[None:2] }}|{{ 'abcdef'[1::2] }}|{{ 'abcdef'[-2::-2] }}|{{ l[::-2] }}|{{ (1, 2, 3)[1:] }}"),
    ("string_comparisons_unicode", "{{ 'é' > 'z' }}|{{ '日' > 'é' }}|{{ 'a' < 'aa' }}|{{ ['b', 'a'] | sort }}|{{ ['é', 'e', 'z'] | sort }}"),
    ("float_formatting_more", "{{ 1/3 * 3 }}|{{ 2 ** 0.5 }}|{{ 1e-7 }}|{{ 123456789012345678.0 }}|{{ 0.1 * 3 }}|{{ 100.0 }}|{{ 1.5e16 }}|{{ -1e-10 }}|{{ 5e-324 }}|{{ 1.7976931348623157e308 }}"),
    ("int_float_equality_in", "{{ 1.0 in [1, 2] }}|{{ 1 in [1.0] }}|{{ true in [1] }}|{{ {'a': 1} == {'a': 1.0} }}"),
    ("attribute_chain_on_messages", "{{ messages[0]['role'] | upper }}|{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | first }}|{{ (messages | last).content }}"),
    ("is_defined_on_missing_key", "{{ messages[0].tool_calls is defined }}|{{ messages[0]['tool_calls'] is not defined }}|{{ messages[0].content is defined }}"),
    ("none_comparisons", "{{ none is none }}|{{ n == none }}|{{ n != 0 }}|{{ n is not none }}|{{ not n }}"),
    ("ternary_with_filters", "{{ 'x' | upper if true else 'y' }}|{{ (l | length) if l else 0 }}|{{ 'a' if 'b' in 'abc' else 'c' }}"),
    ("in_with_undefined_left", "{{ undefined_x in ['a'] }}|{{ undefined_x in 'abc' if false else 'ok' }}"),
    ("error_in_string_needs_string", "{{ 1 in 'abc' }}"),
    ("items_of_messages", "{% for k, v in messages[0] | items %}{{ k }}={{ v }};{% endfor %}|{% for k, v in messages[0].items() %}{{ k }}{% endfor %}"),
    ("nested_data_tojson_in_loop", "{% for t in tools %}{{ t.function.name }}: {{ t.function.parameters | tojson }}\n{% endfor %}"),
    ("tojson_key_order_preserved", "{{ {'z': 1, 'a': 2, 'm': {'y': 1, 'b': 2}} | tojson }}|{{ tools[0].function.parameters.properties | tojson(indent=2) }}"),
    ("string_methods_chain", "{{ '  A<think>b</think> C  '.strip().split('</think>')[-1].lstrip().lower() }}|{{ 'a-b-c'.split('-', 1)[1].upper() }}|{{ 'Hello'.lower().startswith('he') }}"),
    ("string_multiply_in_loop", "{% for i in range(3) %}{{ '  ' * i }}{{ i }}\n{% endfor %}"),
    ("unicode_length_and_index", "{{ u8 | length }}|{{ u8[0] }}{{ u8[-2] }}|{{ u8.split() | length }}|{{ '😀😀'[1] }}|{{ 'e\u0301' | length }}"),
    ("concat_with_numbers_and_none", "{{ 'n=' ~ 1.0 ~ ',' ~ none ~ ',' ~ [none] ~ ',' ~ {'a': none} }}"),
    ("bool_and_none_printing_in_lists", "{{ [true, false, none, 1.0, 'x'] }}|{{ (none,) }}|{{ {'k': false} }}"),
    ("dict_literal_trailing_comma", "{{ {'a': 1,} }}|{{ {'a': 1, 'a': 2} }}"),
    ("chained_comparison_mixed", "{{ 1 < 2 == 2 }}|{{ 1 == 1 < 0 }}|{{ 'a' in 'ab' == true }}"),
    ("error_chained_comparison_types", "{{ 1 < 'a' < 2 }}"),
    ("default_with_none_and_false", "{{ none | default('d') }}|{{ false | default('d') }}|{{ false | default('d', true) }}|{{ none | default('d', true) }}"),
    ("namespace_attribute_undefined_then_set", "{% set ns = namespace() %}[{{ ns.x }}]{% set ns.x = 1 %}{{ ns.x }}|{{ ns.x is defined }}"),
    ("error_namespace_undefined_var", "{% set ghost.x = 1 %}"),
    ("replace_filter_count_and_empty", "{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'abc' | replace('', '-') }}|{{ 123 | replace('2', 'x') }}"),
    ("trim_chars_and_unicode_space", "{{ '\u00a0 x \u3000' | trim }}|{{ '--x--' | trim('-') }}|{{ '\t\nx\r\n' | trim }}"),
    ("join_nested_and_numbers", "{{ [[1, 2], [3]] | join(';') }}|{{ [1.5, 2] | join('/') }}|{{ [] | join(',') }}"),
    ("list_filter_on_string_and_dict", "{{ 'ab' | list | join('|') }}|{{ {'x': 1} | list }}"),
    ("first_last_on_undefined_and_empty", "[{{ undefined_q | first }}]|[{{ '' | first }}]|[{{ [] | last }}]"),
    ("round_variants", "{{ 0.5 | round }}|{{ 1.5 | round }}|{{ 2.5 | round(0) }}|{{ -0.5 | round }}|{{ 1.005 | round(2) }}|{{ 10 | round(1) }}|{{ 2.345 | round(2, 'floor') }}|{{ 2.341 | round(2, 'ceil') }}"),
    ("int_filter_variants", "{{ '0x1A' | int }}|{{ '12abc' | int }}|{{ '-0' | int }}|{{ '+5' | int }}|{{ '1e2' | int }}|{{ 'inf' | float }}|{{ '-nan' | float }}|{{ ' -2.5e-3 ' | float }}"),
    ("string_filter_on_containers", "{{ {'a': 'b'} | string }}|{{ (1, 'x') | string }}|{{ 1.0 | string }}"),
    ("select_with_tests_args", "{{ [1, 2, 3, 4] | select('divisibleby', 2) | list }}|{{ ['a', 'B', 'c'] | select('lower') | list }}|{{ [none, 1, none] | reject('none') | list }}|{{ messages | map(attribute='role') | select('in', ['user', 'assistant']) | list }}"),
    ("selectattr_equalto_and_defined", "{{ messages | selectattr('tool_calls', 'defined') | list | length }}|{{ messages | selectattr('role', 'ne', 'user') | list | length }}|{{ messages | rejectattr('content', 'none') | list | length }}"),
    ("map_chains", "{{ messages | map(attribute='content') | map('length') | list }}|{{ messages | map(attribute='role') | map('upper') | join(' ') }}|{{ [' a', 'b '] | map('trim') | map('capitalize') | list }}"),
    ("sort_attribute_and_reverse", "{{ [{'n': 'b', 'v': 2}, {'n': 'a', 'v': 3}, {'n': 'c', 'v': 1}] | sort(attribute='v') | map(attribute='n') | join }}|{{ [{'n': 'b'}, {'n': 'A'}] | sort(attribute='n', reverse=true) | map(attribute='n') | join }}"),
    ("error_sort_mixed_types", "{{ [1, 'a'] | sort }}"),
    ("unique_attribute", "{{ messages | unique(attribute='role') | map(attribute='role') | list }}|{{ [{'r': 'A'}, {'r': 'a'}] | unique(attribute='r') | list | length }}"),
    ("sum_and_float_start", "{{ [1, 2] | sum(start=0.5) }}|{{ [true, true] | sum }}|{{ range(101) | sum }}"),
    ("indent_first_blank_combo", "{{ 'a\n\nb\n' | indent(2, first=true, blank=true) }}|{{ 'one' | indent(3, true) }}"),
    ("escape_in_concat", "{{ ('<' ~ 'b>') | e }}|{{ '&amp;' | escape }}"),
    ("capitalize_title_mixed", "{{ 'hELLO' | capitalize }}|{{ 'o\'neil mc-donald' | title }}|{{ '123abc' | title }}|{{ 'aBC dEF'.title() }}|{{ 'x1y z2'.title() }}"),
    ("upper_lower_special", "{{ 'ﬁ' | upper }}|{{ 'İ' | lower | length }}|{{ 'ǅ' | lower }}|{{ 'ǆx' | capitalize }}|{{ 'ǆx ﬁre'.title() }}|{{ 'ΟΔΟΣ ΣΑΣ Σ'.lower() }}|{{ 'ὈΔΥΣΣΕΎΣ'.lower() }}|{{ 'ŉ'.upper() }}|{{ 'ᾳ'.upper() }}|{{ 'ᾳ'.title() }}"),
    ("str_classes_unicode", "{{ '٣'.isdigit() }}{{ '²'.isdigit() }}{{ '²'.isdecimal() }}{{ '½'.isnumeric() }}{{ '日本'.isalpha() }}{{ 'ǅ'.isupper() }}{{ 'ǅ'.islower() }}{{ 'ß'.islower() }}{{ 'ABC١'.isupper() }}{{ 'x²'.isalnum() }}{{ ''.isspace() }}"),
    ("repr_unicode_printable", "{{ ['\u00a0', '\u200b', '\u2028', '\ue000', '\U0001F600', '\u0301', '\x85', '\uffff', 'é'] }}"),
    ("length_of_string_with_combining", "{{ 'ñ' | length }}|{{ 'n\u0303' | length }}"),
    ("dictsort_case", "{{ {'b': 1, 'A': 2, 'a': 3} | dictsort }}|{{ {'b': 1, 'A': 2, 'a': 3} | dictsort(case_sensitive=true) }}"),
    ("min_max_strings_case", "{{ ['B', 'a', 'C'] | min }}|{{ ['B', 'a', 'C'] | max }}|{{ ['B', 'a', 'C'] | max(case_sensitive=true) }}"),
    ("string_split_edge", "{{ 'a  b'.split(' ') }}|{{ '\u3000a\u3000b'.split() }}|{{ 'a,b,'.split(',') }}|{{ 'abc'.split('abc') }}|{{ 'a b c d'.split(None, 2) }}|{{ 'a b c d'.rsplit(' ', 2) }}"),
    ("startswith_tuple_and_empty", "{{ 'abc'.startswith(('x', 'a')) }}|{{ 'abc'.startswith('') }}|{{ ''.endswith('') }}|{{ 'abc'.endswith('abcd') }}"),
    ("strip_with_multichar_set", "{{ '<<x>>'.strip('<>') }}|{{ 'www.example.com'.lstrip('w.') }}|{{ 'é é'.strip('é') }}"),
    ("count_find_unicode", "{{ 'ééé'.count('é') }}|{{ '日本語日本'.find('語') }}|{{ '日本語日本'.rfind('日') }}|{{ 'aaa'.count('aa') }}"),
    ("replace_method_variants", "{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'abc'.replace('b', '') }}|{{ 'a.b.c'.replace('.', '\\n') }}"),
    ("dict_get_nested", "{{ messages[0].get('missing', {}).get('x', 'dflt') }}|{{ nested.get('a').get('b')[2].get('c') }}"),
    ("dict_keys_on_empty", "{{ {}.keys() | list }}|{{ {} | length }}|{{ {} is mapping }}|[{% for k in {} %}x{% endfor %}]"),
    ("range_with_negative_and_list_ops", "{{ range(-3, 3) | list }}|{{ range(0, 10, 4) | list | length }}|{{ (range(3) | list) + [9] }}"),
    ("dict_function_from_pairs", "{{ dict([('a', 1), ['b', 2]]) }}|{{ dict() }}|{{ dict(d) == d }}"),
    ("namespace_with_list_and_append_emulation", "{% set ns = namespace(items=[]) %}{% for m in messages %}{% set ns.items = ns.items + [m.role] %}{% endfor %}{{ ns.items | join(',') }}|{{ ns.items | length }}"),
    ("set_list_then_index", "{% set parts = 'a:b:c'.split(':') %}{{ parts[1] }}{{ parts | length }}{{ parts[-1] }}"),
    ("set_tuple_from_split", "{% set k, v = 'key=value'.split('=') %}{{ k }}|{{ v }}"),
    ("error_unpack_not_enough", "{% set a, b, c = [1, 2] %}"),
    ("filter_block_with_set_inside", "{% filter trim %}  {% set fx = 1 %}{{ fx }}  {% endfilter %}[{{ fx }}]"),
    ("with_shadowing", "{% set a = 'o' %}{% with a = 'i' %}{{ a }}{% set b = 2 %}{% endwith %}{{ a }}[{{ b }}]"),
    ("raise_exception_message_types", "{{ raise_exception(42) }}"),
    ("strftime_now_is_defined", "{{ strftime_now is defined }}|{{ raise_exception is defined }}|{{ namespace is callable }}|{{ range is defined }}"),
    ("error_raise_exception_in_macro", "{% macro check(m) %}{% if m.role not in ['user', 'assistant', 'system'] %}{{ raise_exception('bad role ' ~ m.role) }}{% endif %}ok{% endmacro %}{% for m in messages + [{'role': 'robot'}] %}{{ check(m) }}{% endfor %}"),
    ("tests_with_parentheses_args", "{{ 4 is divisibleby(2) }}|{{ 'a' is in(['a']) }}|{{ 2 is gt(1) }}|{{ 1 is sameas(1) }}|{{ 1000 is sameas 1000 }}"),
    ("test_precedence_with_not_and_filter", "{{ not messages is none }}|{{ messages | length is odd }}|{{ 'x' ~ 'y' is string }}|{{ -1 is number }}"),
    ("getattr_numeric_on_list", "{{ l.0 }}|{{ messages.1.role }}|[{{ l.9 }}]"),
    ("undefined_in_conditions", "{% if undefined_v %}a{% elif undefined_v is undefined %}b{% endif %}|{{ 'y' if undefined_v else 'n' }}|{{ undefined_v or 'fallback' }}|{{ undefined_v and 1 }}"),
    ("undefined_compare_is_error", "{{ undefined_v > 1 }}"),
    ("undefined_add_is_error", "{{ undefined_v + 'x' }}"),
    ("undefined_iteration_and_length", "{{ undefined_v | list | length }}|{% for i in undefined_v %}x{% else %}empty{% endfor %}"),
    ("literal_keywords_case", "{{ True and not False }}|{{ None is none }}|{{ TRUE is defined }}"),
    ("integer_division_negative", "{{ -1 // 3 }}|{{ 1 // -3 }}|{{ -7 % -3 }}|{{ 7.0 // 2 }}|{{ -7.0 % 3 }}|{{ 0 % 5 }}|{{ 2 ** 62 }}|{{ -2 ** 63 }}"),
    ("string_escape_sequences_more", "{{ '\\a\\b\\f\\v' | tojson }}|{{ '\\0' | length }}|{{ '\\101\\x42\\u0043\\U0001F600' }}|{{ 'a\\\nb' }}"),
    # --- errors ---
    ("error_type_add", "{{ 1 + 'a' }}"),
    ("error_concat_binds_tighter_than_plus", "{{ 1 + 2 ~ 3 + 4 }}"),
    ("error_iterate_int", "{% for x in 5 %}{% endfor %}"),
    ("error_division_by_zero", "{{ 1 / 0 }}"),
    ("error_compare_types", "{{ 'abc' < 1 }}"),
    ("error_call_undefined", "{{ undefined_fn() }}"),
    ("error_syntax_empty_if", "{% if %}{% endif %}"),
    ("error_syntax_unclosed_call", "{{ foo( }}"),
    ("error_stray_endif", "{% endif %}"),
    ("error_unclosed_for", "{% for x in l %}"),
    ("error_unknown_filter", "{{ x | nosuchfilter }}"),
    ("error_unknown_test", "{{ x is nosuchtest }}"),
    ("error_include", "{% include 'other.jinja' %}"),
    ("error_unterminated_string", "{{ 'abc }}"),
    ("error_unclosed_comment", "{# never closed"),
    ("error_unpack_mismatch", "{% for a, b in [[1, 2, 3]] %}{% endfor %}"),
    ("error_set_attr_non_namespace", "{% set d.x = 1 %}"),
    ("error_macro_too_many_args", "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}"),
    ("error_break_outside_loop", "{% break %}"),
]


def make_snippets():
    cases = []
    names = set()
    for name, source in SNIPPETS:
        if name in names:
            sys.exit(f"duplicate snippet name {name}")
        names.add(name)
        kind, text = render(source, BASE_CONTEXT)
        cases.append({"name": name, "template": source, kind: text})
    return {"context": BASE_CONTEXT, "cases": cases}


# ------------------------------------------------------------------------------------------------

def dump(obj):
    return json.dumps(obj, ensure_ascii=False, indent=1) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-dir", default=None,
                        help="folder with DeepSeek-V3's tokenizer_config.json and tokenizer.json")
    parser.add_argument("--check", action="store_true", help="compare with the committed fixtures, write nothing")
    parser.add_argument("--extra-templates", metavar="DIR",
                        help="also render every DIR/*.jinja (e.g. real model templates that cannot be committed) on "
                             "the templates.json conversations, into --extra-out; run the C++ test with "
                             "DS_CHAT_TEMPLATE_EXTRA_FIXTURES=<that file> to compare")
    parser.add_argument("--extra-out", metavar="FILE", default="/tmp/chat_template_extra.json")
    args = parser.parse_args()
    if args.extra_templates:
        templates = {}
        for fname in sorted(os.listdir(args.extra_templates)):
            if fname.endswith(".jinja"):
                with open(os.path.join(args.extra_templates, fname), encoding="utf-8") as f:
                    templates[fname[:-len(".jinja")]] = f.read()
        # Fixed values for variables some templates read (a date, thinking switches).
        extra = make_templates(templates, {"date_string": "26 Jul 2024", "enable_thinking": True, "thinking": True})
        with open(args.extra_out, "w", encoding="utf-8") as f:
            f.write(dump({"generator": "make_chat_template_fixtures.py --extra-templates", **extra}))
        print(f"wrote {args.extra_out}: {len(extra['cases'])} cases from {len(templates)} templates")
        return
    tokenizer_dir = args.tokenizer_dir or next(
        (d for d in DEFAULT_TOKENIZER_DIRS if os.path.exists(os.path.join(d, "tokenizer_config.json"))), None)
    if tokenizer_dir is None:
        sys.exit("no DeepSeek-V3 tokenizer folder found; pass --tokenizer-dir")

    meta = {"transformers_version": transformers.__version__, "jinja2_version": jinja2.__version__,
            "generator": "tools/reference/make_chat_template_fixtures.py"}
    outputs = {
        "deepseek_v3.json": {**meta, **make_deepseek(tokenizer_dir)},
        "templates.json": {**meta, **make_templates()},
        "snippets.json": {**meta, **make_snippets()},
    }
    os.makedirs(OUT_DIR, exist_ok=True)
    failed = False
    for fname, obj in outputs.items():
        path = os.path.join(OUT_DIR, fname)
        text = dump(obj)
        n = len(obj["cases"])
        errors = sum(1 for c in obj["cases"] if "error" in c)
        if args.check:
            old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
            status = "same" if old == text else "DIFFERENT"
            failed |= old != text
            print(f"{fname}: {n} cases ({errors} errors): {status}")
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {path}: {n} cases ({errors} expected errors)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
