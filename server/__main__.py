"""`python -m server` (and `trdq serve`): run the app with uvicorn."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    from server.app import create_app
    from server.lifecycle import serve
    from server.settings import Settings
    from trdq.runtime.host_memory import configure_host_malloc

    try:
        settings = Settings()
    except ValidationError as error:
        for err in error.errors():
            name = "TRDQ_" + "_".join(str(part) for part in err["loc"]).upper()
            print(f"invalid setting {name}: {err['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # before any thread or model exists (trdq/runtime/host_memory.py)
    configure_host_malloc(settings.host_malloc)
    app = create_app(settings)
    serve(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
          grace_s=settings.shutdown_grace_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
