"""Which text tokens may see which image tiles (Mllama cross-attention masks), computed on the CPU.

`image_spans(ids, image_token_id)` gives, per `<|image|>` token in a prompt, the half-open token range
[start, end) that attends to that image, with the reference processor's rules: an image is seen from its
own token up to the next image token; a run of consecutive image tokens is seen together until the text
after the run ends; the last image is seen to the end of the sequence (and by every generated token).

`cross_attention_inputs` turns the spans of a left-padded batch into the additive mask the decoder uses.
"""

from __future__ import annotations

import torch

from models.mllama.text import CrossAttentionInputs

END = -1  # "until the end of the sequence, generated tokens included"


def image_spans(ids: list[int], image_token_id: int) -> list[tuple[int, int]]:
    locs = [i for i, t in enumerate(ids) if t == image_token_id]
    if not locs:
        return []
    spans = [[a, b] for a, b in zip(locs[:-1], locs[1:], strict=True)] + [[locs[-1], END]]
    # Consecutive image tokens share the span of the last one in their run.
    following_end = END
    for span in reversed(spans):
        if span[1] == span[0] + 1:
            span[1] = following_end
        following_end = span[1]
    return [(a, b) for a, b in spans]


def cross_attention_inputs(
    spans: list[list[tuple[int, int]]], num_tiles: list[list[int]], left_pad: list[int], seq_len: int,
    max_images: int, max_tiles: int, tokens_per_tile: int, kv: dict, dtype: torch.dtype, device,
) -> CrossAttentionInputs:
    """Masks for a batch whose row b is left-padded by `left_pad[b]` to `seq_len` tokens.

    Vision tokens of row b are laid out as [max_images, max_tiles, tokens_per_tile] (the rows' own images
    first, then padding slots). A text row that sees no tile attends uniformly over the row's own images
    (padding tiles included, as the reference); padding image slots are never attended.
    """
    batch = len(spans)
    allowed = torch.zeros(batch, seq_len, max_images, max_tiles, dtype=torch.bool)
    own = torch.zeros(batch, 1, max_images, max_tiles, dtype=torch.bool)
    for b, (row_spans, row_tiles) in enumerate(zip(spans, num_tiles, strict=True)):
        own[b, :, : len(row_tiles)] = True
        for img, ((start, end), tiles) in enumerate(zip(row_spans, row_tiles, strict=True)):
            stop = seq_len if end == END else left_pad[b] + end
            allowed[b, left_pad[b] + start: stop, img, :tiles] = True
    row_gate = allowed.flatten(2).any(-1)  # [B, S]
    allowed = torch.where(row_gate[:, :, None, None], allowed, own)
    allowed = allowed.repeat_interleave(tokens_per_tile, dim=3).flatten(2)  # [B, S, L]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    has_image = torch.tensor([bool(t) for t in num_tiles], dtype=dtype).view(batch, 1, 1)
    return CrossAttentionInputs(
        kv=kv, mask=mask[:, None].to(device), row_gate=row_gate[:, :, None].to(dtype=dtype, device=device),
        has_image=has_image.to(device),
    )


def last_token_view(cross: CrossAttentionInputs) -> CrossAttentionInputs:
    """Masks for generated tokens: each sees what the prompt's last token sees."""
    return CrossAttentionInputs(kv=cross.kv, mask=cross.mask[:, :, -1:], row_gate=cross.row_gate[:, -1:],
                                has_image=cross.has_image)
