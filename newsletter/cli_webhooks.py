"""`newsletter webhooks test`: send a correctly signed sample event to a running server, to check
that Resend's webhooks will get through (URL, proxy, and the same secret on both sides)."""

from __future__ import annotations

import json
import time
import uuid

import click

from .cli import App, cli, pass_app
from .errors import ConfigError, NewsletterError
from .web.webhooks import PATH, SECRET_VAR, secret_from_environment, sign


@cli.group()
def webhooks() -> None:
    """Resend's webhooks: what happened to each email after the send."""


@webhooks.command("test")
@click.option("--url", help=f"The endpoint (default: base_url followed by {PATH}).")
@pass_app
def test(app: App, url: str | None) -> None:
    """Send a signed sample event (email.delivered, for an email nobody was sent) to the server.

    It is signed with $RESEND_WEBHOOK_SECRET as Resend signs its events; the server keeps it as a
    report about an unknown email. Set up in Resend: a webhook to https://YOUR-SITE/webhooks/resend
    with the email events, and its signing secret in $RESEND_WEBHOOK_SECRET where `newsletter
    serve` runs.
    """
    import requests

    secret = secret_from_environment()
    if secret is None:
        raise ConfigError(f"${SECRET_VAR} is not set: copy the signing secret (whsec_...) of the "
                          "webhook from Resend into it")
    url = url or f"{app.settings.base_url}{PATH}"
    svix_id = f"msg_newsletter_test_{uuid.uuid4().hex}"
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    body = json.dumps({"type": "email.delivered", "created_at": now, "data": {
        "email_id": f"newsletter-webhook-test-{uuid.uuid4()}", "created_at": now,
        "from": app.settings.sender, "to": ["webhook-test@example.com"], "subject": "newsletter webhooks test"}})
    try:
        headers = sign(secret, svix_id, body)
    except ValueError:
        raise ConfigError(f"${SECRET_VAR} is not a signing secret: Resend's look like whsec_ followed "
                          "by base64") from None
    try:
        answer = requests.post(url, data=body.encode(), timeout=app.settings.request_timeout,
                               headers={"content-type": "application/json", **headers})
    except requests.RequestException as e:
        raise WebhookTestError(f"could not reach {url}: {type(e).__name__} (is `newsletter serve` running "
                               "there?)") from None
    if answer.status_code == 200:
        click.echo(f"{url} accepted a signed test event (HTTP 200): Resend's webhooks will get through.")
        return
    why = {401: f"it refused the signature: is ${SECRET_VAR} the same there as here?",
           503: f"the server has no ${SECRET_VAR} (or its database does not answer)",
           404: "there is no webhook endpoint at that URL"}.get(answer.status_code, "")
    raise WebhookTestError(f"{url} answered HTTP {answer.status_code}" + (f": {why}" if why else ""))


class WebhookTestError(NewsletterError):
    pass
