"""Optional faithfulness judge: is an answer supported by the passages it was given?

A local causal LM is asked a Yes/No question and the score is P("Yes") against P("No") read from the
next-token logits, so there is no text to parse and no way to produce NaN (RAGAS-style judges that
parse free text from small local models often do). Answers given no passages score None.

    judge = FaithfulnessJudge()            # default: the same base model (app.models.load)
    judge.score_many([(answer.text, answer.passages), ...])  -> [0.83, None, ...]
"""
from __future__ import annotations

import math
from typing import Sequence

from app.prompts import format_passages, render
from app.types import Passage

SYSTEM = ("You check answers against sources. Reply Yes if every statement in the answer is supported by "
          "the passages, otherwise reply No. Reply with one word: Yes or No.")


class FaithfulnessJudge:
    def __init__(self, model: str | None = None, batch_size: int = 4, max_passage_chars: int = 1200):
        from app.models import load

        self.model, self.tokenizer, self.info = load(model)
        self.name = self.info.name
        self.batch_size = max(1, batch_size)
        self.max_passage_chars = max_passage_chars
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the question at the end when a prompt is too long
        self.yes_ids = self._word_ids(("Yes", " Yes", "yes", " yes", "YES"))
        self.no_ids = self._word_ids(("No", " No", "no", " no", "NO"))
        if not self.yes_ids or not self.no_ids or set(self.yes_ids) & set(self.no_ids):
            raise ValueError(f"judge model {self.name}: its tokenizer has no single tokens for Yes/No; "
                             f"pass --judge with another model")

    def _word_ids(self, words: Sequence[str]) -> list[int]:
        ids = set()
        for w in words:
            toks = self.tokenizer.encode(w, add_special_tokens=False)
            if len(toks) == 1:
                ids.add(toks[0])
        return sorted(ids)

    def prompt(self, answer: str, passages: Sequence[Passage]) -> str:
        user = (f"Passages:\n\n{format_passages(list(passages), self.max_passage_chars)}\n\n"
                f"Answer to check:\n{answer.strip() or '(empty answer)'}\n\n"
                "Is the answer supported by the passages? Reply Yes or No.")
        return render(self.tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])

    def score(self, answer: str, passages: Sequence[Passage]) -> float | None:
        return self.score_many([(answer, passages)])[0]

    def score_many(self, pairs: Sequence[tuple[str, Sequence[Passage]]]) -> list[float | None]:
        """P(Yes) / (P(Yes) + P(No)) per (answer, passages) pair; None where no passages were given."""
        import torch

        scores: list[float | None] = [None] * len(pairs)
        todo = [i for i, (_, passages) in enumerate(pairs) if passages]
        limit = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        for lo in range(0, len(todo), self.batch_size):
            idx = todo[lo:lo + self.batch_size]
            enc = self.tokenizer([self.prompt(*pairs[i]) for i in idx], return_tensors="pt", padding=True,
                                 truncation=True, max_length=limit, add_special_tokens=False)
            with torch.inference_mode():
                logits = self.model(**enc).logits[:, -1, :].double()
            logp = torch.log_softmax(logits, dim=-1)
            yes = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
            no = torch.logsumexp(logp[:, self.no_ids], dim=-1)
            for i, y, n in zip(idx, yes.tolist(), no.tolist()):
                scores[i] = _two_way(y, n)
        return scores


def _two_way(log_yes: float, log_no: float) -> float:
    """P(yes) among {yes, no}, computed stably; 0.5 when the model gives no usable signal."""
    if not (math.isfinite(log_yes) and math.isfinite(log_no)):
        if math.isfinite(log_yes):
            return 1.0
        return 0.0 if math.isfinite(log_no) else 0.5
    d = log_no - log_yes
    p = 1.0 / (1.0 + math.exp(d)) if d < 700 else 0.0
    return min(1.0, max(0.0, p))
