"""orjson vs stdlib json on the hot-path documents: a chat request and a chat response.

    .venv/bin/python bench/json_libs.py [-n 20000]

Per document, µs per encode and per decode (best of 5 ``timeit`` repeats), in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit

import orjson

REQUEST = {
    "model": "bench-model",
    "messages": [
        {"role": "system", "content": "You are a helpful support assistant for Acme Corp. Answer "
                                      "briefly, cite the knowledge-base article ids you used."},
        {"role": "user", "content": "My invoice for March shows two charges for the same order. "
                                    "Can you tell me why and how to get a refund?"},
        {"role": "assistant", "content": "Could you share the order number?"},
        {"role": "user", "content": "Sure, it's ACME-2024-03-88121. Thanks — ünïcödé ok?"},
    ],
    "temperature": 0.2, "max_tokens": 512, "top_p": 1, "stream": False,
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
        "type": "object", "properties": {"answer": {"type": "string"},
                                         "citations": {"type": "array",
                                                       "items": {"type": "string"}}},
        "required": ["answer", "citations"]}}},
    "user": "tenant-42/user-7",
}
RESPONSE = {
    "id": "chatcmpl-9x2L7Qm1", "object": "chat.completion", "created": 1_717_000_000,
    "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_abc123",
    "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
        "role": "assistant", "refusal": None,
        "content": json.dumps({"answer": "The second charge is a pre-authorisation that is "
                               "released within 5 business days; no refund is needed. If it is "
                               "still there after that, reply here and we will refund it.",
                               "citations": ["KB-1042", "KB-2210"]})}}],
    "usage": {"prompt_tokens": 187, "completion_tokens": 61, "total_tokens": 248,
              "prompt_tokens_details": {"cached_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0}},
}
CHUNK = {"id": "chatcmpl-9x2L7Qm1", "object": "chat.completion.chunk", "created": 1_717_000_000,
         "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_abc123",
         "choices": [{"index": 0, "delta": {"content": " refund"}, "logprobs": None,
                      "finish_reason": None}]}


def per_op_us(fn, n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000, help="operations per timing (bounded 1e6)")
    args = p.parse_args()
    n = max(1, min(args.n, 1_000_000))
    compact = {"separators": (",", ":"), "ensure_ascii": False}

    print(f"command: `{' '.join([sys.executable, *sys.argv])}`")
    print(f"orjson {orjson.__version__}, python {sys.version.split()[0]}, n={n}, best of 5\n")
    print("| document | bytes | json dumps µs | orjson dumps µs | json loads µs | orjson loads µs "
          "| speed-up dumps | speed-up loads |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, doc in (("chat request", REQUEST), ("chat response", RESPONSE),
                      ("stream chunk", CHUNK)):
        raw = orjson.dumps(doc)
        text = raw.decode()
        jd = per_op_us(lambda d=doc: json.dumps(d, **compact).encode(), n)
        od = per_op_us(lambda d=doc: orjson.dumps(d), n)
        jl = per_op_us(lambda r=raw: json.loads(r), n)
        ol = per_op_us(lambda r=raw: orjson.loads(r), n)
        assert json.loads(text) == orjson.loads(raw)
        print(f"| {name} | {len(raw)} | {jd:.2f} | {od:.2f} | {jl:.2f} | {ol:.2f} "
              f"| {jd / od:.1f}x | {jl / ol:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
