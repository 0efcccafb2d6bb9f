"""Signup with double opt-in: `/subscribe` and `/confirm/SIGNED` (being built)."""

from __future__ import annotations

from flask import Blueprint, abort

blueprint = Blueprint("signup", __name__)


@blueprint.get("/subscribe")
def form():
    abort(404)
