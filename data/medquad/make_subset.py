"""Write data/medquad/qa_train_subset.jsonl: the MedQuAD training questions the shipped
`medical-consumer` adapter was trained on (a seeded sample; see README.md beside this file).

    python data/medquad/make_subset.py PATH/TO/medquad/qa_train.jsonl [--n 1200] [--seed 0]

Answers get the same whitespace as corpus.jsonl (runs of spaces and line breaks inside a paragraph
become one space, paragraphs are separated by one blank line), so the target text matches the passages.
"""
import argparse
import json
import random
import re
from pathlib import Path


def normalise(text: str) -> str:
    paragraphs = (re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paragraphs if p)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("qa_train")
    p.add_argument("--n", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).with_name("qa_train_subset.jsonl")))
    args = p.parse_args()
    rows = [json.loads(line) for line in open(args.qa_train, encoding="utf-8") if line.strip()]
    rows = [r for r in rows if normalise(r["long_answer"])]
    chosen = sorted(random.Random(args.seed).sample(range(len(rows)), args.n))
    with open(args.out, "w", encoding="utf-8") as f:
        for i in chosen:
            f.write(json.dumps({**rows[i], "long_answer": normalise(rows[i]["long_answer"])}, ensure_ascii=False) + "\n")
    print(f"{args.n} of {len(rows)} items -> {args.out}")


if __name__ == "__main__":
    main()
