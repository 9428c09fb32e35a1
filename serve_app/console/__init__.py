"""The web console: static pages served by the Coordinator at ``/ui`` on the API's port.

Nothing is built at install time and nothing comes from a CDN: the page, its
script and its style sheet ship in this package and are read once. The shell
holds no data; every figure on it comes from the API in the browser, with the
same bearer token as any client (the page asks for it when the API answers
401), so serving the shell needs no auth. A strict Content-Security-Policy
allows only these files (no inline script, no other origin), and the script
writes every user-supplied value as text, never as HTML.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

ASSETS = {"console.js": "text/javascript", "console.css": "text/css", "index.html": "text/html"}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def console_routes() -> list[BaseRoute]:
    """``/ui`` (redirect), ``/ui/`` (the page) and ``/ui/<asset>``; anything else under /ui
    falls through to the API's structured 404."""
    files = {name: _read(name) for name in ASSETS}

    def asset(name: str) -> Response:
        return Response(files[name], media_type=ASSETS[name], headers=HEADERS)

    async def page(request: Request) -> Response:
        return asset("index.html")

    async def redirect(request: Request) -> Response:
        return RedirectResponse(url="ui/", status_code=308)  # relative: right under any route prefix

    routes: list[BaseRoute] = [Route("/ui", redirect, methods=["GET"]), Route("/ui/", page, methods=["GET"])]
    for name in ASSETS:
        if name != "index.html":
            routes.append(Route(f"/ui/{name}", lambda request, name=name: asset(name), methods=["GET"]))
    return routes
