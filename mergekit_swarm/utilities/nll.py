"""`nll`: minus the mean token loss of the gold answers given their prompts (LoraHub-style).

The mean is over all answer tokens of the split (token-weighted), so the utility is the
negative cross-entropy per answer token: 0 is perfect, lower is worse.
"""

from __future__ import annotations

from typing import Literal

from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.utilities.base import AdapterBatchedUtility, DatasetUtilityConfig, Utility, register_utility
from mergekit_swarm.utilities.data import Example
from mergekit_swarm.utilities.racing import Batches, Racer, SliceScores, TokenMeanRacer, plan_slices
from mergekit_swarm.utilities.score import Score
from mergekit_swarm.utilities.text import Adapters, continuation_ids, logprobs_for_adapters, pair_batches


class NegativeLoss(AdapterBatchedUtility):
    def __init__(self, examples: list[Example], batch_size: int):
        self.examples, self.batch_size = examples, batch_size

    def score_adapters(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters) -> list[float]:
        pairs = [(e.prompt, e.answer) for e in self.examples]
        per_adapter = logprobs_for_adapters(model, tokenizer, pairs, batch_size=self.batch_size, adapters=adapters)
        return [sum(s for s, _ in scores) / sum(n for _, n in scores) for scores in per_adapter]

    racing_note = "no answer has a lowest log-likelihood, so exact bounds could never stop it: `racing: confident` races it"

    def racer(self, tokenizer: Tokenizer, slices: int, whole_batches: bool = True) -> Racer | None:
        """`racing: confident` only (`TokenMeanRacer`): each example's summed log-likelihood, over every
        answer token of dev."""
        if whole_batches:
            return None
        pairs = [(e.prompt, e.answer) for e in self.examples]
        tokens = [len(continuation_ids(tokenizer, answer)) for _, answer in pairs]
        plan = plan_slices(pair_batches(tokenizer, pairs, self.batch_size), slices, whole_batches)

        def score_batches(model: CausalLM, tokenizer: Tokenizer, adapters: Adapters, batches: Batches) -> list[SliceScores]:
            per_adapter = logprobs_for_adapters(
                model, tokenizer, pairs, batch_size=self.batch_size, adapters=adapters, batches_of=batches
            )
            rows = [i for batch in batches for i in batch]
            return [{i: scores[i][0] for i in rows} for scores in per_adapter]

        def finish(sums: tuple[float, ...]) -> Score:
            return Score(sum(sums) / sum(tokens))

        return TokenMeanRacer(tokens, plan, score_batches, finish)


@register_utility
class NllConfig(DatasetUtilityConfig):
    type: Literal["nll"] = "nll"

    def may_be_negative(self) -> bool:
        return True

    def utility_on(self, examples: list[Example]) -> Utility:
        return NegativeLoss(examples, self.batch_size)
