"""The one generation core: encode a chat prompt as training rendered it, generate a batch (greedy or
sampled, optionally streamed), and decode each answer up to its stop. `tunelab eval`'s generative
metrics, `generate`, `chat`, `predict`, export's generation config and the server all use it, so
they stop on the same tokens and cut answers the same way.

Decoder-only models continue the last position of each row, so prompts are padded on the LEFT: with
right padding a short prompt would be continued after its pad tokens. Prompts are batched in order
of length (less padding) and the answers put back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tunelab.decoding import greedy_decode, runs_in_loop

# Rendered after a probe answer to find the template's end-of-turn token (see end_of_turn_ids).
_PROBE = "tunelab probe answer"


def encode_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    answer_start: str = "",
) -> list[int]:
    """The conversation and the assistant's generation prompt, as token ids, rendered as in training (with
    the functions the model may call, as the template writes them). `answer_start` begins the answer
    (a forced tool call): encoded with the prompt as one text, so its tokens are those training saw."""
    options = {"tools": list(tools)} if tools else {}
    rendered = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **options
    )
    text = str(rendered) + answer_start
    # The template already wrote any BOS it wants; letting the tokenizer add one would double it (and
    # training encoded the rendered text the same way).
    ids: list[int] = tokenizer(str(text), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the chat template rendered {list(messages)!r} as no tokens")
    return ids


def is_encoder_decoder(model: Any) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def encode_prompt(
    model: Any,
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """A prompt as training encoded it: a chat rendered with its template for a decoder, the source
    text with the tokenizer's special tokens for an encoder-decoder (data/seq2seq.py)."""
    if is_encoder_decoder(model):
        from tunelab.data.seq2seq import encode_source, source_text

        return encode_source(tokenizer, source_text(messages))
    return encode_chat(tokenizer, messages, tools)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The token the chat template writes right after an assistant answer (`<|im_end|>` for chatml,
    `<|eot_id|>` for llama3, EOS for alpaca), when it is a single special or added token; else [].

    Found by rendering a probe conversation rather than from a table of known markers, so a model's
    own template works too. A model that ends answers with it never emits EOS, so generation must
    stop at it as well.
    """
    if not getattr(tokenizer, "chat_template", None):
        return []
    probe = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": _PROBE}]
    try:
        rendered = str(tokenizer.apply_chat_template(probe, tokenize=False))
    except Exception:  # a template with stricter rules (say, a required system turn): no marker known
        return []
    at = rendered.rfind(_PROBE)
    after = rendered[at + len(_PROBE) :].lstrip() if at >= 0 else ""
    if not after:
        return []
    first = tokenizer(after, add_special_tokens=False)["input_ids"][:1]
    atomic = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return [int(first[0])] if first and first[0] in atomic else []


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS first (it is the pad fallback), every EOS of
    the generation config (Llama 3 lists several), and the template's end-of-turn token."""
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        configured = [configured]
    candidates = [tokenizer.eos_token_id, *(configured or []), *end_of_turn_ids(tokenizer)]
    stops = list(dict.fromkeys(int(t) for t in candidates if t is not None))
    if not stops:
        raise ValueError(
            "neither the tokenizer nor the model defines an EOS token, so generation cannot stop"
        )
    return stops


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    batch_size: int = 8,
    streamer: Any = None,
    extra_stops: Sequence[int] = (),
    top_p: float | None = None,
    top_k: int | None = None,
) -> list[str]:
    """One answer per encoded prompt, in input order: greedy (temperature 0) or sampled (with `top_p`
    and `top_k` where given, else the model's generation_config), stopping at `stop_token_ids` (and
    `extra_stops`), decoded without special tokens and stripped. A `streamer` (transformers'
    TextStreamer) sees the tokens as they come; it needs one prompt at a time."""
    if batch_size < 1 or max_new_tokens < 1 or temperature < 0:
        raise ValueError(
            f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be >= 1, and "
            f"temperature ({temperature}) >= 0"
        )
    if streamer is not None and len(prompts) != 1:
        raise ValueError("a streamer follows one answer: generate one prompt at a time")
    stops = [*stop_token_ids(tokenizer, getattr(model, "generation_config", None)), *extra_stops]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    # An encoder reads its input whole, so it is padded on the right (a BART's learned positions would
    # shift under left padding); its output starts a new sequence after the decoder's start token.
    encoder_decoder = is_encoder_decoder(model)
    pad = _right_pad if encoder_decoder else left_pad
    answers = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = model.training
    model.eval()  # no dropout: answers must not depend on the mode the caller left the model in
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = pad([prompts[i] for i in rows], pad_id)
            options = decoding(max_new_tokens, temperature, stops, pad_id, top_p, top_k)
            new = _new_tokens(model, input_ids.to(device), attention_mask.to(device), streamer, options)
            for i, new_tokens in zip(rows, new, strict=True):
                answers[i] = decode_answer(tokenizer, new_tokens, stops)
    finally:
        model.train(was_training)
    return answers


def _new_tokens(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, streamer: Any, options: dict[str, Any]
) -> list[list[int]]:
    """Each row's generated tokens: greedy and unstreamed in tunelab's own loop (decoding.py: faster, the
    same tokens), anything else through transformers' generate."""
    if not options["do_sample"] and streamer is None and runs_in_loop(model):
        return greedy_decode(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=options["max_new_tokens"],
            stops=options["eos_token_id"],
            pad_id=options["pad_token_id"],
        )
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, streamer=streamer, **options)
    # An encoder-decoder's output starts after the decoder's start token; a decoder's after the prompt.
    new = output[:, 1:] if is_encoder_decoder(model) else output[:, input_ids.shape[1] :]
    return [list(row) for row in new.tolist()]


def decode_answer(tokenizer: Any, new_tokens: list[int], stops: Sequence[int]) -> str:
    # Cut at the first stop token ourselves: a stop token that is not a special token (or a pad that
    # is an ordinary token) would otherwise survive skip_special_tokens.
    stop_set = set(stops)
    end = next((k for k, token in enumerate(new_tokens) if token in stop_set), len(new_tokens))
    return str(tokenizer.decode(new_tokens[:end], skip_special_tokens=True)).strip()


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, width - len(row) :] = 1
    return input_ids, attention_mask


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tunelab.data.tokenize import pad_rows

    width = max(len(row) for row in rows)
    return pad_rows(rows, width, pad_id), pad_rows([[1] * len(row) for row in rows], width, 0)


def decoding(
    max_new_tokens: int,
    temperature: float,
    stops: list[int],
    pad_id: int,
    top_p: float | None = None,
    top_k: int | None = None,
) -> dict[str, Any]:
    # Passed as keyword arguments, not as a fresh GenerationConfig: transformers then marks only these
    # as set by us, so sampling values inherited from the model's generation_config.json (temperature,
    # top_p) are ignored quietly when greedy instead of warning that do_sample is off. The server passes
    # top_p and top_k=0 (no top-k cut) so that OpenAI's sampling parameters mean what they say there.
    sampling: dict[str, Any] = {"do_sample": False, "num_beams": 1}
    if temperature > 0:
        chosen = {"top_p": top_p, "top_k": top_k}
        sampling = {"do_sample": True, "temperature": temperature}
        sampling.update({key: value for key, value in chosen.items() if value is not None})
    return {**sampling, "max_new_tokens": max_new_tokens, "eos_token_id": stops, "pad_token_id": pad_id}
