"""Images into and out of chat messages.

Every backend receives the photo the same way: re-encoded as JPEG with the long side capped
(1024 px by default) inside an OpenAI-style ``image_url`` data URL. Re-encoding bounds request
size and token cost, strips metadata (EXIF GPS tags would leak the answer), and makes local
models see exactly the pixels the API models see. Decoding is ``core.images``' (the one loader:
EXIF orientation, every colour mode, the decompression-bomb guard); the graph hands backends the
image it already loaded, so a path is decoded here only for a caller that has nothing loaded.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from PIL import Image

from geoguide.core.images import decode_image, load_image

ImageInput = Image.Image | str | Path

DEFAULT_MAX_SIDE = 1024
DEFAULT_JPEG_QUALITY = 90


def as_image(image: ImageInput) -> Image.Image:
    """The photo as an RGB PIL image: a loaded image as it is (RGB), a path through ``load_image``."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def encode_jpeg(image: Image.Image, max_side: int = DEFAULT_MAX_SIDE, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    img = image if image.mode == "RGB" else image.convert("RGB")
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)  # no exif= argument: metadata is dropped
    return buf.getvalue()


def image_content_part(
    image: ImageInput,
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    quality: int = DEFAULT_JPEG_QUALITY,
    detail: str | None = None,
) -> dict[str, Any]:
    """An OpenAI ``image_url`` content part holding the photo as a base64 JPEG data URL."""
    data = base64.b64encode(encode_jpeg(as_image(image), max_side, quality)).decode("ascii")
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}}
    if detail:
        part["image_url"]["detail"] = detail
    return part


def user_message(text: str, image: ImageInput | None = None, **image_options: Any) -> dict[str, Any]:
    """A user message with text and, optionally, the photo (for chat sessions about an image)."""
    if image is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text}, image_content_part(image, **image_options)]}


def decode_data_url(url: str) -> Image.Image:
    """The PIL image inside a base64 data URL (how local backends get the photo back)."""
    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError("only base64 data URLs are supported for local models")
    return decode_image(base64.b64decode(url.split(";base64,", 1)[1]), "<data URL>")


NO_VISION_TEXT = "[image omitted: this model has no vision]"


def without_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` for a text-only model: each ``image_url`` part becomes ``NO_VISION_TEXT``.

    A content list left with only text is joined into one string, because text-only chat templates
    (llama.cpp, Ollama, older vLLM models) may refuse list content; the input is not modified.
    """
    out = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list) or not any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            out.append(message)
            continue
        parts = [
            {"type": "text", "text": NO_VISION_TEXT} if isinstance(p, dict) and p.get("type") == "image_url" else p
            for p in content
        ]
        if all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
            out.append({**message, "content": "\n".join(str(p.get("text", "")) for p in parts)})
        else:
            out.append({**message, "content": parts})
    return out
