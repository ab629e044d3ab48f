"""Small synthetic tasks a tiny model can learn in a few hundred steps, one per kind of task head; they are the
sample files shipped in `train/data/samples/` (the fine-tuning presets read them; `test_finetune_data.py` checks
that the shipped files are what `write_samples` writes).

- classification: a review of filler words with one sentiment keyword; the label is the keyword's polarity;
- ner: capitalised words are entities (a first name, maybe a surname: PER; a city: LOC), the rest `O`;
- qa: a context of filler and code words; the answer is the code word after the marker "the code is";
- choice: a question asks for a kind of thing (a fruit, an animal, a tool, a colour); the four choices are one of
  each kind, and the right one is of the kind asked;
- reverse (sequence to sequence): the target is the source's words in reverse order.

    python -m tests.train.synthetic_tasks train/data/samples     # rewrites the shipped files
"""

from __future__ import annotations

import json
import os
import random
import sys

FILLER = ("the film was long and the plot moved slowly while the actors spoke of music scenes and an ending we saw "
          "on friday with friends it was quite rather really a script by the director of this show").split()
POSITIVE = ("excellent", "wonderful", "delightful", "brilliant")
NEGATIVE = ("awful", "boring", "dreadful", "terrible")
FIRST_NAMES = ("Anna", "Omar", "Maria", "John", "Priya", "Kenji", "Sofia", "Lucas")
SURNAMES = ("Smith", "Garcia", "Chen", "Okafor", "Novak", "Haddad")
CITIES = ("Paris", "Lagos", "Tokyo", "Lima", "Oslo", "Cairo")
LOWER = "met visited called the team in yesterday friends from went to with and later home at".split()
CODES = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "rocket", "garden", "silver")
KINDS = {"fruit": ("apple", "pear", "plum", "mango", "cherry"), "animal": ("horse", "tiger", "sheep", "goose", "camel"),
         "tool": ("hammer", "saw", "drill", "wrench", "chisel"), "colour": ("red", "blue", "green", "yellow", "purple")}
QUESTIONS = ("which one is a {}", "pick the {}", "name the {} among these", "the {} is which")
WORDS = ("red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "rain", "snow",
         "fire", "wind")

SAMPLES = {  # file name -> (generator, rows, seed)
    "classification_train.jsonl": ("classification", 320, 1),
    "classification_eval.jsonl": ("classification", 80, 2),
    "ner_train.jsonl": ("ner", 320, 3),
    "ner_eval.jsonl": ("ner", 80, 4),
    "qa_train.jsonl": ("qa", 320, 5),
    "qa_eval.jsonl": ("qa", 80, 6),
    "choice_train.jsonl": ("choice", 320, 7),
    "choice_eval.jsonl": ("choice", 80, 8),
    "reverse_train.jsonl": ("reverse", 320, 9),
    "reverse_eval.jsonl": ("reverse", 80, 10),
}


def classification(rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.choices(FILLER, k=rng.randint(5, 12))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        out.append({"text": " ".join(words), "label": label})
    return out


def ner(rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 4)):
            for word in rng.choices(LOWER, k=rng.randint(1, 3)):
                tokens.append(word)
                tags.append("O")
            if rng.random() < 0.6:
                tokens.append(rng.choice(FIRST_NAMES))
                tags.append("B-PER")
                if rng.random() < 0.5:
                    tokens.append(rng.choice(SURNAMES))
                    tags.append("I-PER")
            else:
                tokens.append(rng.choice(CITIES))
                tags.append("B-LOC")
        out.append({"tokens": tokens, "tags": tags})
    return out


def qa(rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        words = [rng.choice(FILLER + list(CODES)) for _ in range(rng.randint(10, 36))]
        answer = rng.choice(CODES)
        at = rng.randint(0, len(words))
        words[at:at] = ["the", "code", "is", answer]
        context = " ".join(words)
        start = len(" ".join(words[:at + 3])) + 1
        assert context[start:start + len(answer)] == answer
        out.append({"question": "what is the code ?", "context": context,
                    "answers": {"text": [answer], "answer_start": [start]}})
    return out


def choice(rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        kinds = rng.sample(sorted(KINDS), 4)
        options = [rng.choice(KINDS[k]) for k in kinds]
        label = rng.randrange(4)
        out.append({"text": rng.choice(QUESTIONS).format(kinds[label]) + " ?", "choices": options, "label": label})
    return out


def reverse(rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        words = rng.choices(WORDS, k=rng.randint(3, 7))
        out.append({"source": " ".join(words), "target": " ".join(reversed(words))})
    return out


def rows_of(name: str) -> list[dict]:
    kind, count, seed = SAMPLES[name]
    return globals()[kind](count, seed)


def write_samples(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name in SAMPLES:
        with open(os.path.join(directory, name), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows_of(name))


if __name__ == "__main__":
    write_samples(sys.argv[1])
