"""What a causal LM answers: greedy decoding of a prompt built as the task builds training rows.

Greedy, so the same model gives the same text on every run: a person comparing the start of a
run with its end reads what training changed, not sampling noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch

from fedlora.data.prompts import PromptBuilder


@torch.no_grad()
def greedy_answer(
    model: torch.nn.Module,
    builder: PromptBuilder,
    instruction: str,
    context: str = "",
    max_new_tokens: int = 128,
) -> str:
    """The answer of ``model`` (a causal LM, with or without a PEFT adapter) to
    ``instruction`` (with ``context``) up to its end-of-turn token or ``max_new_tokens``
    tokens, without the prompt and special tokens."""
    tokenizer = builder.tokenizer
    device = next(model.parameters()).device
    prompt = torch.tensor([builder.prompt_ids(instruction, context)], device=device)
    generate = cast(Callable[..., torch.Tensor], model.generate)
    was_training = model.training
    model.eval()
    try:
        output = generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=answer_end_tokens(builder),
        )
    finally:
        model.train(was_training)
    return str(tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)).strip()


def answer_end_tokens(builder: PromptBuilder) -> list[int]:
    """Where an answer ends: the tokenizer's end-of-sequence token, and the end-of-turn marker
    the chat template closes an answer with (``<|im_end|>`` for SmolLM2), when it has one."""
    tokenizer = builder.tokenizer
    ends = {tokenizer.eos_token_id}
    _, closing = builder.texts("", "", "")
    marker = tokenizer(closing.strip(), add_special_tokens=False)["input_ids"]
    if len(marker) == 1:
        ends.add(marker[0])
    return sorted(int(token) for token in ends if token is not None)
