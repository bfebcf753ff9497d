"""`<image>` / `<video>` placeholder expansion at the token-id level for LLaVA-OneVision prompts.

Contract: the chat template renders one `<image>` (`<video>`) token per media item; transformers' processor
then repeats each placeholder, in text, as many times as that item has features, and tokenizes. Both
placeholders are single added tokens, so the same result is reached by tokenizing the rendered prompt once
and replacing the k-th placeholder id by `counts[k]` copies of it: `expand_media_tokens` does that.
Counts come from `OneVisionImage.num_tokens` (a prompt with several images uses `multi_image=True` for all
of them, as the reference does) and `OneVisionVideoProcessor.num_tokens(F)`. A prompt whose number of
placeholders differs from the number of media given is a `PromptError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.errors import PromptError


def expand_media_tokens(prompt_ids: Sequence[int], image_tokens: Sequence[int], video_tokens: Sequence[int],
                        image_token_id: int, video_token_id: int) -> list[int]:
    """Replace the k-th image (video) placeholder by `image_tokens[k]` (`video_tokens[k]`) copies of it."""
    n_img = sum(1 for t in prompt_ids if t == image_token_id)
    n_vid = sum(1 for t in prompt_ids if t == video_token_id)
    if n_img != len(image_tokens) or n_vid != len(video_tokens):
        raise PromptError(f"the prompt has {n_img} image and {n_vid} video placeholders but "
                          f"{len(image_tokens)} images and {len(video_tokens)} videos were given")
    if any(int(c) < 1 for c in (*image_tokens, *video_tokens)):
        raise PromptError("every media item needs at least one token")
    out: list[int] = []
    next_image = iter(image_tokens)
    next_video = iter(video_tokens)
    for t in prompt_ids:
        if t == image_token_id:
            out.extend([t] * int(next(next_image)))
        elif t == video_token_id:
            out.extend([t] * int(next(next_video)))
        else:
            out.append(t)
    return out

