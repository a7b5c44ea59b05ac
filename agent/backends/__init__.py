"""Model backends behind one interface: ``make_backend(spec, **options)``.

Two interfaces (``base``): ``PriorProvider`` (photo -> prior, every backend) and ``ChatBackend``
(a conversation turn: openai, openai-compatible, llava), the latter wrapped for the graph as a
LangChain chat model by ``chat_model.PlannerModel``.

Specs: ``openai:MODEL``, ``openai-compatible:BASE_URL:MODEL``, ``llava:PATH_OR_ID``,
``replay:CSV``, ``none``. See ``base.Backend`` for the calls and ``base.ModelBackend`` for the
shared options (cache, timeout, retries, sampling, image size, price). Per-model options from the
command line: ``parse_backend_options(["temperature=0.2", ...])`` -> kwargs for ``make_backend``.
"""

from geoguide.agent.backends.base import Backend, ChatBackend, ModelBackend, PriorProvider
from geoguide.agent.backends.cache import ResponseCache
from geoguide.agent.backends.completion import Completion, parse_perception, usage_of
from geoguide.agent.backends.errors import BackendConfigError, BackendError, CallFailed, NotSupportedError
from geoguide.agent.backends.media import image_content_part, user_message, without_images
from geoguide.agent.backends.options import BackendOptions, option_help, parse_backend_options
from geoguide.agent.backends.registry import (
    BACKENDS,
    available_backends,
    backend_class,
    make_backend,
    parse_spec,
    register_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfigError",
    "BackendError",
    "BackendOptions",
    "CallFailed",
    "ChatBackend",
    "Completion",
    "ModelBackend",
    "NotSupportedError",
    "PriorProvider",
    "ResponseCache",
    "available_backends",
    "backend_class",
    "image_content_part",
    "make_backend",
    "option_help",
    "parse_backend_options",
    "parse_perception",
    "parse_spec",
    "register_backend",
    "usage_of",
    "user_message",
    "without_images",
]
