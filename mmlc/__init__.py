"""mmlc: streaming video and multi-image dialogue.

    import mmlc
    model = mmlc.load()                      # the embedded default model, mmlc-tiny
    session = model.stream(fps=2)
    for event in session.feed("video.mp4"):
        print(event.t, event.text)
    print(session.ask("what colour is the circle?").text)
"""

from mmlc.config import MmlcConfig, apply_overrides
from mmlc.errors import CheckpointError, ConfigError, DataError, MmlcError, SourceError
from mmlc.models.loading import load
from mmlc.models.presets import PRESETS, preset
from mmlc.models.streaming_lm import StreamingLM
from mmlc.streaming.chat import ChatSession
from mmlc.streaming.session import Event, StreamSession

__version__ = "0.1.0"

__all__ = [
    "load", "StreamingLM", "StreamSession", "ChatSession", "Event", "MmlcConfig", "apply_overrides", "preset", "PRESETS",
    "MmlcError", "ConfigError", "SourceError", "CheckpointError", "DataError", "__version__",
]
