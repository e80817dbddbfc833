"""Content negotiation for the media routes: JSON (base64) or the raw bytes of one format.

An Accept header picks, in order of its q-values (ties keep the header's order), the
first range this server can answer: a media type of the route's formats gives raw bytes,
`application/json`, `application/*` and `*/*` give JSON, and `image/*` or `video/*` give
raw bytes in the request's own output format. A header that names only ranges the route
cannot answer (`image/avif`, `video/mp4` on the image route) is refused with 406 and the
list of what is served, rather than answered with a JSON body the client did not ask for.
A missing or empty header means JSON.
"""

from __future__ import annotations

from server.errors import NotAcceptableError

JSON_RANGES = ("application/json", "application/*", "*/*")
#: How much of a refused header the 406 message repeats.
ECHO_CHARS = 120


def _ranges_by_preference(accept: str) -> list[str]:
    """The media ranges of an Accept header, most preferred first, q=0 ones dropped."""
    weighted = []
    for position, part in enumerate(accept.split(",")):
        media_range, *params = (piece.strip() for piece in part.split(";"))
        if not media_range:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # an unreadable weight: not a preference we can honour
        if quality > 0:
            weighted.append((-quality, position, media_range.lower()))
    return [media_range for _, _, media_range in sorted(weighted)]


def negotiate(accept: str | None, formats: dict[str, str], own_format: str) -> str | None:
    """None for a JSON reply, or the name of the format to send as raw bytes.

    `formats` maps format names to media types (e.g. media.IMAGE_FORMATS); `own_format`
    is the one the request asked for, used for `image/*`-style ranges when it fits them.
    """
    if accept is None or not accept.strip():
        return None
    by_type = {media_type: fmt for fmt, media_type in formats.items()}
    for media_range in _ranges_by_preference(accept):
        if media_range in JSON_RANGES:
            return None
        if media_range in by_type:
            return by_type[media_range]
        if media_range.endswith("/*"):
            prefix = media_range[:-1]  # "image/"
            if formats.get(own_format, "").startswith(prefix):
                return own_format
            for fmt, media_type in formats.items():
                if media_type.startswith(prefix):
                    return fmt
    supported = ", ".join(["application/json", *dict.fromkeys(formats.values())])
    raise NotAcceptableError(
        f"Accept: {accept[:ECHO_CHARS]!r} names no type served here; supported: {supported}"
    )
