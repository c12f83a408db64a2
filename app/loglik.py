"""Log-probabilities of raw text under the base model or one adapter: the scoring behind `/v1/completions`
with `echo` and `logprobs`, which log-likelihood evaluators (lm-evaluation-harness `local-completions`) use
to compare answer options.

The prompt is scored as it is: no chat template, and a BOS token only where the tokenizer adds one by itself
(a prompt given as token ids is used exactly as given). One forward pass gives every prompt token's
log-probability; a greedy continuation (`max_tokens` > 0) follows without sampling or repetition penalty.
The model runs under the engine's lock with the adapter selected by the backend, like every generation.

    scored = prompt_logprobs(engine, "Question: Is water wet?\nAnswer: yes", None, top=5)
    scored["token_logprobs"][0] is None; scored["top_logprobs"][1]  # {token text: log-prob}
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Scored:
    ids: list[int]  # the prompt's token ids, then the generated ones (an end-of-sequence token included)
    n_prompt: int
    token_logprobs: list[float | None]  # per id; None for the first (nothing before it)
    top_logprobs: list[dict[str, float] | None]  # per id: the top-N tokens' log-probs plus the id's own
    text: str = ""  # the generated text (special tokens left out, cut at a stop string)
    finish_reason: str = "length"  # "stop": end-of-sequence or a stop string; "length": max_tokens reached
    prompt_text: str = ""
    decoded: dict[int, str] = field(default_factory=dict, repr=False)


def encode(tokenizer, prompt: str | list[int]) -> list[int]:
    """A text prompt tokenized as the tokenizer does by default; token ids are kept as they are."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    vocab = len(tokenizer)
    bad = [t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt token id {bad[0]!r} is outside the tokenizer's vocabulary (0..{vocab - 1})")
    return list(prompt)


def _context_limit(engine) -> int | None:
    config = getattr(engine.base_model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def complete(engine, prompt: str | list[int], adapter: str | None = None, top: int = 0, max_tokens: int = 0,
             stop: tuple[str, ...] = ()) -> Scored:
    """Score the prompt and continue it greedily for up to `max_tokens` tokens (0: score only). `adapter` is
    resolved as a request's would be (its current version; a disabled one is refused, never replaced by the
    base model: `Engine.serving_key`)."""
    import torch

    tok = engine.tokenizer
    if tok is None or getattr(engine.backend, "kind", "local") != "local":
        raise ValueError("log-probabilities need the local backend (transformers); this engine forwards to a "
                         "remote server: ask that server's /v1/completions instead")
    ids = encode(tok, prompt)
    if not ids:
        raise ValueError("the prompt is empty (no tokens): give some text to score")
    limit = _context_limit(engine)
    if limit and len(ids) + max_tokens > limit:
        raise ValueError(f"the prompt has {len(ids)} tokens and asks for {max_tokens} more, over the model's "
                         f"context of {limit} tokens: shorten the prompt or lower max_tokens")
    eos = set(getattr(engine.backend, "eos", None) or [tok.eos_token_id])
    adapter_key = engine.serving_key(adapter)
    with engine._lock:  # the model and its active adapter are shared: nothing else runs it meanwhile
        with engine.backend._adapter_ctx(adapter_key), torch.inference_mode():
            model = engine.model
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # [T, V]: position t predicts t+1
            lse = torch.logsumexp(logits, dim=-1)
            steps = [(logits[-1], lse[-1])] if max_tokens >= 1 else []
            gen: list[int] = []
            if max_tokens == 1:
                gen = [int(logits[-1].argmax())]
            elif max_tokens > 1:
                gen, steps = _greedy(engine, model, ids, max_tokens, eos)
            prompt_lp = (logits[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0] - lse[:-1]).tolist()
            prompt_top = _top(logits[:-1], lse[:-1], top)
            gen_lp = [float(lg[t] - ls) for (lg, ls), t in zip(steps, gen)]
            gen_top = [_top(lg[None], ls[None], top)[0] for lg, ls in steps[:len(gen)]]
    scored = Scored(ids + gen, len(ids), [None, *prompt_lp, *gen_lp], [None], prompt_text=
                    prompt if isinstance(prompt, str) else tok.decode(ids))
    for pos, pairs in enumerate(prompt_top + gen_top, start=1):
        scored.top_logprobs.append(_named(tok, pairs, scored.ids[pos], scored.token_logprobs[pos], scored.decoded))
    _finish(scored, tok, gen, eos, max_tokens, stop)
    return scored


def _greedy(engine, model, ids: list[int], max_tokens: int, eos: set[int]):
    """Greedy continuation with the model's raw (unprocessed) logits of every step."""
    import torch
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0,
                           eos_token_id=sorted(eos), pad_token_id=engine.tokenizer.pad_token_id)
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         generation_config=cfg, output_logits=True, return_dict_in_generate=True)
    gen = out.sequences[0, len(ids):].tolist()
    steps = []
    for lg in out.logits[:len(gen)]:
        lg = lg[0].float()
        steps.append((lg, torch.logsumexp(lg, dim=-1)))
    return gen, steps


