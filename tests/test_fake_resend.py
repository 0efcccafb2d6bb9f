"""The fake Resend server behaves as the API does where the engine depends on it (real SDK)."""

import pytest
import resend
from resend.exceptions import ResendError

from newsletter.errors import QuotaExceeded, RateLimited, Rejected, Unavailable
from newsletter.providers import Message
from newsletter.providers.resend import ResendProvider


def email(to="ana@example.com", subject="Hi"):
    return {"from": "News <news@n.example>", "to": [to], "subject": subject, "html": "<p>x</p>", "text": "x"}


@pytest.fixture
def sdk(fake_resend):
    ResendProvider(fake_resend.state.api_key, api_url=fake_resend.url)
    return fake_resend


def test_batch_limit_and_validation_modes(sdk):
    with pytest.raises(ResendError) as excinfo:
        resend.Batch.send([email(f"r{i}@example.com") for i in range(101)])
    assert excinfo.value.code == 422 and "100" in excinfo.value.message
    with pytest.raises(ResendError):  # strict: one bad address fails the whole batch
        resend.Batch.send([email(), email("not an address")])
    assert sum(sdk.addresses().values()) == 0
    answer = resend.Batch.send([email(), email("not an address"), email("bo@example.com")],
                               {"batch_validation": "permissive"})
    assert len(answer["data"]) == 2 and [e["index"] for e in answer["errors"]] == [1]
    assert sdk.addresses() == {"ana@example.com": 1, "bo@example.com": 1}
    assert resend.Emails.send(email("cy@example.com"))["id"]


def test_idempotency_keys(sdk):
    first = resend.Batch.send([email()], {"idempotency_key": "k-1"})
    again = resend.Batch.send([email()], {"idempotency_key": "k-1"})
    assert again["data"] == first["data"] and sdk.addresses()["ana@example.com"] == 1
    with pytest.raises(ResendError) as excinfo:
        resend.Batch.send([email(subject="Other")], {"idempotency_key": "k-1"})
    assert excinfo.value.code == 409 and excinfo.value.error_type == "invalid_idempotent_request"


def test_rate_limit_and_quota_answers(sdk):
    provider = ResendProvider(sdk.state.api_key, api_url=sdk.url)
    message = Message(key="k", to="ana@example.com", sender="News <news@n.example>", subject="s", html="h",
                      text="t")
    sdk.switches.storm_next = 1
    with pytest.raises(RateLimited) as excinfo:
        provider.send([message], "a")
    assert excinfo.value.retry_after == 1.0
    sdk.switches.quota = "monthly"
    with pytest.raises(QuotaExceeded, match="monthly_quota_exceeded"):
        provider.send([message], "b")
    sdk.switches.quota = None
    sdk.state.api_key = "re_other"
    with pytest.raises(Rejected, match="invalid_api_key"):
        provider.send([message], "c")


def test_a_refused_connection_is_reported_as_one_naming_the_server(fake_resend):
    """The real SDK against a closed port: not "HttpClientError, HTTP 500" as if Resend had
    answered, but what happened and where, with no key in it."""
    provider = ResendProvider("re_secret_key_123", api_url=fake_resend.url + "/")
    message = Message(key="k", to="ana@example.com", sender="News <news@n.example>", subject="s", html="h",
                      text="t")
    fake_resend.refuse()
    with pytest.raises(Unavailable) as excinfo:
        provider.send([message], "a")
    assert str(excinfo.value) == f"cannot reach Resend at {fake_resend.url}: connection refused"
    assert "re_secret_key_123" not in str(excinfo.value)
    fake_resend.accept()  # Resend answers again, and refuses the key: that is what is reported now
    with pytest.raises(Rejected, match="invalid_api_key"):
        provider.send([message], "b")


def test_an_answer_too_slow_is_reported_as_one(fake_resend):
    provider = ResendProvider(fake_resend.state.api_key, api_url=fake_resend.url, timeout=0.2)
    message = Message(key="k", to="ana@example.com", sender="News <news@n.example>", subject="s", html="h",
                      text="t")
    fake_resend.switches.delay, fake_resend.switches.delay_next = 1.0, 1
    with pytest.raises(Unavailable) as excinfo:
        provider.send([message], "a")
    assert str(excinfo.value) == f"Resend at {fake_resend.url} did not answer within 0.2 s"
