"""The words camera motion is described with, in English and Chinese.

`movement.py` decides what the camera does; these tables say it. Keys are the
motions and directions `movement.py` names ("pan", "left", "both" for a move
back and forth); levels run from weakest to strongest, as its thresholds do.
"""
from __future__ import annotations

# Ordered from weakest to strongest; MovementDescription.intensity uses these.
LEVELS = ("subtle", "gentle", "moderate", "fast", "very fast")

LEVEL_WORDS = {
    "en": LEVELS,
    "zh": ("轻微", "缓慢", "中速", "快速", "急速"),
}
SHAKE_LEVEL_WORDS = {
    "en": ("subtle", "light", "moderate", "strong", "violent"),
    "zh": ("轻微", "轻度", "中等", "强烈", "剧烈"),
}
MOTION_WORDS = {
    "en": {
        ("pan", "right"): "pan right",
        ("pan", "left"): "pan left",
        ("tilt", "up"): "tilt up",
        ("tilt", "down"): "tilt down",
        ("roll", "clockwise"): "roll clockwise",
        ("roll", "counter-clockwise"): "roll counter-clockwise",
        ("truck", "right"): "truck right",
        ("truck", "left"): "truck left",
        ("pedestal", "up"): "pedestal up",
        ("pedestal", "down"): "pedestal down",
        ("dolly", "in"): "dolly in",
        ("dolly", "out"): "dolly out",
        ("zoom", "in"): "zoom in",
        ("zoom", "out"): "zoom out",
        ("pan", "both"): "pan left and right",
        ("tilt", "both"): "tilt up and down",
        ("roll", "both"): "roll back and forth",
        ("truck", "both"): "truck left and right",
        ("pedestal", "both"): "pedestal up and down",
        ("dolly", "both"): "dolly in and out",
        ("zoom", "both"): "zoom in and out",
    },
    "zh": {
        ("pan", "right"): "向右摇镜",
        ("pan", "left"): "向左摇镜",
        ("tilt", "up"): "向上摇镜",
        ("tilt", "down"): "向下摇镜",
        ("roll", "clockwise"): "顺时针旋转",
        ("roll", "counter-clockwise"): "逆时针旋转",
        ("truck", "right"): "向右横移",
        ("truck", "left"): "向左横移",
        ("pedestal", "up"): "垂直上移",
        ("pedestal", "down"): "垂直下移",
        ("dolly", "in"): "向前推进",
        ("dolly", "out"): "向后拉远",
        ("zoom", "in"): "变焦推近",
        ("zoom", "out"): "变焦拉远",
        ("pan", "both"): "左右摇镜",
        ("tilt", "both"): "上下摇镜",
        ("roll", "both"): "来回旋转",
        ("truck", "both"): "左右横移",
        ("pedestal", "both"): "上下移动",
        ("dolly", "both"): "前后推拉",
        ("zoom", "both"): "变焦推拉",
    },
}
PHRASES = {
    "en": {
        "static": "static camera",
        "hold": "static hold",
        "shake": "handheld shake",
        "together": " with a ",
        "then": ", then a ",
        "with": ", with ",
        "sep": ", ",
        "brief": "brief",
        "extended": "extended",
        "sustained": "sustained",
    },
    "zh": {
        "static": "镜头静止",
        "hold": "镜头停顿",
        "shake": "手持抖动",
        "together": "并",
        "then": "，然后",
        "with": "，伴随",
        "sep": "，",
        "brief": "短暂",
        "extended": "持续较长",
        "sustained": "贯穿全程",
    },
}
