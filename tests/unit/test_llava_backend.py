"""The in-process LLaVA backend on a tiny, randomly initialised LLaVA built here.

No weights exist offline, so the model is a 2-layer CLIP vision tower + 2-layer Llama with a
word-level tokenizer trained on a few strings. Its output is nonsense by construction; what is
tested is the real code path: processor, chat template, generation, token accounting, and the
shared parse -> repair -> error handling that nonsense must end in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from geoguide.agent.backends import (
    BackendConfigError,
    NotSupportedError,
    make_backend,
    usage_of,
    user_message,
)
from geoguide.agent.backends.llava import LlavaBackend, to_llava_conversation

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava(folder: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch = pytest.importorskip("torch")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ['USER: ASSISTANT: where was this photo taken ? { } " : , lat lon countries France 48 2 .']
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    text = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=4,
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def test_perceive_runs_the_model_and_reports_nonsense(tiny_llava: Path, tmp_path: Path) -> None:
    backend = make_backend(f"llava:{tiny_llava}", max_tokens=6, cache=tmp_path / "c.sqlite")
    assert isinstance(backend, LlavaBackend) and not backend.supports_tools
    photo = Image.new("RGB", (300, 200), (10, 200, 30))
    outcome = backend.perceive(photo, "where was this photo taken ?")

    assert outcome.perception is None and "after one repair" in outcome.error
    assert outcome.raw is not None
    u = outcome.usage
    assert u.model_calls == 2 and u.prompt_tokens > 8 and 0 < u.completion_tokens <= 12 and u.cost_usd == 0
    # Nonsense is never cached (only validated replies are): asking again runs the model again.
    again = backend.perceive(photo, "where was this photo taken ?")
    assert not again.usage.cached and again.usage.model_calls == 2 and again.raw == outcome.raw
    assert len(backend.cache) == 0


def test_chat_without_tools_and_tools_refused(tiny_llava: Path) -> None:
    backend = make_backend(f"llava:{tiny_llava}", max_tokens=4)
    history = [
        {"role": "system", "content": "You located a photo."},
        user_message("where was this photo taken ?", Image.new("RGB", (40, 40))),
    ]
    turn = backend.chat(history)
    assert isinstance(turn.content, str) and turn.tool_calls == [] and usage_of(turn).model_calls == 1
    with pytest.raises(NotSupportedError):
        backend.chat(history, tools=[{"type": "function", "function": {"name": "geocode"}}])


def test_without_chat_template_uses_llava_format(tmp_path: Path) -> None:
    folder = build_tiny_llava(tmp_path / "plain", chat_template=None)
    backend = LlavaBackend(str(folder), max_tokens=3)
    processor, _ = backend._load()
    conversation, images = to_llava_conversation([user_message("where ?", Image.new("RGB", (30, 30)))])
    assert backend._prompt(processor, conversation) == "USER: <image>\nwhere ? ASSISTANT:"
    assert backend.perceive(Image.new("RGB", (30, 30)), "where ?").usage.model_calls == 2


def test_conversation_conversion() -> None:
    msgs = [
        {"role": "system", "content": "sys"},
        user_message("look", Image.new("RGB", (20, 10))),
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "why?"},
    ]
    conversation, images = to_llava_conversation(msgs)
    assert [t["role"] for t in conversation] == ["user", "assistant", "user"]
    assert conversation[0]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "sys\n\n"},
        {"type": "text", "text": "look"},
    ]
    assert len(images) == 1 and images[0].size == (20, 10)
    with pytest.raises(NotSupportedError):
        to_llava_conversation([{"role": "tool", "tool_call_id": "1", "content": "{}"}])


def test_missing_model_is_a_config_error(tmp_path: Path) -> None:
    backend = make_backend(f"llava:{tmp_path / 'nowhere'}")
    with pytest.raises(BackendConfigError, match="local_files_only=True"):
        backend.perceive(Image.new("RGB", (8, 8)), "where?")
