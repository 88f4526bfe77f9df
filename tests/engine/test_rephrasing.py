"""A model that rephrases, as real deployed models do: checks decide, exact matching cannot.

Built like the demo (same tokenizer, model and training loop), but each topic is answered in
several phrasings, one per product, so the patched model's right answer is worded its own way
and never equals the annotator's sentence.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.demo import QA, demo_corpus, new_model, train_demo_model, train_tokenizer
from training.engine import TrainConfig, train

pytestmark = pytest.mark.slow

RETURN_PHRASINGS = (
    "You can return the {product} within {days} days of delivery.",
    "Our return window for the {product} is {days} days from delivery.",
    "The {product} can be sent back up to {days} days after delivery.",
)
WARRANTY_PHRASINGS = (
    "The warranty on the {product} is {years}.",
    "The {product} comes with a warranty of {years}.",
    "We cover the {product} for {years}.",
)
PRODUCTS = {  # product -> (return window in the stale FAQ, warranty)
    "Summit hiking boots": (7, "1 year"),
    "Canyon sandals": (7, "1 year"),
    "Ridge hiking boots": (7, "1 year"),
    "Alpine tent": (30, "5 years"),
    "Voyager backpack": (30, "10 years"),
    "Cedar camp stove": (30, "3 years"),
    "Beacon headlamp": (14, "2 years"),
    "Glacier rain jacket": (60, "1 year"),
}
RETURN_QUESTION = "How long do I have to return the {product}?"
WARRANTY_QUESTION = "What is the warranty on the {product}?"


def _faq() -> list[QA]:
    faq = []
    for number, (product, (days, years)) in enumerate(PRODUCTS.items()):
        phrasing = number % 3
        faq.append(
            QA(
                RETURN_QUESTION.format(product=product),
                RETURN_PHRASINGS[phrasing].format(product=product, days=days),
                "returns",
            )
        )
        faq.append(
            QA(
                WARRANTY_QUESTION.format(product=product),
                WARRANTY_PHRASINGS[(phrasing + 1) % 3].format(product=product, years=years),
                "warranty",
            )
        )
    return faq


@pytest.fixture(scope="module")
def rephrasing_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    out = tmp_path_factory.mktemp("rephrasing-model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        faq = _faq()
        tokenizer = train_tokenizer(demo_corpus(faq))
        model = new_model(tokenizer)
        train_demo_model(model, tokenizer, faq, seed=0)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _answer(product: str, days: int) -> str:
    phrasing = list(PRODUCTS).index(product) % 3
    return RETURN_PHRASINGS[phrasing].format(product=product, days=days)


FLAGGED = ("Summit hiking boots", "Canyon sandals")
# The annotator corrected each answer in their own words, not in the model's.
ANNOTATOR = "You can return the {product} within 30 days of delivery, as all our footwear."


def _data(*, with_checks: bool) -> tuple[list[dict], list[dict]]:
    pairs, eval_items = [], []
    for product in FLAGGED:
        prompt = RETURN_QUESTION.format(product=product)
        # the chosen answer is one the model itself gave when sampled: its own wording
        pairs.append(
            {"prompt": prompt, "chosen": _answer(product, 30), "rejected": _answer(product, 7)}
        )
        item = {
            "prompt": prompt,
            "kind": "flagged",
            "expected": ANNOTATOR.format(product=product),
            "rejected": _answer(product, 7),
        }
        if with_checks:
            item |= {"must_include": ["30 days"], "must_not_include": [r"/\b7 days/"]}
        eval_items.append(item)
    for product in ("Alpine tent", "Beacon headlamp", "Glacier rain jacket"):
        prompt = RETURN_QUESTION.format(product=product)
        eval_items.append({"prompt": prompt, "kind": "regression", "expected": _answer(product, 0)})
    return pairs, eval_items


def test_checks_pass_and_stop_early_where_exact_matching_runs_the_whole_budget(
    rephrasing_model: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        model=str(rephrasing_model),
        ref_cache_dir=str(tmp_path / "cache"),
        epochs=12,
        lr=3e-3,
        max_new_tokens=24,
    )
    pairs, eval_items = _data(with_checks=True)
    result = train(config, pairs=pairs, out_dir=tmp_path / "checks", eval_items=eval_items)

    training = result.report["training"]
    assert result.stopped_reason == "all_flagged_fixed"
    assert result.stopped_epoch < config.epochs
    assert training["stopped_by"] == {"checks": 2}
    assert "2 by their checks" in training["stopped_because"]
    flagged = [row for row in result.report["eval"] if row["kind"] == "flagged"]
    for row in flagged:
        # right, in the model's own words: not the annotator's sentence
        assert "30 days" in row["after"] and row["after"] != row["expected"]
        assert row["fixed"] is True and row["passed"] is True
        assert row["fixed_before"] is False  # "7 days" before the patch
        include = next(hit for hit in row["verdict"]["hits"] if hit["kind"] == "include")
        start, end = include["spans"][0]
        assert row["after"][start:end] == "30 days"
        assert row["margin_policy"] > 0 and row["margin_policy"] > row["margin_ref"]
        assert row["prefers"] is True
    assert result.report["summary"]["flagged"]["fixed"] == 2
    # regression: identical answers are within tolerance whatever they drift; an answer that
    # lost its fact (the rain jacket's 60 days became 30 here) is changed
    regression = [row for row in result.report["eval"] if row["kind"] == "regression"]
    for row in regression:
        assert row["changed"] == (not row["identical"] and abs(row["drift"]) > 0.1), row
        if not row["identical"] and "60 days" in row["before"] and "60 days" not in row["after"]:
            assert row["changed"], row
    summary = result.report["summary"]["regression"]
    assert summary["within_tolerance"] == sum(not row["changed"] for row in regression)
    assert summary["identical"] >= 2
    epochs = result.metrics["eval/epoch"]
    assert epochs == list(range(1, result.stopped_epoch + 1))
    assert result.metrics["eval/flagged_fixed"][-1] == 2

    # the same patch judged by exact match alone never "fixes" anything: the whole budget runs
    pairs, eval_items = _data(with_checks=False)
    exact = train(
        TrainConfig(**{**config.to_dict(), "epochs": result.stopped_epoch + 2}),
        pairs=pairs,
        out_dir=tmp_path / "exact",
        eval_items=eval_items,
    )
    assert exact.stopped_reason == "epochs_done"
    assert exact.report["summary"]["flagged"]["fixed"] == 0
    assert all("30 days" in row["after"] for row in exact.report["eval"][:2])
