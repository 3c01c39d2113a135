# chatbot: the meeting bot. Build: docker build -t chatbot .
# Run:   docker run -v $PWD/config.yaml:/config/config.yaml:ro -v chatbot-data:/data chatbot
# The config should say `data_dir: /data` so the database, saved login and notes
# live on the volume.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git (and ssh for git@ remotes) for the meeting notes' git archive (publish.git).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 chatbot \
    && mkdir -p /data /config \
    && chown chatbot:chatbot /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY chatbot ./chatbot
RUN pip install .

USER chatbot
VOLUME ["/data"]
ENTRYPOINT ["chatbot"]
CMD ["run", "-c", "/config/config.yaml"]
