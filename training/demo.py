"""The demo model: a tiny support bot for an outdoor-gear shop, with planted bad answers.

    python -m training.engine demo --out var/demo-model

builds, in under a minute on one CPU core, an HF-format folder in OUT that `--model OUT` accepts
everywhere (a byte-level BPE tokenizer trained on the shop's synthetic FAQ corpus, saved as a
PreTrainedTokenizerFast with bos/eos/pad; a 2-layer Llama trained from scratch until it answers
every FAQ question exactly, greedily, and stops with eos), plus the scenario in OUT/scenario/:

- cases.jsonl  the annotation import format: the flagged cases (split "train": the prompt, the
               model's wrong answer, the right one), held-out prompts of the same kind (split
               "heldout") and regression prompts of other topics (split "regression", with the
               model's correct answer that a patch must not change);
- pairs.jsonl  the flagged cases as engine pairs {prompt, chosen, rejected};
- eval.jsonl   {prompt, expected, kind: flagged|heldout|regression, topic} for `train --eval`;
- corpus.txt   the text the tokenizer and the model were trained on;
- build.json   demo_version, seed, training steps and seconds (a cache can check the version).

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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.engine.errors import EngineError
from training.engine.evaluate import generate_greedy
from training.engine.logprobs import pad_batch

SCENARIO_DIR = "scenario"
DEMO_VERSION = 2  # bump when the scenario or the model changes; scenario/build.json records it
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# The shop's catalogue. A product is "<line> <type>" ("Ridge hiking boots"); each category has
# its own product lines, as outdoor brands do.
CATEGORIES = {  # category -> (product lines, return window in days per the FAQ the model learned)
    "shelter": (("Alpine", "Basecamp", "Nomad"), 30),
    "packs": (("Voyager", "Cascade", "Trekker"), 30),
    "sleep": (("Aurora", "Drift", "Ember"), 30),
    "footwear": (("Ridge", "Falcon", "Summit", "Canyon"), 7),
    "electronics": (("Beacon", "Orbit", "Pulse"), 14),
    "clothing": (("Glacier", "Juniper", "Sierra"), 60),
    "cooking": (("Cedar", "Granite", "Willow"), 30),
}
TYPES = {  # type -> (category, warranty)
    "tent": ("shelter", "5 years"),
    "tarp": ("shelter", "2 years"),
    "hammock": ("shelter", "2 years"),
    "backpack": ("packs", "10 years"),
    "daypack": ("packs", "10 years"),
    "sleeping bag": ("sleep", "3 years"),
    "sleeping pad": ("sleep", "2 years"),
    "hiking boots": ("footwear", "1 year"),
    "trail runners": ("footwear", "1 year"),
    "sandals": ("footwear", "1 year"),
    "headlamp": ("electronics", "2 years"),
    "GPS watch": ("electronics", "2 years"),
    "action camera": ("electronics", "1 year"),
    "rain jacket": ("clothing", "1 year"),
    "fleece": ("clothing", "1 year"),
    "down jacket": ("clothing", "2 years"),
    "camp stove": ("cooking", "3 years"),
    "water filter": ("cooking", "1 year"),
}
# Product lines per type: 10 footwear products (3 flagged, 7 held out); every category whose
# window is not 30 days has as many products as the footwear, so that knowing "14 days" for a
# GPS watch is not a minority habit that a patch towards 30 days wipes out on the way.
LINES_PER_TYPE = {"hiking boots": 4, "trail runners": 3, "sandals": 3}
LINES_PER_CATEGORY = {"electronics": 3, "clothing": 3}
DEFAULT_LINES_PER_TYPE = 2
# The FAQ the model learned is stale for one category; the shop's real policy is 30 days.
STALE_CATEGORY, POLICY_DAYS = "footwear", 30

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

# Model and training: small enough to learn the 176 FAQ answers in under a minute on one core.
VOCAB_SIZE = 640
HIDDEN_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
LEARNING_RATE = 3e-3
BATCH_SIZE = 32
MAX_STEPS = 3000  # a budget: training stops once every answer has been exact for a while
CHECK_EVERY = 50  # steps between exactness checks
SETTLE_FACTOR = 2  # train on until twice the steps it took to get every answer exact


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
    for type_name, (category, _) in TYPES.items():
        lines = CATEGORIES[category][0]
        count = LINES_PER_TYPE.get(
            type_name, LINES_PER_CATEGORY.get(category, DEFAULT_LINES_PER_TYPE)
        )
        chosen = sorted(rng.sample(lines, count), key=lines.index)
        catalog[type_name] = [f"{line} {type_name}" for line in chosen]
    return catalog


def demo_faq(catalog: dict[str, list[str]]) -> list[QA]:
    """Every question the model is trained to answer, with the answer it learns."""
    faq = []
    for type_name, products in catalog.items():
        category, warranty = TYPES[type_name]
        days = CATEGORIES[category][1]
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


def demo_split(
    faq: list[QA], catalog: dict[str, list[str]], rng: random.Random
) -> tuple[list[QA], list[QA], list[QA]]:
    """(flagged, held-out, regression) questions.

    Flagged: one footwear product of each type, each of another product line, asked the first
    way (a patch then cannot get away with learning "Ridge means 30 days"). Held-out: the other
    footwear products, asked either way. Regression: the other topics, footwear questions that
    are not about returns included (their warranty answers are right and must stay so).
    """
    planted = {qa.prompt: qa for qa in faq if qa.right is not None}
    flagged, heldout, used_lines = [], [], set()
    for type_name, products in catalog.items():
        if TYPES[type_name][0] != STALE_CATEGORY:
            continue
        fresh = [product for product in products if product.split()[0] not in used_lines]
        chosen = rng.choice(fresh)
        used_lines.add(chosen.split()[0])
        for product in products:
            if product == chosen:
                flagged.append(planted[RETURN_QUESTIONS[0].format(product=product)])
            else:
                question = rng.choice(RETURN_QUESTIONS)
                heldout.append(planted[question.format(product=product)])
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
    """(input_ids, attention_mask, answer_mask) of the FAQ as trained: bos + question +
    answer + eos, right-padded; answer_mask marks the answer and eos tokens."""
    prompts = [tokenizer(qa.prompt).input_ids for qa in qa_list]
    completions = [
        tokenizer(qa.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        for qa in qa_list
    ]
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    ids, attention = pad_batch(rows, tokenizer.pad_token_id, left=False)
    answer = torch.zeros_like(attention, dtype=torch.bool)
    for i, (prompt_ids, completion_ids) in enumerate(zip(prompts, completions, strict=True)):
        answer[i, len(prompt_ids) : len(prompt_ids) + len(completion_ids)] = True
    return ids, attention, answer


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


def train_demo_model(
    model, tokenizer, faq: list[QA], seed: int, log: Callable[[str], None] | None = None
) -> int:
    """Train from scratch on the corpus until every FAQ answer is exact; returns the steps."""
    generator = torch.Generator().manual_seed(seed)
    ids, attention, answer_mask = _encode(tokenizer, faq)
    text_ids, text_attention = pad_batch(
        [tokenizer(line).input_ids + [tokenizer.eos_token_id] for line in POLICY_TEXT],
        tokenizer.pad_token_id,
        left=False,
    )
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
                exact, wrong = _all_answers_exact(model, ids, attention, answer_mask)
                if log is not None:
                    log(f"step {step}: loss {loss.item():.3f}, {wrong}/{len(faq)} answers wrong")
                if not exact:
                    first_exact = None
                elif first_exact is None:
                    first_exact = step
                # Barely exact is a thin margin, which a patch on three pairs would easily tip
                # over elsewhere: train on until the answers have stayed exact a while.
                if first_exact is not None and step >= SETTLE_FACTOR * first_exact:
                    model.eval()
                    return step
    _, wrong = _all_answers_exact(model, ids, attention, answer_mask)
    raise DemoBuildError(
        f"the demo model still got {wrong} of {len(faq)} answers wrong after {MAX_STEPS} steps"
    )


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


def build_demo_model(
    out_dir: Path, *, seed: int = 0, log: Callable[[str], None] | None = None
) -> DemoScenario:
    """Build the demo model into `out_dir` and its scenario into `out_dir/scenario/`.

    Deterministic for a seed on a given machine. Raises DemoBuildError when the trained model
    does not answer exactly as the scenario says (greedy), rather than writing a scenario
    that lies.
    """
    # One thread: on a shared 2-core machine, two threads of a model this small spent 18x longer
    # per step than one (spinning while they waited for each other), and one thread makes the
    # build's floating-point sums, hence the model, the same on any machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(Path(out_dir), seed, log)
    finally:
        torch.set_num_threads(threads)


def _build(out_dir: Path, seed: int, log: Callable[[str], None] | None) -> DemoScenario:
    started = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)

    catalog = demo_catalog(rng)
    faq = demo_faq(catalog)
    flagged, heldout, regression = demo_split(faq, catalog, rng)
    corpus = demo_corpus(faq)

    unknown = _words_missing_from_corpus(corpus, [qa.right for qa in flagged + heldout])
    if unknown:
        raise DemoBuildError(f"right answers use words the corpus never has: {unknown}")
    tokenizer = train_tokenizer(corpus)
    model = new_model(tokenizer)
    steps = train_demo_model(model, tokenizer, faq, seed, log)

    scenario_questions = flagged + heldout + regression
    answers = generate_greedy(model, tokenizer, [qa.prompt for qa in scenario_questions])
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
    _name_tokenizer_class_portably(out_dir)
    scenario_dir = out_dir / SCENARIO_DIR
    scenario_dir.mkdir(exist_ok=True)
    cases, pairs, eval_rows = _scenario_rows(flagged, heldout, regression)
    _write_jsonl(scenario_dir / "cases.jsonl", cases)
    _write_jsonl(scenario_dir / "pairs.jsonl", pairs)
    _write_jsonl(scenario_dir / "eval.jsonl", eval_rows)
    (scenario_dir / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    build_seconds = time.perf_counter() - started
    build = {"demo_version": DEMO_VERSION, "seed": seed, "train_steps": steps}
    (scenario_dir / "build.json").write_text(json.dumps(build | {"seconds": build_seconds}))
    return DemoScenario(
        model_dir=out_dir,
        scenario_dir=scenario_dir,
        cases=cases,
        pairs=pairs,
        eval=eval_rows,
        build_seconds=build_seconds,
        train_steps=steps,
    )


def _name_tokenizer_class_portably(model_dir: Path) -> None:
    """transformers 5 writes its new class name, which 4.x (and the servers pinned to it) cannot
    load; the name both versions read is PreTrainedTokenizerFast."""
    config_file = model_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2) + "\n")


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
    out = args.out.expanduser()
    if out.exists() and not out.is_dir():
        raise EngineError(f"--out {out} is a file; pass a folder for the demo model")
    if out.is_dir() and any(out.iterdir()):
        raise EngineError(f"--out {out} is not empty; pass a new folder for the demo model")
    import transformers

    transformers.logging.disable_progress_bar()  # the CLI prints its own progress
    try:
        scenario = build_demo_model(
            out, seed=args.seed, log=lambda line: print(line, file=sys.stderr, flush=True)
        )
    except DemoBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        raise EngineError(f"cannot write the demo model to {out}: {error}") from None
    print(
        f"demo model in {scenario.model_dir} ({scenario.train_steps} steps, "
        f"{scenario.build_seconds:.0f} s); scenario: {len(scenario.flagged)} flagged, "
        f"{len(scenario.heldout)} held-out, {len(scenario.regression)} regression prompts "
        f"in {scenario.scenario_dir}"
    )
    return 0