def _top(logits, lse, n: int) -> list[list[tuple[int, float]]]:
    if n <= 0:
        return [[] for _ in range(logits.shape[0])]
    values, index = logits.topk(n, dim=-1)
    values = (values - lse[:, None]).tolist()
    return [list(zip(i, v)) for i, v in zip(index.tolist(), values)]


def _piece(tok, i: int, cache: dict[int, str]) -> str:
    if i not in cache:
        cache[i] = tok.decode([i])
    return cache[i]


def _named(tok, pairs, own: int, own_lp: float, cache) -> dict[str, float]:
    """{token text: log-prob} of the top-N plus the token itself (as vLLM does); equal texts keep the larger."""
    out: dict[str, float] = {}
    for i, lp in [*pairs, (own, own_lp)]:
        text = _piece(tok, i, cache)
        out[text] = max(out.get(text, float("-inf")), float(lp))
    return out


def _finish(scored: Scored, tok, gen: list[int], eos: set[int], max_tokens: int, stop: tuple[str, ...]) -> None:
    scored.text = tok.decode(gen, skip_special_tokens=True)
    scored.finish_reason = "stop" if gen and gen[-1] in eos else "length"
    cuts = [scored.text.find(s) for s in stop if s and s in scored.text]
    if cuts:
        scored.text, scored.finish_reason = scored.text[:min(cuts)], "stop"
        # keep the tokens up to the one that completed the stop string
        for n in range(1, len(gen) + 1):
            if len(tok.decode(gen[:n], skip_special_tokens=True)) >= min(cuts):
                del scored.ids[scored.n_prompt + n:], scored.token_logprobs[scored.n_prompt + n:], \
                    scored.top_logprobs[scored.n_prompt + n:]
                break
    if max_tokens == 0:
        scored.finish_reason = "length"


def openai_logprobs(tok, scored: Scored, echo: bool) -> dict:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset. Offsets
    count characters of the concatenated token texts (equal to the text except where a token splits a
    multi-byte character); without echo they start after the prompt, as OpenAI's do."""
    start = 0 if echo else scored.n_prompt
    pieces = [_piece(tok, i, scored.decoded) for i in scored.ids]
    offsets, pos = [], 0
    for piece in pieces:
        offsets.append(pos)
        pos += len(piece)
    return {"tokens": pieces[start:], "token_logprobs": scored.token_logprobs[start:],
            "top_logprobs": scored.top_logprobs[start:], "text_offset": offsets[start:]}


def prompt_logprobs(engine, text: str | list[int], adapter: str | None = None, top: int = 0) -> dict:
    """One forward pass over the raw prompt: the OpenAI-shaped logprobs of every prompt token (first None)."""
    scored = complete(engine, text, adapter, top=top, max_tokens=0)
    return openai_logprobs(engine.tokenizer, scored, echo=True)
