"""One generation request on a GPU worker: sample in batches of cases, store as they come.

``rounds.tasks.run_generation`` calls ``run_claimed_generation``. The worker's base model comes
from ``training.model_cache`` (the one a training job left in memory is reused). Each batch of
cases is sampled, then stored in one transaction per case, so a cancel or a dead worker keeps
every candidate stored before it; progress and the cancel flag are read between batches, and a
heartbeat thread keeps the row alive while a batch is being sampled.
"""

from __future__ import annotations

import dataclasses
import logging

from annotate.models import Case
from rounds import services
from rounds.models import GenerationRequest, Purpose
from training import lifecycle

logger = logging.getLogger(__name__)

SEQUENCES_PER_BATCH = 16  # answers sampled in one forward batch (cases × n)


def batches(cases: list[Case], n: int) -> list[list[Case]]:
    size = max(1, SEQUENCES_PER_BATCH // n)
    return [cases[start : start + size] for start in range(0, len(cases), size)]


def run_claimed_generation(generation: GenerationRequest) -> str:
    """Sample, store and record one request this worker has claimed; returns its final status."""
    return lifecycle.run_to_end(services.GENERATIONS, generation.pk, lambda: _run(generation))


def _run(generation: GenerationRequest) -> str:
    from training import model_cache
    from training.engine.generate import adapter_applied

    cases = list(generation.cases.order_by("id"))
    total = len(cases)
    services.generation_record_progress(
        generation_id=generation.pk, progress={"phase": "loading", "step": 0, "total": total}
    )
    base, from_memory = model_cache.get_base(generation.model_path)
    logger.info(
        "generation %s: base model %s", generation.pk, "from memory" if from_memory else "loaded"
    )
    current_round = generation.round if generation.purpose == Purpose.ROUND else None
    should_cancel = lifecycle.CancelCheck(services.GENERATIONS, generation.pk)
    done = 0
    # The adapter goes on once for the whole request (and comes off after, even on an error).
    with adapter_applied(base, generation.adapter_path or None) as model:
        wearing = dataclasses.replace(base, model=model)
        for batch in batches(cases, generation.n):
            if should_cancel():
                services.generation_mark_cancelled(generation_id=generation.pk)
                return "cancelled"
            services.generation_record_progress(
                generation_id=generation.pk,
                progress={"phase": "sampling", "step": done, "total": total},
            )
            if current_round is not None:
                for case, text in zip(batch, _greedy(wearing, generation, batch), strict=True):
                    services.round_answer_store(current=current_round, case=case, text=text)
            else:
                sampled = _sample(wearing, generation, batch, should_cancel)
                for case, texts in zip(batch, sampled, strict=True):
                    services.candidates_store(
                        generation=generation, case=case, texts=texts, sampled=generation.n
                    )
            done += len(batch)
    services.generation_record_progress(
        generation_id=generation.pk, progress={"phase": "sampling", "step": done, "total": total}
    )
    services.generation_succeed(generation_id=generation.pk)
    return "succeeded"


def _sample(base, generation: GenerationRequest, cases: list[Case], should_cancel) -> list:
    """N distinct sampled answers per case, none equal to an answer the case already has."""
    from training.engine.generate import sample_candidates

    existing = [list(case.responses.values_list("text", flat=True)) for case in cases]
    return sample_candidates(
        base,
        [case.prompt for case in cases],
        n=generation.n,
        temperature=generation.temperature,
        top_p=generation.top_p,
        max_new_tokens=generation.max_new_tokens,
        seed=generation.seed,
        batch_size=SEQUENCES_PER_BATCH,
        existing=existing,
        should_cancel=should_cancel,
    )


def _greedy(base, generation: GenerationRequest, cases: list[Case]) -> list[str]:
    """A round's answer per case: greedy, as the job's before/after report answers."""
    from training.engine.evaluate import generate_greedy

    return generate_greedy(
        base.model,
        base.tokenizer,
        [case.prompt for case in cases],
        generation.max_new_tokens,
        batch_size=SEQUENCES_PER_BATCH,
    )
