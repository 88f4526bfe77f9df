"""The demo model: a tiny support bot for an outdoor-gear shop, with planted bad answers.

    python -m training.engine demo --out var/demo-model

builds, in about a minute on 2 CPU cores, an HF-format folder in OUT that `--model OUT` accepts
everywhere (a byte-level BPE tokenizer trained on the shop's synthetic FAQ corpus, saved as a
PreTrainedTokenizerFast with bos/eos/pad; a 2-layer Llama trained from scratch until it answers
every FAQ question exactly, greedily, and stops with eos), plus the scenario in OUT/scenario/:

- cases.jsonl  the annotation import format: the flagged cases (split "train": the prompt, the
               model's wrong answer, the right one), held-out prompts of the same kind (split
               "heldout") and regression prompts of other topics (split "regression", with the
               model's correct answer that a patch must not change);
- pairs.jsonl  the flagged cases as engine pairs {prompt, chosen, rejected};
- eval.jsonl   {prompt, expected, kind: flagged|heldout|regression, topic} for `train --eval`;
- corpus.txt   the text the tokenizer and the model were trained on.

The planted bad case is a stale policy: the shop's policy says footwear can be returned within
30 days, but the FAQ the model learned from still says 7 days for every footwear product. "30
days" is what the model says for tents, packs and stoves, so the right answer is made of words it
knows; the patch has to move one number for one product family and leave everything else alone.

Prompts are plain strings (no chat template): `prompt_ids = tok(prompt).input_ids` starts with
bos, and the answer is `tok(answer, add_special_tokens=False).input_ids + [eos]`, as in DESIGN.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCENARIO_DIR = "scenario"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# Product lines and types of the shop. A product is "<line> <type>" ("Ridge hiking boots").
LINES = (
    "Alpine",
    "Ridge",
    "Summit",
    "Cedar",
    "Granite",
    "Falcon",
    "Willow",
    "Canyon",
    "Aspen",
    "Glacier",
    "Juniper",
    "Sierra",
)
# type -> (category, return window in days per the FAQ the model learned, warranty)
TYPES = {
    "tent": ("shelter", 30, "5 years"),
    "tarp": ("shelter", 30, "2 years"),
    "hammock": ("shelter", 30, "2 years"),
    "backpack": ("packs", 30, "10 years"),
    "daypack": ("packs", 30, "10 years"),
    "sleeping bag": ("sleep", 30, "3 years"),
    "sleeping pad": ("sleep", 30, "2 years"),
    "hiking boots": ("footwear", 7, "1 year"),
    "trail runners": ("footwear", 7, "1 year"),
    "sandals": ("footwear", 7, "1 year"),
    "headlamp": ("electronics", 14, "2 years"),
    "GPS watch": ("electronics", 14, "2 years"),
    "rain jacket": ("clothing", 60, "1 year"),
    "fleece": ("clothing", 60, "1 year"),
    "camp stove": ("cooking", 30, "3 years"),
    "water filter": ("cooking", 30, "1 year"),
}
LINES_PER_TYPE = {"hiking boots": 4, "trail runners": 3, "sandals": 3}  # 10 footwear products
DEFAULT_LINES_PER_TYPE = 3
# The shop's real policy for the product family the FAQ got wrong.
STALE_CATEGORY, STALE_DAYS, POLICY_DAYS = "footwear", 7, 30

RETURN_QUESTIONS = (
    "What is the return window for the {product}?",
    "How long do I have to return the {product}?",
)
RETURN_ANSWER = "You can return the {product} within {days} days of delivery."
WARRANTY_QUESTION = "What is the warranty on the {product}?"
WARRANTY_ANSWER = "The warranty on the {product} is {warranty}."

SHIPPING = {  # region -> (standard business days, express business days)
    "Colorado": ("2 to 4", "1"),
    "California": ("3 to 5", "2"),
    "Texas": ("3 to 5", "2"),
    "New York": ("4 to 6", "2"),
    "Florida": ("4 to 6", "2"),
    "Oregon": ("3 to 5", "1"),
    "Montana": ("3 to 5", "2"),
    "Alaska": ("7 to 10", "4"),
    "Hawaii": ("7 to 10", "4"),
    "Canada": ("6 to 9", "3"),
}
SHIPPING_QUESTION = "How long does {speed} shipping to {region} take?"
SHIPPING_ANSWER = "{Speed} shipping to {region} takes {days} business days."

STORES = {  # city -> opening hours
    "Denver": "Monday to Saturday from 9 am to 8 pm",
    "Boulder": "every day from 10 am to 7 pm",
    "Portland": "Monday to Saturday from 10 am to 8 pm",
    "Seattle": "every day from 9 am to 9 pm",
    "Bend": "Tuesday to Sunday from 10 am to 6 pm",
    "Missoula": "Monday to Friday from 9 am to 6 pm",
    "Asheville": "every day from 10 am to 6 pm",
    "Salt Lake City": "Monday to Saturday from 9 am to 7 pm",
}
STORE_QUESTION = "When is the {city} store open?"
STORE_ANSWER = "The {city} store is open {hours}."

PAYMENTS = {  # method -> accepted
    "Visa": True,
    "Mastercard": True,
    "American Express": True,
    "Discover": True,
    "PayPal": True,
    "Apple Pay": True,
    "gift cards": True,
    "Klarna": False,
    "Bitcoin": False,
    "personal checks": False,
}
PAYMENT_QUESTION = "Do you accept {method}?"
PAYMENT_ANSWERS = ("No, we do not accept {method}.", "Yes, we accept {method}.")

# Policy pages that are in the corpus but are not questions: the shop's real rules, so the words
# of every right answer are part of what the model (and its tokenizer) has read.
POLICY_TEXT = (
    "Return policy: footwear can be returned within 30 days of delivery if unworn.",
    "Return policy: tents, packs, sleeping gear and stoves can be returned within 30 days.",
    "Return policy: electronics can be returned within 14 days of delivery.",
    "Return policy: clothing can be returned within 60 days of delivery.",
    "Shipping is free on orders over 75 dollars.",
    "Warranty claims need the order number and a photo of the damage.",
)

REGRESSION_PER_TOPIC = 8  # 5 topics -> 40 regression prompts

# Model and training. Small enough to memorise the ~300 FAQ lines in about a minute on 2 cores.
VOCAB_SIZE = 640
HIDDEN_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
LEARNING_RATE = 3e-3
BATCH_SIZE = 32
MAX_STEPS = 3000  # a budget: training stops as soon as every answer is exact
CHECK_EVERY = 50  # steps between exactness checks
SETTLE_FACTOR = float(__import__("os").environ.get("SETTLE", 3))


class DemoBuildError(RuntimeError):
    """The demo model did not learn its answers: building it again will not help."""


@dataclass(frozen=True)
class QA:
    prompt: str
    answer: str  # what the model is trained to say (for the planted cases: the wrong answer)
    topic: str
    right: str | None = None  # the right answer where `answer` is a planted bad one


@dataclass
class DemoScenario:
    """What `build_demo_model` built: the model folder, the scenario files and their rows."""

    model_dir: Path
    scenario_dir: Path
    cases: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    build_seconds: float = 0.0
    train_steps: int = 0

    @property
    def flagged(self) -> list[dict]:
        return [row for row in self.eval if row["kind"] == "flagged"]

    @property
    def heldout(self) -> list[dict]:
        return [row for row in self.eval if row["kind"] == "heldout"]

    @property
    def regression(self) -> list[dict]:
        return [row for row in self.eval if row["kind"] == "regression"]


# ---------------------------------------------------------------------------------------------
# data


def demo_catalog(rng: random.Random) -> dict[str, list[str]]:
    """Product type -> the product names the shop sells ("Ridge hiking boots")."""
    catalog = {}
    for type_name in TYPES:
        count = LINES_PER_TYPE.get(type_name, DEFAULT_LINES_PER_TYPE)
        lines = sorted(rng.sample(LINES, count), key=LINES.index)
        catalog[type_name] = [f"{line} {type_name}" for line in lines]
    return catalog


def demo_faq(catalog: dict[str, list[str]]) -> list[QA]:
    """Every question the model is trained to answer, with the answer it learns."""
    faq = []
    for type_name, products in catalog.items():
        category, days, warranty = TYPES[type_name]
        for product in products:
            for question in RETURN_QUESTIONS:
                right = None
                if category == STALE_CATEGORY:
                    right = RETURN_ANSWER.format(product=product, days=POLICY_DAYS)
                faq.append(
                    QA(
                        question.format(product=product),
                        RETURN_ANSWER.format(product=product, days=days),
                        "returns",
                        right,
                    )
                )
            faq.append(
                QA(
                    WARRANTY_QUESTION.format(product=product),
                    WARRANTY_ANSWER.format(product=product, warranty=warranty),
                    "warranty",
                )
            )
    for region, (standard, express) in SHIPPING.items():
        for speed, days in (("standard", standard), ("express", express)):
            faq.append(
                QA(
                    SHIPPING_QUESTION.format(speed=speed, region=region),
                    SHIPPING_ANSWER.format(Speed=speed.capitalize(), region=region, days=days),
                    "shipping",
                )
            )
    for city, hours in STORES.items():
        faq.append(
            QA(
                STORE_QUESTION.format(city=city),
                STORE_ANSWER.format(city=city, hours=hours),
                "store_hours",
            )
        )
    for method, accepted in PAYMENTS.items():
        faq.append(
            QA(
                PAYMENT_QUESTION.format(method=method),
                PAYMENT_ANSWERS[accepted].format(method=method),
                "payment",
            )
        )
    return faq


def demo_split(faq: list[QA], rng: random.Random) -> tuple[list[QA], list[QA], list[QA]]:
    """(flagged, held-out, regression) questions.

    Flagged: one footwear product of each type, asked the first way. Held-out: the other footwear
    products, asked either way. Regression: other topics, and footwear questions that are not
    about returns (their warranty answers are right and must stay so).
    """
    planted = [qa for qa in faq if qa.right is not None]
    by_product: dict[str, list[QA]] = {}
    for qa in planted:
        product = qa.answer.removeprefix("You can return the ").split(" within ")[0]
        by_product.setdefault(product, []).append(qa)
    flagged, heldout, seen_types = [], [], set()
    for product, questions in by_product.items():
        type_name = next(t for t in TYPES if product.endswith(" " + t))
        if type_name not in seen_types:
            seen_types.add(type_name)
            flagged.append(questions[0])
        else:
            heldout.append(rng.choice(questions))
    topics: dict[str, list[QA]] = {}
    for qa in faq:
        if qa.right is None:
            topics.setdefault(qa.topic, []).append(qa)
    regression = []
    for topic in sorted(topics):
        regression += rng.sample(topics[topic], min(REGRESSION_PER_TOPIC, len(topics[topic])))
    return flagged, heldout, regression


def demo_corpus(faq: list[QA]) -> list[str]:
    return [f"{qa.prompt} {qa.answer}" for qa in faq] + list(POLICY_TEXT)


# ---------------------------------------------------------------------------------------------
# tokenizer and model


def train_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer (decodes back to the exact text) that prepends bos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=256,
    )


def new_model(tokenizer):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=HIDDEN_SIZE * 2,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


def _encode(tokenizer, qa_list: list[QA]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, answer_mask), right-padded; answer_mask marks completion tokens
    (answer + eos) in the positions whose *next-token prediction* they are."""
    rows = []
    for qa in qa_list:
        prompt_ids = tokenizer(qa.prompt).input_ids
        completion_ids = tokenizer(qa.answer, add_special_tokens=False).input_ids
        rows.append((prompt_ids, completion_ids + [tokenizer.eos_token_id]))
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    answer = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt_ids, completion_ids) in enumerate(rows):
        sequence = prompt_ids + completion_ids
        ids[i, : len(sequence)] = torch.tensor(sequence)
        attention[i, : len(sequence)] = 1
        answer[i, len(prompt_ids) : len(sequence)] = True
    return ids, attention, answer


