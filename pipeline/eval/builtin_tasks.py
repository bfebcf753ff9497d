"""Built-in task specs for the standard benchmarks, in the column layouts of their usual Parquet exports
(the lmms-lab / MMMU datasets on the Hugging Face Hub) and with the prompts and generation lengths
lmms-eval uses. Point a task at the files with `input:`; nothing is downloaded.

Notes per task:
- vqav2 / textvqa: VQA accuracy needs the ~10 human answers per question (a single answer scores 0 under
  leave-one-out); VQAv2's `answers` is a list of {"answer", "answer_confidence", "answer_id"}.
- docvqa: ANLS. chartqa: relaxed accuracy; its export has no id column, so ids are file:row.
- mmmu: multiple-choice rows get the options as "A. ..." lines and the letter instruction; open rows the
  short-answer instruction. Up to 7 images per question become one multi-image request (OneVision;
  Llama-3.2-Vision answers multi-image rows with an `unsupported_media` error row, which scores 0).
- coco_captions: CIDEr-D (headline), BLEU-4, ROUGE-L over the 5 reference captions in `answer`.
- easy_vqa: one answer per question, so exact match (VQA accuracy needs several answers); make its Parquet
  with `python -m pipeline.eval.easy_vqa out.parquet` (pipeline/eval/easy_vqa.py).
"""

from __future__ import annotations

from pipeline.eval.tasks import SHORT_ANSWER, TaskSpec

MMMU_MC = "{question}\n{options}\n\nAnswer with the option's letter from the given choices directly."

BUILTIN_TASKS: dict[str, TaskSpec] = {
    "vqav2": TaskSpec(
        name="vqav2", metrics=("vqa_accuracy",), id_column="question_id", answers_column="answers",
        description="VQAv2 (lmms-lab/VQAv2 val/testdev layout)"),
    "textvqa": TaskSpec(
        name="textvqa", metrics=("vqa_accuracy",), id_column="question_id", answers_column="answers",
        description="TextVQA (lmms-lab/textvqa validation layout)"),
    "docvqa": TaskSpec(
        name="docvqa", metrics=("anls",), id_column="questionId", answers_column="answers", max_new_tokens=32,
        description="DocVQA (lmms-lab/DocVQA validation layout)"),
    "chartqa": TaskSpec(
        name="chartqa", metrics=("relaxed_accuracy",), id_column=None, answers_column="answer",
        prompt="{question}\nAnswer the question with a single word.",
        description="ChartQA (lmms-lab/ChartQA test layout)"),
    "mmmu": TaskSpec(
        name="mmmu", metrics=("choice_accuracy",), id_column="id", answers_column="answer",
        options_column="options", image_columns=tuple(f"image_{i}" for i in range(1, 8)),
        prompt="{question}\n\n" + SHORT_ANSWER, mc_prompt=MMMU_MC, max_new_tokens=16,
        description="MMMU (MMMU/MMMU validation layout)"),
    "coco_captions": TaskSpec(
        name="coco_captions", metrics=("cider_d", "bleu4", "rouge_l"), id_column="question_id",
        question_column=None, answers_column="answer",
        prompt="Provide a one-sentence caption for the provided image.", max_new_tokens=64,
        description="COCO captions (lmms-lab/COCO-Caption2017 val layout)"),
    "easy_vqa": TaskSpec(
        name="easy_vqa", metrics=("exact_match",), id_column="id", answers_column="answer",
        description="easy-vqa (PyPI package data); make its Parquet with `python -m pipeline.eval.easy_vqa "
                    "easy_vqa_test.parquet` (pip install easy-vqa)"),
}
