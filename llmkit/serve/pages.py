"""The chat page at ``/``: one static HTML file that talks to the API from the browser."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()
CHAT_PAGE = (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
async def chat_page():
    return HTMLResponse(CHAT_PAGE)