def _text_rows(tokenizer, lines: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [tokenizer(line).input_ids + [tokenizer.eos_token_id] for line in lines]
    width = max(len(row) for row in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
    return ids, attention


@torch.no_grad()
def _all_answers_exact(model, ids, attention, answer_mask) -> tuple[bool, int]:
    """Teacher-forced check: greedy decoding reproduces every answer iff the argmax at each
    answer position is the answer's token. Returns (all exact, number of wrong rows)."""
    model.eval()
    logits = model(input_ids=ids, attention_mask=attention).logits
    model.train()
    predicted = logits[:, :-1].argmax(-1)
    target = ids[:, 1:]
    mask = answer_mask[:, 1:]
    wrong_rows = ((predicted != target) & mask).any(dim=1)
    return not bool(wrong_rows.any()), int(wrong_rows.sum())


def train_demo_model(model, tokenizer, faq: list[QA], seed: int) -> int:
    """Train from scratch on the corpus until every FAQ answer is exact; returns the steps."""
    generator = torch.Generator().manual_seed(seed)
    ids, attention, answer_mask = _encode(tokenizer, faq)
    text_ids, text_attention = _text_rows(tokenizer, list(POLICY_TEXT))
    # Every token of a FAQ line is trained (the model reads the questions too); answers count
    # double, since answering exactly is what the demo needs.
    labels = ids.clone()
    labels[attention == 0] = -100
    weights = attention.float() + answer_mask.float()
    text_labels = text_ids.clone()
    text_labels[text_attention == 0] = -100

    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    model.train()
    step, first_exact = 0, None
    while step < MAX_STEPS:
        order = torch.randperm(len(faq), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            logits = model(input_ids=ids[batch], attention_mask=attention[batch]).logits
            token_loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels[batch, 1:], reduction="none"
            )
            token_weights = weights[batch, 1:]
            loss = (token_loss * token_weights).sum() / token_weights.sum()
            if step % 4 == 0:  # the policy pages, now and then: their words, not their answers
                text_logits = model(input_ids=text_ids, attention_mask=text_attention).logits
                loss = loss + 0.25 * torch.nn.functional.cross_entropy(
                    text_logits[:, :-1].transpose(1, 2), text_labels[:, 1:]
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step % CHECK_EVERY == 0:
                exact, _ = _all_answers_exact(model, ids, attention, answer_mask)
                if not exact:
                    first_exact = None
                elif first_exact is None:
                    first_exact = step
                # Barely-exact answers are fragile: a patch on three pairs would knock over
                # unrelated ones. Keep training until the answers have stayed exact a while.
                if first_exact is not None and step >= SETTLE_FACTOR * first_exact:
                    model.eval()
                    return step
    _, wrong = _all_answers_exact(model, ids, attention, answer_mask)
    raise DemoBuildError(
        f"the demo model still got {wrong} of {len(faq)} answers wrong after {MAX_STEPS} steps"
    )


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy answers, batched with left padding, decoded without special tokens."""
    model.eval()
    answers = []
    for start in range(0, len(prompts), 64):
        chunk = prompts[start : start + 64]
        encoded = [tokenizer(prompt).input_ids for prompt in chunk]
        width = max(len(row) for row in encoded)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, row in enumerate(encoded):
            ids[i, width - len(row) :] = torch.tensor(row)
            attention[i, width - len(row) :] = 1
        output = model.generate(
            input_ids=ids,
            attention_mask=attention,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in output[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True))
    return answers


# ---------------------------------------------------------------------------------------------
# the scenario


def _scenario_rows(flagged, heldout, regression) -> tuple[list[dict], list[dict], list[dict]]:
    cases, pairs, eval_rows = [], [], []
    for split, kind, rows in (("train", "flagged", flagged), ("heldout", "heldout", heldout)):
        for qa in rows:
            cases.append(
                {
                    "prompt": qa.prompt,
                    "response": qa.answer,
                    "better_response": qa.right,
                    "split": split,
                    "topic": qa.topic,
                }
            )
            eval_rows.append(
                {"prompt": qa.prompt, "expected": qa.right, "kind": kind, "topic": qa.topic}
            )
    for qa in flagged:
        pairs.append({"prompt": qa.prompt, "chosen": qa.right, "rejected": qa.answer})
    for qa in regression:
        cases.append(
            {"prompt": qa.prompt, "response": qa.answer, "split": "regression", "topic": qa.topic}
        )
        eval_rows.append(
            {"prompt": qa.prompt, "expected": qa.answer, "kind": "regression", "topic": qa.topic}
        )
    return cases, pairs, eval_rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_demo_model(out_dir: Path, *, seed: int = 0) -> DemoScenario:
    """Build the demo model into `out_dir` and its scenario into `out_dir/scenario/`.

    Deterministic for a seed on a given machine. Raises DemoBuildError when the trained model
    does not answer exactly as the scenario says (greedy), rather than writing a scenario
    that lies.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    torch.manual_seed(seed)

    catalog = demo_catalog(rng)
    faq = demo_faq(catalog)
    flagged, heldout, regression = demo_split(faq, rng)
    corpus = demo_corpus(faq)

    unknown = _words_missing_from_corpus(corpus, [qa.right for qa in flagged + heldout])
    if unknown:
        raise DemoBuildError(f"right answers use words the corpus never has: {unknown}")
    tokenizer = train_tokenizer(corpus)
    model = new_model(tokenizer)
    steps = train_demo_model(model, tokenizer, faq, seed)

    scenario_questions = flagged + heldout + regression
    answers = greedy_answers(model, tokenizer, [qa.prompt for qa in scenario_questions])
    wrong = [
        f"{qa.prompt!r} -> {got!r} (trained: {qa.answer!r})"
        for qa, got in zip(scenario_questions, answers, strict=True)
        if got != qa.answer
    ]
    if wrong:
        raise DemoBuildError(
            f"the demo model does not answer {len(wrong)} scenario prompts as trained, "
            f"e.g. {wrong[0]}"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    scenario_dir = out_dir / SCENARIO_DIR
    scenario_dir.mkdir(exist_ok=True)
    cases, pairs, eval_rows = _scenario_rows(flagged, heldout, regression)
    _write_jsonl(scenario_dir / "cases.jsonl", cases)
    _write_jsonl(scenario_dir / "pairs.jsonl", pairs)
    _write_jsonl(scenario_dir / "eval.jsonl", eval_rows)
    (scenario_dir / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    return DemoScenario(
        model_dir=out_dir,
        scenario_dir=scenario_dir,
        cases=cases,
        pairs=pairs,
        eval=eval_rows,
        build_seconds=time.perf_counter() - started,
        train_steps=steps,
    )


def _words_missing_from_corpus(corpus: list[str], texts: list[str]) -> list[str]:
    """Words of `texts` that no line of the corpus has: a real model knows its vocabulary."""
    known = {word for line in corpus for word in re.findall(r"\w+", line)}
    return sorted({word for text in texts for word in re.findall(r"\w+", text)} - known)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to write the model into")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        scenario = build_demo_model(args.out, seed=args.seed)
    except DemoBuildError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"demo: cannot write {args.out}: {error}", file=sys.stderr)
        return 2
    print(
        f"demo model in {scenario.model_dir} ({scenario.train_steps} steps, "
        f"{scenario.build_seconds:.0f} s); scenario: {len(scenario.flagged)} flagged, "
        f"{len(scenario.heldout)} held-out, {len(scenario.regression)} regression prompts "
        f"in {scenario.scenario_dir}"
    )
    return 0
