"""What the model is told: the system prompt per language and the per-clip user message.

The wording is ours and versioned: `SYSTEM_PROMPT_VERSION` is part of every cache
key, so a change to a system prompt or to the user-message layout must bump it,
or old rewrites would be served for the new instructions. The camera words go
in the user message to be kept word for word; cleaning checks that they were.
The video's context (context.py) goes in before the scene: what stays the same
across the whole video, to be described identically in every clip, and the
scenes before and after, for continuity only.
"""
from __future__ import annotations

from .options import LANGUAGES, EnhanceError, EnhanceRequest

# Bump when a system prompt or the user-message layout changes: it is part of the cache key.
SYSTEM_PROMPT_VERSION = "2"

SYSTEM_PROMPTS = {
    "en": (
        "You write prompts for a text-to-video model. Rewrite the user's scene into one vivid video prompt.\n"
        "Rules:\n"
        "1. Keep the main subject and everything the user asks for. Copy any text in quotes exactly, quotes included.\n"
        "2. Add concrete visual detail: appearance, setting, colours, lighting, atmosphere and visual style.\n"
        "3. Describe motion in the scene with simple verbs.\n"
        "4. The user gives a camera movement. Include it word for word, unchanged.\n"
        "5. If a style is given, apply it as strongly as asked.\n"
        "6. The scene is one clip of a longer video. Describe what stays the same across the whole video "
        "(the same characters, places and style) with the same words and details in every clip: the same "
        "clothes, colours and features, the same place. Do not add them to a scene that does not mention them.\n"
        "7. The scenes before and after are context only. Do not describe or narrate them; write only this scene.\n"
        "8. Write 60 to 100 words of English in one paragraph of plain sentences.\n"
        "9. Output only the prompt: no title, no preamble, no quotes around it, no notes."
    ),
    "zh": (
        "你为文生视频模型撰写提示词。把用户描述的画面改写成一段生动的视频提示词。\n"
        "规则：\n"
        "1. 保留主体和用户要求的一切内容。引号中的文字必须原样照抄，包括引号。\n"
        "2. 补充具体的视觉细节：外观、场景、色彩、光线、氛围和画面风格。\n"
        "3. 用简单的动词描述画面中的动作。\n"
        "4. 用户会给出镜头运动，必须一字不差地原样写入。\n"
        "5. 如果给出风格，按要求的强度融入。\n"
        "6. 这个画面是一段较长视频中的一个片段。整个视频中保持一致的内容（同样的人物、地点和风格），"
        "在每个片段中都要用相同的词语和细节描写：同样的衣着、颜色和外貌，同样的地点。画面中没有提到的，不要加进去。\n"
        "7. 前后场景只作参考，不要描写或叙述它们，只写本画面。\n"
        "8. 用中文写一段 90 到 150 字的连贯文字。\n"
        "9. 只输出提示词本身：不要标题、不要开场白、不要给整段加引号、不要任何说明。"
    ),
}


def _strength_words(strength: float, language: str) -> str:
    en = ("lightly", "clearly", "strongly")
    zh = ("轻微地", "明显地", "强烈地")
    words = zh if language == "zh" else en
    return words[0] if strength < 0.34 else words[1] if strength < 0.67 else words[2]


def system_prompt(language: str = "en") -> str:
    """Our system prompt for the target language (versioned by SYSTEM_PROMPT_VERSION)."""
    if language not in SYSTEM_PROMPTS:
        raise EnhanceError(f"target language: expected one of {', '.join(LANGUAGES)}, got {language!r}")
    return SYSTEM_PROMPTS[language]


# Labels of the context lines; cleaning rejects an output that echoes them.
CONTEXT_LABELS = {
    "en": ("Keep the same across the whole video: ", "Before this scene: ", "After this scene: "),
    "zh": ("整个视频中保持一致：", "本场景之前：", "本场景之后："),
}


def user_message(request: EnhanceRequest) -> str:
    """The per-clip message: the video's context, the scene, camera words to keep verbatim, optional style."""
    zh = request.language == "zh"
    shared, before, after = CONTEXT_LABELS["zh" if zh else "en"]
    lines = []
    if request.shared:
        lines.append(shared + request.shared.strip())
    if request.previous:
        lines.append(before + request.previous.strip())
    if request.next:
        lines.append(after + request.next.strip())
    lines.append(("画面：" if zh else "Scene: ") + request.prompt.strip())
    if request.movement:
        lines.append(("镜头运动（原样保留）：" if zh else "Camera movement (include word for word): ") + request.movement)
    if request.style and request.style_strength > 0:
        how = _strength_words(request.style_strength, request.language)
        lines.append((f"风格（{how}融入）：" if zh else f"Style (apply {how}): ") + request.style)
    return "\n".join(lines)


def chat_messages(request: EnhanceRequest) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(request.language)},
            {"role": "user", "content": user_message(request)}]
