"""The web archive: `/issues/`, `/issues/SLUG`, `/feed.xml` (being built)."""

from __future__ import annotations

from flask import Blueprint, abort

blueprint = Blueprint("archive", __name__)


@blueprint.get("/issues/")
def index():
    abort(404)
