"""HTML-to-image rendering: a sandboxed Chromium page pool, an html2image fallback, checks.

`open_renderer(config)` is the one entry point generators use; both backends return the
same `Rendered` so a plugin does not care which one drew the picture.
"""

from synthgen.generators.render.api import Rendered, RenderError, RenderOptions, open_renderer

__all__ = ["RenderError", "RenderOptions", "Rendered", "open_renderer"]
