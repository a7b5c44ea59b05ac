"""In-process LLaVA-family VLM via transformers: ``llava:PATH_OR_ID``.

``LlavaForConditionalGeneration`` + ``AutoProcessor`` from a local folder (or a hub id already in
the local Hugging Face cache): ``local_files_only=True`` by default, so nothing is downloaded at
run time; pass ``local_files_only=False`` to allow it where a network exists.

Design choices:
- The photo arrives as the same capped-JPEG data URL the API backends send, decoded back here,
  so local and API models see identical pixels and share cache-key logic.
- No constrained decoding: the reply goes through the shared parse -> repair path.
- ``chat`` works for plain conversation (follow-up questions) but ``tools`` raise
  ``NotSupportedError``: LLaVA checkpoints are not trained for function calling, and emulating
  it by parsing free text would make the planner fail in ways that look like planning errors.
  Serve the model with vLLM/Ollama (``openai-compatible:``) for tool calling, or use a
  deterministic policy with this backend. ``supports_tools`` is False so the graph can choose.
- ``timeout`` does not apply in-process (generation cannot be interrupted); ``max_tokens``
  bounds it instead. Costs are 0 (hardware, not tokens) unless ``price`` is given.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

from geoguide.agent.backends.base import ModelBackend
from geoguide.agent.backends.completion import Completion
from geoguide.agent.backends.errors import BackendConfigError, NotSupportedError
from geoguide.agent.backends.media import decode_data_url
from geoguide.agent.backends.registry import register_backend
from geoguide.core.availability import Availability, hf_cached, local_weights


def to_llava_conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI-format messages -> (transformers chat conversation, PIL images in order).

    System text is folded into the first user turn because LLaVA chat templates have no system
    role; images go before the text of their turn; tool messages cannot occur since tools are
    not supported.
    """
    conversation: list[dict[str, Any]] = []
    images: list[Any] = []
    system: list[str] = []
    for msg in messages:
        role, content = msg.get("role"), msg.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        if role == "system":
            system += [p["text"] for p in parts if p.get("type") == "text"]
            continue
        if role not in ("user", "assistant"):
            raise NotSupportedError(f"llava backend cannot take {role!r} messages (no tool calling)")
        images += [decode_data_url(p["image_url"]["url"]) for p in parts if p.get("type") == "image_url"]
        texts = [{"type": "text", "text": p["text"]} for p in parts if p.get("type") == "text"]
        if role == "user" and system:
            texts.insert(0, {"type": "text", "text": "\n\n".join(system) + "\n\n"})
            system = []
        # Images first: LLaVA checkpoints were trained on "USER: <image>\n<question>".
        n_images = sum(p.get("type") == "image_url" for p in parts)
        conversation.append({"role": role, "content": [{"type": "image"} for _ in range(n_images)] + texts})
    return conversation, images


@register_backend("llava")
class LlavaBackend(ModelBackend):
    kind: ClassVar[str] = "llava"

    @classmethod
    def availability(cls) -> Availability:
        def check(where: str) -> None:
            if not ((Path(where) / "config.json").is_file() or hf_cached(where)):
                raise FileNotFoundError("not a local folder, not in the Hugging Face cache")

        return local_weights(option="llava:FOLDER_OR_HUB_ID", env_var=None, hub_id="llava-hf/llava-1.5-7b-hf",
                             check=check, how_to_get="on a connected machine: huggingface-cli download "
                             "llava-hf/llava-1.5-7b-hf, then copy the cache or the folder here")
    supports_tools: ClassVar[bool] = False

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        local_files_only: bool = True,
        **options: Any,
    ) -> None:
        """``dtype`` e.g. "float16" / "bfloat16" on GPU; None keeps the checkpoint's."""
        if not model:
            raise BackendConfigError("llava spec needs a folder or model id: llava:PATH_OR_ID")
        super().__init__(model, **options)
        self.device = device
        self.dtype = dtype
        self.local_files_only = local_files_only
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()  # one generation at a time: a model is not re-entrant on memory

    def _load(self) -> tuple[Any, Any]:
        """(processor, model), loaded once on first use: constructing the backend stays cheap."""
        if self._loaded is None:
            import torch

            from geoguide.core.extras import require

            require("transformers", "hf", "the llava backend")
            from transformers import AutoProcessor, LlavaForConditionalGeneration

            extra = {"dtype": getattr(torch, self.dtype)} if self.dtype else {}
            try:
                processor = AutoProcessor.from_pretrained(self.model, local_files_only=self.local_files_only)
                model = LlavaForConditionalGeneration.from_pretrained(
                    self.model, local_files_only=self.local_files_only, **extra
                )
            except OSError as exc:
                raise BackendConfigError(
                    f"cannot load a LLaVA model from {self.model!r} (local_files_only={self.local_files_only}): {exc}"
                ) from exc
            self._loaded = (processor, model.to(self.device).eval())
        return self._loaded

    @staticmethod
    def _prompt(processor: Any, conversation: list[dict[str, Any]]) -> str:
        if getattr(processor, "chat_template", None):
            return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        # No template shipped: the LLaVA-1.5 format every llava-hf checkpoint was trained on.
        image_token = getattr(processor, "image_token", "<image>")
        turns = [
            f"{turn['role'].upper()}: "
            + "".join(image_token + "\n" if p["type"] == "image" else p["text"] for p in turn["content"])
            for turn in conversation
        ]
        return " ".join(turns) + " ASSISTANT:"

    def _complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None,
        json_output: bool,
        timeout: float | None = None,  # a local model is not interrupted mid-generation; budgets apply between calls
    ) -> Completion:
        if tools:
            raise NotSupportedError("llava backend does not support tool calling")
        import torch

        conversation, images = to_llava_conversation(messages)
        with self._lock:
            processor, model = self._load()
            inputs = processor(images=images or None, text=self._prompt(processor, conversation), return_tensors="pt")
            inputs = inputs.to(model.device)
            sample = bool(self.temperature)
            generate: dict[str, Any] = {"max_new_tokens": self.max_tokens, "do_sample": sample}
            if sample:
                generate["temperature"] = self.temperature
                if self.seed is not None:
                    torch.manual_seed(self.seed)
            with torch.inference_mode():
                output = model.generate(**inputs, **generate)
        n_prompt = int(inputs["input_ids"].shape[1])
        new_tokens = output[0, n_prompt:]
        completion_tokens = int(new_tokens.shape[0])
        return Completion(
            content=processor.decode(new_tokens, skip_special_tokens=True).strip(),
            prompt_tokens=n_prompt,
            completion_tokens=completion_tokens,
            cost_usd=self._cost(n_prompt, completion_tokens),
        )

    def close(self) -> None:
        self._loaded = None
        super().close()
