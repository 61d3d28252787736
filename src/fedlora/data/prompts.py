"""Instruction rows as token ids: a prompt, then the response the loss is computed on.

The prompt is the tokenizer's chat template around one user turn (the instruction, then a blank
line and the context when there is one), ending where the assistant's answer starts; the
response is what the template puts after it (the answer and its end-of-turn marker). Without a
chat template (or with ``data.instruct.template: plain``) the plain template is::

    ### Instruction:
    {instruction}

    ### Context:
    {context}

    ### Response:
    {response}<eos>

(the context block only when there is one; ``<eos>`` is the tokenizer's end-of-sequence token,
else its separator, and a tokenizer's beginning-of-sequence token starts the prompt). Prompt
and response are tokenized apart, so the prompt's tokens are exactly what a model is given
when it is asked to answer.

A row longer than ``max_length`` tokens is cut in this order: the end of the context (as little
as makes the row fit), then the end of the instruction (when the prompt alone leaves no room
for one response token), then the end of the response. Which parts were cut is kept per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedlora.data.examples import Example
from fedlora.data.rows import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CUT_CONTEXT, CUT_INSTRUCTION, CUT_RESPONSE = 1, 2, 4  # bits of :attr:`Tokenized.cut`
CHAT, PLAIN = "chat", "plain"


@dataclass(frozen=True)
class Tokenized:
    """One row's token ids (prompt then response), how many are prompt, what was cut, and the
    lengths of its parts before any cut (tokens of the prompt, the context, the response)."""

    ids: list[int]
    prompt_length: int
    cut: int
    prompt_tokens: int
    context_tokens: int
    response_tokens: int


def resolve_template(template: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """``chat`` or ``plain``: ``auto`` is the chat template when the tokenizer has one."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == CHAT and not has_chat:
        raise DataError(
            f"data.instruct.template: chat, but tokenizer {tokenizer.name_or_path!r} has no chat"
            " template; use plain (or auto)"
        )
    return CHAT if template == CHAT or (template == "auto" and has_chat) else PLAIN


def template_recipe(template: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Everything that decides how rows become tokens besides the rows (for cache keys)."""
    chat = getattr(tokenizer, "chat_template", None) if template == CHAT else None
    return f"{template}\0{chat}\0{tokenizer.bos_token}\0{tokenizer.eos_token}"


class PromptBuilder:
    """Renders and tokenizes instruction rows with one tokenizer and template."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str) -> None:
        self.tokenizer = tokenizer
        self.template = resolve_template(template, tokenizer)
        bos = tokenizer.bos_token_id if self.template == PLAIN else None
        self._start = [] if bos is None else [int(bos)]
        end = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.sep_token
        self._end = end or ""

    def texts(self, instruction: str, context: str, response: str) -> tuple[str, str]:
        """The prompt's text and the response's (what follows the prompt)."""
        user = f"{instruction}\n\n{context}" if context else instruction
        if self.template == PLAIN:
            block = f"### Context:\n{context}\n\n" if context else ""
            return (
                f"### Instruction:\n{instruction}\n\n{block}### Response:\n",
                response + self._end,
            )
        turn = [{"role": "user", "content": user}]
        prompt = self._render(turn, add_generation_prompt=True)
        full = self._render([*turn, {"role": "assistant", "content": response}])
        if not full.startswith(prompt):
            raise DataError(
                f"data.instruct.template: the chat template of {self.tokenizer.name_or_path!r}"
                " does not continue the prompt with the answer; use template: plain"
            )
        return prompt, full[len(prompt) :]

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert isinstance(text, str)
        return text

    def ids(self, texts: list[str]) -> list[list[int]]:
        out = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
        return [list(row) for row in out["input_ids"]]

    def prompt_ids(self, instruction: str, context: str) -> list[int]:
        return self._start + self.ids([self.texts(instruction, context, "")[0]])[0]

    def encode(self, examples: list[Example], max_length: int) -> list[Tokenized]:
        """Every row, tokenized in batches; only rows over ``max_length`` are cut one by one."""
        rendered = [self.texts(e.text_a, e.text_b or "", e.response or "") for e in examples]
        prompts = [self._start + ids for ids in self.ids([p for p, _ in rendered])]
        responses = self.ids([r for _, r in rendered])
        contexts = self.ids([e.text_b or "" for e in examples])
        rows = []
        for example, prompt, response, context in zip(
            examples, prompts, responses, contexts, strict=True
        ):
            sizes = (len(prompt), len(context), len(response))
            if len(prompt) + len(response) > max_length:
                prompt, response, cut = self._fit(example, prompt, response, max_length)
            else:
                cut = 0
            rows.append(Tokenized(prompt + response, len(prompt), cut, *sizes))
        return rows

    def _fit(
        self, example: Example, prompt: list[int], response: list[int], max_length: int
    ) -> tuple[list[int], list[int], int]:
        """Cut the context, then the instruction, then the response, until the row fits."""
        instruction, context = example.text_a, example.text_b or ""
        cut = 0
        for kept in self._prefixes(context):
            if len(prompt) + len(response) <= max_length:
                break
            context, cut = kept(len(prompt) + len(response) - max_length), cut | CUT_CONTEXT
            prompt = self.prompt_ids(instruction, context)
        for kept in self._prefixes(instruction):
            if len(prompt) < max_length:
                break
            instruction, cut = kept(len(prompt) - max_length + 1), cut | CUT_INSTRUCTION
            prompt = self.prompt_ids(instruction, context)
        if len(prompt) >= max_length:
            raise DataError(
                f"data.max_length: {max_length} tokens leave no room for a response after"
                f" the {len(prompt)}-token prompt template itself; raise data.max_length"
            )
        if len(prompt) + len(response) > max_length:
            response, cut = response[: max_length - len(prompt)], cut | CUT_RESPONSE
        return prompt, response, cut

    def _prefixes(self, text: str) -> Iterator[Callable[[int], str]]:
        """Cutters of ``text``: each call gives the text of a strictly shorter prefix of its
        tokens, at least ``over`` tokens shorter than the last, until none is left."""
        ids = self.ids([text])[0] if text else []
        keep = len(ids)

        def shorter(over: int) -> str:
            nonlocal keep
            keep = max(0, min(keep - 1, keep - over))
            return str(self.tokenizer.decode(ids[:keep])).strip() if keep else ""

        while keep > 0:
            yield shorter


def cut_counts(cut: Sequence[int]) -> dict[str, int]:
    """How many rows were cut at all, and how many lost part of each of their parts."""
    bits = {"context": CUT_CONTEXT, "instruction": CUT_INSTRUCTION, "response": CUT_RESPONSE}
    counts = {"rows": sum(1 for value in cut if value)}
    return counts | {part: sum(1 for value in cut if value & bit) for part, bit in bits.items()}
