# The newsletter image the compose file runs: every process (web app, scheduler, workers,
# migrations) is this image with another command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY newsletter ./newsletter
COPY templates ./templates
RUN pip install --no-cache-dir .
COPY newsletter.toml ./
COPY digests ./digests
RUN useradd --create-home newsletter
USER newsletter
ENV NEWSLETTER_CONFIG=/app/newsletter.toml
CMD ["newsletter", "--help"]
