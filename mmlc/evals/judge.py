"""An LLM judge reached through an OpenAI-compatible chat-completions endpoint, and MMDU's protocol.

:class:`JudgeClient` needs only the standard library (``urllib``): ``POST {base_url}/chat/completions``
with ``{"model", "messages", "temperature", "max_tokens"}`` and the reply read from
``choices[0].message.content``. Images (optional) travel as base64 ``data:`` URLs in the user
message's content list, as the OpenAI vision format writes them. HTTP 408/429/5xx, timeouts and
connection errors are retried with exponential backoff (``Retry-After`` is honoured, capped);
401/403/404 stop the run (a bad key, model or URL fails every turn alike); any other failure is a
:class:`JudgeError` that the caller records for that turn.

MMDU's judge protocol (:func:`mmdu_prompt`, :func:`parse_scores`): for each turn, the judge reads the
question, the reference answer and the assistant's answer, and scores 1-10 on six dimensions plus an
overall score, ending its reply with a dict ``{'Creativity': 8, ..., 'Overall Score': 7}``. The
scores are read from the *last* ``{...}`` of the reply, with ``json`` or, failing that, a tolerant
pattern for ``'Name': number`` pairs; never with ``eval``. A reply without all seven numbers is
*unparsed* (MMDU's "all" average counts it 0; its "valid" average leaves it out).

The rubric below follows the structure of MMDU's judge prompt (same dimensions, 1-10 bands,
delimiters and final dict) in this project's words; pass ``prompt=`` (``--judge-prompt FILE``) to
use the official wording verbatim.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import mimetypes
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mmlc.errors import ConfigError, MmlcError

DIMS = ("Creativity", "Richness", "Visual Perception", "Logical Coherence", "Answer Accuracy",
        "Image Relationship Understanding", "Overall Score")

MMDU_RUBRIC = """\
You are an assistant skilled at evaluating the quality of creative text.
Act as an impartial judge of the response an AI assistant gave to the user question shown below. Assess the \
response on these dimensions: Creativity, Richness, Visual Perception, Logical Coherence, Answer Accuracy and \
Image Relationship Understanding. You are given the question, a reference answer and the AI assistant's answer.
Proceed as follows:
1. For each dimension, point out the answer's strengths and weaknesses, then give it a score from 1 to 10.
2. From these assessments, give an overall score from 1 to 10.
3. Score as strictly as you can: the better the answer meets the user's needs, the higher the score; answers \
that do not meet them score low.
Scoring bands:
Creativity: 1-2 nothing original; 3-4 partly original, low quality; 5-6 mostly creative but not novel, moderate \
quality; 7-8 novel, high quality; 9-10 highly novel, exceptional compared with the reference answer.
Richness: 1-2 very little information, no depth or breadth; 3-4 little depth and breadth, few explanations or \
examples; 5-6 limited but gives the basic necessary information; 7-8 deep, with useful extra information; 9-10 \
exceptional depth, breadth and diversity compared with the reference answer.
Visual Perception: 1-2 the description of the images is wrong or clearly inconsistent with them; 3-4 it covers \
little of the images and has some errors; 5-6 it covers the basic content with little detail; 7-8 it matches the \
images well and is rich; 9-10 it matches and is more detailed and informative than the reference answer.
Logical Coherence: 1-2 incoherent, unrelated to the question or the known facts; 3-4 somewhat coherent with many \
logical errors; 5-6 mostly coherent with few errors; 7-8 excellent, very few errors; 9-10 flawless, clearly more \
coherent than the reference answer.
Answer Accuracy: 1-2 inconsistent with the question or clearly wrong; 3-4 partly correct, with errors or gaps; \
5-6 basically correct but thin; 7-8 accurate and detailed, fully answers the question; 9-10 accurate, detailed \
and adds useful information beyond expectations.
Image Relationship Understanding: 1-2 confuses the images, cannot tell them apart or relate them; 3-4 barely \
distinguishes them, with errors; 5-6 distinguishes and relates them in a basic way; 7-8 clearly distinguishes \
and relates them, naming the main common points and differences; 9-10 a richer comparison than the reference \
answer.
Overall Score: 1-2 irrelevant, factually wrong or harmful; 3-4 no serious errors but low quality, does not meet \
the requirements; 5-6 basically meets them but weak in some dimensions; 7-8 good in every dimension; 9-10 fully \
meets every requirement and clearly surpasses the reference answer.
Explain before you score: after the explanation for each dimension, give its score. At the very end of your \
reply, return all the scores, as integers, in a dictionary (with the braces):
{'Dimension One': Score, 'Dimension Two': Score, ..., 'Overall Score': Score}, for example: {'Creativity': 9, \
'Richness': 6, ..., 'Overall Score': 7}.
"""


def mmdu_prompt(question: str, reference: str, answer: str, rubric: str = MMDU_RUBRIC) -> str:
    """The judge's input for one turn: rubric, question, reference answer, assistant's answer."""
    return (f"{rubric}[Question]\n{question}\n\n"
            f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
            f"[The Start of Assistant\u2019s Answer]\n{answer}\n[The End of Assistant\u2019s Answer]")


# ---------------------------------------------------------------------- parsing
_PAIR = re.compile(r"""["']?\s*([A-Za-z][A-Za-z ]*?)\s*["']?\s*:\s*(-?\d+(?:\.\d+)?)""")
_KEYS = {" ".join(d.lower().split()): d for d in DIMS}


def _dim(name: str) -> str | None:
    return _KEYS.get(" ".join(str(name).lower().replace("_", " ").split()))


def last_braces(text: str) -> str | None:
    """The last ``{...}`` block of ``text`` (from the last ``}`` back to the ``{`` before it)."""
    end = text.rfind("}")
    if end < 0:
        return None
    start = text.rfind("{", 0, end)
    return None if start < 0 else text[start:end + 1]


def parse_scores(text) -> tuple[dict[str, float] | None, str | None]:
    """``(scores, None)`` with every dimension of :data:`DIMS`, or ``(None, why)`` when unparsed."""
    if not isinstance(text, str) or not text.strip():
        return None, "the judge's reply is empty"
    block = last_braces(text)
    if block is None:
        return None, "the judge's reply has no {...} dict of scores"
    found: dict[str, float] = {}
    try:
        data = json.loads(block)
    except (json.JSONDecodeError, RecursionError, ValueError):
        data = None
    if isinstance(data, dict):
        for key, value in data.items():
            dim = _dim(key)
            if dim is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
                found[dim] = float(value)
            elif dim is not None and isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
                found[dim] = float(value)
    else:
        for name, value in _PAIR.findall(block):
            dim = _dim(name)
            if dim is not None and dim not in found:
                found[dim] = float(value)
    missing = [d for d in DIMS if d not in found]
    if missing:
        return None, f"the judge's last {{...}} lacks scores for {', '.join(missing)}: {block[:200]!r}"
    bad = {d: v for d, v in found.items() if not math.isfinite(v) or not 0 <= v <= 10}
    if bad:
        return None, f"the judge's scores are outside 0-10: {bad}"
    return {d: found[d] for d in DIMS}, None


# ---------------------------------------------------------------------- the HTTP client
class JudgeError(Exception):
    """The judge gave no usable reply for one request (recorded for that turn, the run goes on)."""

    def __init__(self, message: str, attempts: int = 1):
        super().__init__(message)
        self.attempts = attempts


class JudgeFatalError(MmlcError):
    """The judge refuses every request alike (bad key, model or URL): the run stops."""


_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401, 403, 404}


