"""Scored yes/no/maybe decisions: which questions get one, the option tokens, calibration offsets, and the
logits processor that scores the options in the prefill and makes the answer open with the chosen one.

The options are scored as lm-evaluation-harness scores PubMedQA: the log-likelihood of each option as the
start of the answer, highest wins. Each option ("Yes", "No", "Maybe") is one token in the tokenizers we
ship, so its log-likelihood is read from the logits of the first generated position, which the prefill
computes anyway: no extra model call. Optional per-mode offsets (calibration) are added before the argmax.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

OPTIONS = ("yes", "no", "maybe")
_WH = re.compile(r"^\W*(what|which|who|whom|whose|when|where|why|how|list|describe|explain|name)\b", re.I)
_AUX = re.compile(r"^\W*(is|are|was|were|do|does|did|can|could|should|would|will|has|have|had|may|might|must|"
                  r"shall)\b", re.I)


def calls_for_decision(question: str) -> bool:
    """Whether a free question reads as a yes/no/maybe question: it opens with an auxiliary verb ("Does
    ...?"), or it is a title-style question ending in "?" without a wh-word ("Statins: a cure for X?")."""
    q = question.strip()
    if not q or _WH.search(q):
        return False
    return bool(_AUX.search(q)) or q.endswith("?")


@dataclass
class Decision:
    """The chosen option with the probabilities it was chosen by (renormalised over the three options)."""

    label: str  # one of OPTIONS
    probs: dict[str, float]  # after calibration offsets: what decided
    raw_probs: dict[str, float]  # before offsets
    source: str = "scored"  # "scored" (option log-likelihoods) or "parsed" (read from free text)
    calibration: str | None = None  # which offsets were used, e.g. "medical-pubmedqa@v3 lora+rag"
    offsets: dict[str, float] = field(default_factory=dict)
    logprobs: dict[str, float] = field(default_factory=dict)  # the options' log-probs over the whole vocabulary


def option_ids(tokenizer) -> dict[str, int]:
    """Token id of each option as the first token of an answer ("Yes", "No", "Maybe")."""
    ids = {}
    for option in OPTIONS:
        toks = tokenizer(option.capitalize(), add_special_tokens=False)["input_ids"]
        ids[option] = toks[0]
    if len(set(ids.values())) != len(OPTIONS):
        raise ValueError(f"the tokenizer gives yes/no/maybe the same first token ({ids}); decisions cannot be scored")
    return ids


def _softmax(logps: dict[str, float]) -> dict[str, float]:
    top = max(logps.values())
    exp = {k: math.exp(v - top) for k, v in logps.items()}
    total = sum(exp.values())
    return {k: round(v / total, 4) for k, v in exp.items()}


def decide(logprobs: dict[str, float], offsets: dict[str, float] | None = None,
           calibration: str | None = None) -> Decision:
    """The decision from the options' log-probabilities plus optional offsets (missing offsets are 0)."""
    offsets = {k: float(v) for k, v in (offsets or {}).items() if k in OPTIONS}
    shifted = {k: v + offsets.get(k, 0.0) for k, v in logprobs.items()}
    label = max(OPTIONS, key=lambda k: shifted[k])
    return Decision(label, _softmax(shifted), _softmax(logprobs), "scored", calibration if offsets else None, offsets,
                    {k: round(v, 4) for k, v in logprobs.items()})


def choose(logits, ids: dict[str, int], offsets: dict[str, float] | None = None) -> tuple[dict[str, float], int]:
    """From one row of next-token logits: the options' log-probs (over the whole vocabulary) and the token id
    of the option chosen after `offsets`."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    logprobs = {k: float(logp[i]) for k, i in ids.items()}
    return logprobs, ids[decide(logprobs, offsets).label]


class DecisionProcessor:
    """A transformers LogitsProcessor: at the first generated position it records the options' log-probs for
    the rows that want a decision and allows only the chosen option's token there; later steps pass through.

    `rows[i]` is None (no decision for row i) or the offsets dict for row i ({} for none).
    """

    def __init__(self, ids: dict[str, int], rows: list[dict[str, float] | None]):
        self.ids, self.rows = ids, rows
        self.logprobs: list[dict[str, float] | None] = [None] * len(rows)
        self._done = False

    def __call__(self, input_ids, scores):
        if self._done or not any(r is not None for r in self.rows):
            return scores
        self._done = True
        for r, offsets in enumerate(self.rows):
            if offsets is None:
                continue
            self.logprobs[r], chosen = choose(scores[r], self.ids, offsets)
            keep = scores[r, chosen].clone()
            scores[r] = float("-inf")
            scores[r, chosen] = keep
        return scores