def image_data_url(path) -> str:
    """A ``data:<mime>;base64,...`` URL holding the file's bytes."""
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


@dataclass
class JudgeClient:
    """A chat-completions client: ``complete(prompt, images=()) -> (text, attempts)``.

    ``base_url`` is the API root (``https://api.openai.com/v1``, ``http://127.0.0.1:8000/v1``);
    ``/chat/completions`` is appended unless it is already there. ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (none is sent when both are empty: local servers). ``retries`` is the
    number of extra attempts after the first; waits are ``backoff * 2**k`` seconds (capped at
    ``max_backoff``, with up to 10% jitter).
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 5
    backoff: float = 2.0
    max_backoff: float = 60.0
    max_tokens: int = 2048
    temperature: float = 0.0
    system: str | None = "You are a helpful assistant."

    def __post_init__(self):
        if not isinstance(self.base_url, str) or not re.match(r"https?://", self.base_url):
            raise ConfigError(f"judge base URL {self.base_url!r} is not an http(s) URL: pass e.g. "
                              "--judge-base-url https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
        if not self.model:
            raise ConfigError("no judge model: pass --judge-model NAME (e.g. gpt-4o)")
        if self.retries < 0 or self.timeout <= 0 or self.backoff < 0:
            raise ConfigError(f"judge retries={self.retries}, timeout={self.timeout}, backoff={self.backoff}: "
                              "retries must be >= 0, timeout > 0 and backoff >= 0")
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY") or None
        url = self.base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"

    def __repr__(self) -> str:   # never show the key
        return f"JudgeClient(url={self.url!r}, model={self.model!r})"

    def payload(self, prompt: str, images=()) -> dict:
        content = prompt if not images else [{"type": "text", "text": prompt}] + [
            {"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in images]
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": content}]
        return {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def _once(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            raw = response.read()
        try:
            data = json.loads(raw.decode("utf-8"))
            content = data["choices"][0]["message"]["content"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise _BadBody(f"the judge's response is not a chat completion: {raw[:200]!r}") from None
        if isinstance(content, list):   # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise _BadBody(f"the judge's message content is {type(content).__name__}, not text")
        return content

    def complete(self, prompt: str, images=(), sleep=time.sleep) -> tuple[str, int]:
        """The judge's reply text and the number of attempts it took; :class:`JudgeError` if none came."""
        try:
            body = json.dumps(self.payload(prompt, images)).encode("utf-8")
        except OSError as err:
            raise JudgeError(f"cannot read an image for the judge: {err}") from None
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2 ** attempt
            try:
                return self._once(body), attempt + 1
            except urllib.error.HTTPError as err:
                detail = _read_error(err)
                if err.code in _FATAL_STATUS:
                    raise JudgeFatalError(
                        f"the judge at {self.url} answered HTTP {err.code} ({detail}): "
                        + ("check --judge-api-key / OPENAI_API_KEY" if err.code != 404 else
                           "check --judge-base-url (the API root, e.g. .../v1) and --judge-model")) from None
                if err.code not in _RETRY_STATUS and err.code < 500:
                    raise JudgeError(f"HTTP {err.code} from the judge: {detail}", attempt + 1) from None
                last = f"HTTP {err.code}: {detail}"
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if retry_after and retry_after.strip().replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                    http.client.HTTPException) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except _BadBody as err:
                last = str(err)
            if attempt < self.retries:
                sleep(min(wait, self.max_backoff) * (1 + 0.1 * random.random()))
        raise JudgeError(f"no reply from the judge after {self.retries + 1} attempts (last: {last})",
                         self.retries + 1)


class _BadBody(Exception):
    pass


def _read_error(err: urllib.error.HTTPError) -> str:
    try:
        text = err.read().decode("utf-8", "replace")
    except Exception:  # the body of an error response is best effort
        text = ""
    try:
        message = json.loads(text)["error"]["message"]
        return str(message)[:300]
    except Exception:
        return (text or str(err.reason))[:300]
